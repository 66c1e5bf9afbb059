"""The perceptual hash (transforms/phash.py) and the near-duplicate search (transforms/near_duplicates.py),
without Beam.

What the hash does on the 13 bundled photos (pipeline/data/photos, see ATTRIBUTION.md there), each
scaled to a longer side of 500 and saved as a baseline JPEG at quality 90 (the original), then
re-encoded at quality 60, resized by 10%, cropped by 5% (2.5% off each side), brightened by 20%
and saved as PNG, every file hashed from the pixels the image kernel has (see kernel_phash).
Distances from the original, measured with Pillow-SIMD 12.1.1 and OpenCV 5.1.0:

    re-encoded 0, resized 0-10, cropped 4-20, brightened 0-4, PNG 0-2;
    different photographs (any file of one against any of another, 2,808 pairs): 18 at the
    least, 22 at the 1st percentile, 31.5 on average (standard deviation 3.9, as for
    independent random hashes with 31 of 63 bits set: 31.5 and 4.0);
    other framings of one scene (its left and right 60%, its top and bottom 60%): 24 at the least.

At the default threshold (distance <= 8), 61 of the 65 variants are found (recall 94%) and no
pair of different photographs is (precision 100%). The four missed: the crops of the brick
texture (20), of the coffee cup and of the grass texture (10), and the resized coins (10). At
distance <= 6 the recall is 60 of 65, at <= 10 it is 64 of 65 (only the brick crop is missed),
but the pairs that unrelated images make by chance grow thirty-fold from 8 to 10: among
ImageNet's 1.33M samples, random hashes with 31 of 63 bits set give about 22 pairs within 6,
1,100 within 8 and 34,000 within 10 (a floor: real photographs cluster more than random hashes).
Distances are almost always even (each hash has 31 bits set), so 8 and 9 are one threshold.
"""
import io
import itertools
import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance

import transforms.near_duplicates as nd
from pipeline.sample.bundle import PHOTOS, bundled_photo
from transforms.image import ImageOptions, process_image
from transforms.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    NearPair,
    band_keys,
    band_layout,
    bands_for,
    bucket_pair_indices,
    find_near_pairs,
    merge_parts,
    nearest_other,
    pairs_in_bucket,
    popcount64,
    search_indices,
)
from transforms.phash import dct_block, from_int64, hamming, luma, phash_of, thumbnail, to_int64

# Photographs (not textures) whose every planted variant the build must find.
PLANTED_PHOTOS = ("skimage_chelsea.jpg", "skimage_astronaut.jpg", "matplotlib_grace_hopper.jpg",
                  "skimage_rocket.jpg", "skimage_camera.jpg", "lomiri16_seeding_by_Clements_Engelhardt.jpg")
VARIANTS = ("reencoded", "resized", "cropped", "brightened", "png")


# --- planted near-duplicates -------------------------------------------------------------------------

def original_photo(name: str) -> Image.Image:
    """A bundled photo as RGB, scaled to a longer side of 500 like most of ImageNet's images."""
    im = bundled_photo(name).convert("RGB")
    scale = 500 / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return im


def plant_near_duplicates(name: str, folder) -> dict:
    """{kind: path} of a photo's original (baseline JPEG, quality 90) and its near-duplicates."""
    im = original_photo(name)
    w, h = im.size
    dx, dy = round(w * 0.025), round(h * 0.025)
    made = {
        "original": (im, "JPEG", {"quality": 90}),
        "reencoded": (im, "JPEG", {"quality": 60}),
        "resized": (im.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.LANCZOS), "JPEG", {"quality": 90}),
        "cropped": (im.crop((dx, dy, w - dx, h - dy)), "JPEG", {"quality": 90}),
        "brightened": (ImageEnhance.Brightness(im).enhance(1.2), "JPEG", {"quality": 90}),
        "png": (im, "PNG", {}),
    }
    paths = {}
    for kind, (picture, fmt, params) in made.items():
        path = folder / f"{name.rsplit('.', 1)[0]}-{kind}.{fmt.lower()}"
        picture.save(path, fmt, **params)
        paths[kind] = path
    return paths


def other_framings(name: str, folder) -> list:
    """Two pairs of other photographs of one scene: its left and right 60%, its top and bottom 60%."""
    im = original_photo(name)
    w, h = im.size
    boxes = {"left": (0, 0, int(w * 0.6), h), "right": (w - int(w * 0.6), 0, w, h),
             "top": (0, 0, w, int(h * 0.6)), "bottom": (0, h - int(h * 0.6), w, h)}
    paths = {}
    for kind, box in boxes.items():
        paths[kind] = folder / f"{name.rsplit('.', 1)[0]}-{kind}.jpg"
        im.crop(box).save(paths[kind], "JPEG", quality=90)
    return [(paths["left"], paths["right"]), (paths["top"], paths["bottom"])]


def kernel_phash(path) -> int:
    """The hash the image kernel gives a file: from the 1/8 luma decode that validates a JPEG kept
    byte for byte, or from the stored pixels (converted to RGB and resized) of a re-encoded one."""
    data = path.read_bytes()
    options = ImageOptions()
    stored = process_image(data, options)
    im = Image.open(io.BytesIO(data))
    if not stored.reencoded:
        im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))  # as the kernel validates
        im.load()
        return phash_of(im, reduced_by=8)
    pixels = im.convert("RGB")
    target = options.resize.target_size(*pixels.size)
    if target != pixels.size:
        pixels = pixels.resize(target, Image.Resampling.LANCZOS)
    return phash_of(pixels)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """{photo: {kind: kernel hash}} of every bundled photo and its planted variants."""
    folder = tmp_path_factory.mktemp("planted")
    return {name: {kind: kernel_phash(path) for kind, path in plant_near_duplicates(name, folder).items()}
            for name in PHOTOS}


@pytest.mark.parametrize("name", PLANTED_PHOTOS)
def test_every_planted_variant_is_within_the_default_threshold(planted, name):
    hashes = planted[name]
    distances = {kind: hamming(hashes["original"], hashes[kind]) for kind in VARIANTS}
    assert max(distances.values()) <= DEFAULT_MAX_DISTANCE, distances


def test_precision_and_recall_over_every_bundled_photo(planted):
    true = [hamming(h["original"], h[kind]) for h in planted.values() for kind in VARIANTS]
    different = [hamming(planted[a][ka], planted[b][kb]) for a, b in itertools.combinations(planted, 2)
                 for ka in planted[a] for kb in planted[b]]
    found = sum(d <= DEFAULT_MAX_DISTANCE for d in true)
    assert found / len(true) >= 60 / 65  # 61 of 65 measured (see the module docstring)
    assert not any(d <= DEFAULT_MAX_DISTANCE for d in different)  # precision 100%
    assert min(different) > DEFAULT_MAX_DISTANCE + 4  # 18 measured: a margin, not a coin toss
    assert 29 < np.mean(different) < 34  # like random hashes with 31 bits of 63 set (31.5)


def test_reencoding_brightening_and_png_stay_well_within(planted):
    for hashes in planted.values():
        for kind in ("reencoded", "brightened", "png"):
            assert hamming(hashes["original"], hashes[kind]) <= 4, kind


@pytest.mark.parametrize("name", ["lomiri16_seeding_by_Clements_Engelhardt.jpg", "skimage_chelsea.jpg",
                                  "skimage_coffee.jpg", "skimage_retina.jpg", "skimage_hubble_deep_field.jpg"])
def test_other_photographs_of_one_scene_are_not_flagged(tmp_path, name):
    for a, b in other_framings(name, tmp_path):
        assert hamming(kernel_phash(a), kernel_phash(b)) > DEFAULT_MAX_DISTANCE + 4


def test_same_kind_of_subject_is_not_flagged(planted):
    # Three grey textures (bricks, grass, gravel) and two portraits of women in uniform.
    kinds = [("skimage_brick.jpg", "skimage_grass.jpg", "skimage_gravel.jpg"),
             ("skimage_astronaut.jpg", "matplotlib_grace_hopper.jpg")]
    for group in kinds:
        for a, b in itertools.combinations(group, 2):
            assert hamming(planted[a]["original"], planted[b]["original"]) > DEFAULT_MAX_DISTANCE + 4


# --- the hash --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PHOTOS)
def test_a_kept_jpeg_and_its_full_pixels_hash_alike(name):
    """The kernel hashes a JPEG kept byte for byte from its 1/8 decode, and a re-encoded copy
    from full pixels: both paths must agree, or a val copy would miss its train original."""
    buf = io.BytesIO()
    original_photo(name).save(buf, "JPEG", quality=90)
    draft = Image.open(io.BytesIO(buf.getvalue()))
    draft.draft("L", (draft.width // 8, draft.height // 8))
    draft.load()
    full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert hamming(phash_of(draft, reduced_by=8), phash_of(full)) <= 2


def test_the_hash_is_a_64_bit_value_with_the_top_bit_clear():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pixels = rng.integers(0, 256, size=(int(rng.integers(1, 300)), int(rng.integers(1, 300)), 3), dtype=np.uint8)
        value = phash_of(pixels)
        assert 0 <= value < 2**63
        assert value.bit_count() <= 31


def test_flat_images_of_any_colour_hash_to_zero():
    for colour in ((0, 0, 0), (255, 255, 255), (12, 200, 77)):
        assert phash_of(Image.new("RGB", (500, 375), colour)) == 0
    assert phash_of(Image.new("L", (1, 1), 9)) == 0


def test_an_array_and_its_image_hash_alike():
    im = original_photo("skimage_chelsea.jpg")
    assert phash_of(np.asarray(im)) == phash_of(im)
    grey = im.convert("L")
    assert phash_of(np.asarray(grey)) == phash_of(grey)
    assert phash_of(im.convert("P")) == phash_of(grey)  # other modes go through "L"


def test_the_thumbnail_is_opencvs_and_the_block_its_dct():
    grey = luma(original_photo("skimage_coffee.jpg"))
    assert grey.shape == (42, 63) and grey.dtype == np.uint8  # the 500 x 333 photo reduced by 8
    rng = np.random.default_rng(8)
    for shape in [grey.shape, (32, 32), (64, 48), (500, 375), (20, 15), (7, 3)]:  # both sides shrink, or grow
        pixels = grey if shape == grey.shape else rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = cv2.resize(pixels.astype(np.float64), (32, 32), interpolation=cv2.INTER_AREA)
        assert np.allclose(thumbnail(pixels), expected, atol=1e-9)
        assert np.allclose(dct_block(pixels), cv2.dct(expected)[:8, :8], atol=1e-7)


def written_out_phash(pixels, reduced_by: int = 1) -> int:
    """The hash as the module docstring defines it, step by step with PIL's and numpy's public calls:
    phash_of takes shortcuts (PIL's raw encoder, the DC term set to -inf, the bits through
    bytes.translate) that must give these values to the bit."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if image.mode not in ("L", "RGB"):
        image = image.convert("L")
    if reduced_by < 8:
        image = image.reduce(8 // reduced_by)
    grey = np.asarray(image.convert("L"))
    ac = dct_block(grey).ravel()[1:]  # the DC term left out
    above = ac > np.sort(ac)[31] + 1e-2  # the median of 63, and the tie margin
    return sum(1 << (62 - i) for i in np.flatnonzero(above).tolist())


def test_the_hash_is_its_definition_written_out():
    rng = np.random.default_rng(11)
    cases = []
    for name in PHOTOS:
        photo = original_photo(name)
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=90)
        draft = Image.open(io.BytesIO(buf.getvalue()))
        draft.draft("L", (draft.width // 8, draft.height // 8))  # the kept JPEG's validation decode
        draft.load()
        cases += [(draft, 8), (photo, 1), (photo.convert("L"), 1), (photo.convert("P"), 1),
                  (photo.reduce(2), 2), (np.asarray(photo.reduce(4)), 4)]
    for shape in [(1, 1), (3, 7), (8, 8), (47, 63), (90, 5), (64, 64)]:  # any size of a 1/8 decode
        cases.append((Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)), 8))
    half = rng.integers(0, 256, size=(48, 32), dtype=np.uint8)  # mirror images: exact ties
    cases.append((Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)), 8))
    cases += [(Image.new("L", (63, 47), 200), 8), (Image.new("RGB", (500, 375), (9, 80, 3)), 1)]
    for pixels, reduced_by in cases:
        assert phash_of(pixels, reduced_by) == written_out_phash(pixels, reduced_by)


def test_an_image_file_not_yet_loaded_is_read_all_the_same():
    buf = io.BytesIO()
    original_photo("skimage_chelsea.jpg").save(buf, "JPEG", quality=90)
    drafted = Image.open(io.BytesIO(buf.getvalue()))
    drafted.draft("L", (drafted.width // 8, drafted.height // 8))  # not loaded: tobytes loads it
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    loaded.draft("L", (loaded.width // 8, loaded.height // 8))
    loaded.load()
    assert phash_of(drafted, reduced_by=8) == phash_of(loaded, reduced_by=8) != 0


def test_the_hash_refuses_what_is_not_pixels():
    with pytest.raises(TypeError):
        phash_of(b"\xff\xd8")
    with pytest.raises(ValueError):
        phash_of(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        phash_of(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        phash_of(np.zeros((0, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        phash_of(Image.new("L", (8, 8)), reduced_by=3)


def test_int64_round_trip():
    for value in (0, 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1):
        signed = to_int64(value)
        assert -2**63 <= signed < 2**63
        assert from_int64(signed) == value
    assert to_int64(2**63 - 1) == 2**63 - 1 and to_int64(2**64 - 1) == -1
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            to_int64(bad)
    with pytest.raises(ValueError):
        from_int64(2**63)


# --- bands -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bands", [1, 5, 9, 11, 64])
def test_bands_cover_the_64_bits_once(bands):
    layout = band_layout(bands)
    assert len(layout) == bands
    covered = [bit for shift, width in layout for bit in range(shift, shift + width)]
    assert sorted(covered) == list(range(64))
    assert max(w for _, w in layout) - min(w for _, w in layout) <= 1
    value = random.Random(bands).getrandbits(64)
    assert sum(v << layout[i][0] for i, v in band_keys(value, bands)) == value


def test_pairs_within_the_threshold_share_a_band():
    rng = random.Random(1)
    for d in (0, 3, 8, 12):
        for _ in range(500):
            a = rng.getrandbits(64)
            b = a
            for bit in rng.sample(range(64), rng.randint(0, d)):
                b ^= 1 << bit
            assert set(band_keys(a, bands_for(d))) & set(band_keys(b, bands_for(d)))


def test_popcount_with_and_without_numpy_2(monkeypatch):
    values = np.array([0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 12345678901234567], dtype=np.uint64)
    expected = [int(v).bit_count() for v in values]
    assert popcount64(values).tolist() == expected
    monkeypatch.setattr(nd, "_BITWISE_COUNT", None)
    assert popcount64(values).tolist() == expected


# --- the search is exact -----------------------------------------------------------------------------

def brute_force(hashes: np.ndarray, max_distance: int) -> list:
    """Every pair (i < j, distance) within max_distance, by comparing all pairs."""
    out = []
    for i in range(len(hashes) - 1):
        distance = popcount64(hashes[i] ^ hashes[i + 1:])
        out += [(i, i + 1 + int(j), int(distance[j])) for j in np.flatnonzero(distance <= max_distance)]
    return out


def planted_hashes(n: int, max_distance: int, seed: int, shared_prefix_bits: int = 0) -> np.ndarray:
    """`n` random 64-bit hashes with close pairs, chains, identical copies and pairs just beyond
    the threshold planted; with shared_prefix_bits, half of them share their top bits (big buckets)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    if shared_prefix_bits:
        low = np.uint64((1 << (64 - shared_prefix_bits)) - 1)
        hashes[: n // 2] = (hashes[: n // 2] & low) | (np.uint64(0xA5A5A5A5A5A5A5A5) & ~low)
    for _ in range(n // 10):
        i, j = (int(x) for x in rng.integers(0, n, 2))
        flips = rng.choice(64, size=int(rng.integers(0, max_distance + 3)), replace=False)
        hashes[j] = hashes[i] ^ np.uint64(sum(1 << int(f) for f in flips))
    hashes[rng.integers(0, n, 30)] = hashes[0]  # a group of identical hashes
    return hashes


@pytest.mark.parametrize("max_distance", [0, 3, 8, 10])
@pytest.mark.parametrize("leaf", [4, nd.LEAF_SIZE])
def test_band_search_finds_exactly_what_all_pairs_finds(monkeypatch, max_distance, leaf):
    monkeypatch.setattr(nd, "LEAF_SIZE", leaf)  # 4: the sub-band splits run in nearly every bucket
    hashes = planted_hashes(3000, max_distance, seed=max_distance)
    found = search_indices(hashes, max_distance, group_limit=10_000)
    got = list(zip(found.first.tolist(), found.second.tolist(), found.distance.tolist()))
    assert got == brute_force(hashes, max_distance)
    assert found.unlisted == 0
    assert len(got) > 300


def test_band_search_is_exact_in_big_buckets():
    # Half of the hashes share their top 24 bits: buckets of over 1,000 that the sub-bands must split.
    hashes = planted_hashes(3000, DEFAULT_MAX_DISTANCE, seed=11, shared_prefix_bits=24)
    sizes: list = []
    found = search_indices(hashes, DEFAULT_MAX_DISTANCE, group_limit=10_000, on_bucket=sizes.append)
    got = list(zip(found.first.tolist(), found.second.tolist(), found.distance.tolist()))
    assert max(sizes) > 1000
    assert got == brute_force(hashes, DEFAULT_MAX_DISTANCE)


def test_each_pair_is_reported_once_by_buckets_on_their_own():
    """The Beam way: every sample sent to its bands' buckets, each bucket searched alone."""
    hashes = planted_hashes(2000, DEFAULT_MAX_DISTANCE, seed=5)
    entries = [(f"n{i % 7:08d}_{i}", "val" if i % 5 == 0 else "train", int(h)) for i, h in enumerate(hashes)]
    buckets: dict = {}
    for entry in entries:
        for bucket in band_keys(entry[2], bands_for(DEFAULT_MAX_DISTANCE)):
            buckets.setdefault(bucket, []).append(entry)
    pairs = []
    for (band_index, _), members in buckets.items():
        pairs += pairs_in_bucket(members, DEFAULT_MAX_DISTANCE, band_index).pairs
    assert len(pairs) == len(set(pairs))  # no pair twice, with no global step
    by_position = {key: n for n, (key, _, _) in enumerate(entries)}
    assert sorted(tuple(sorted((by_position[p.key_a], by_position[p.key_b]))) + (p.distance,) for p in pairs) \
        == brute_force(hashes, DEFAULT_MAX_DISTANCE)
    assert all((p.key_a, p.split_a) < (p.key_b, p.split_b) for p in pairs)
    assert sorted(pairs) == find_near_pairs(entries, DEFAULT_MAX_DISTANCE).pairs


def test_the_search_compares_a_small_share_of_all_pairs():
    hashes = np.random.default_rng(2).integers(0, 2**64 - 1, size=40_000, dtype=np.uint64, endpoint=True)
    found = search_indices(hashes, DEFAULT_MAX_DISTANCE)
    assert found.compared < 0.02 * 40_000 * 39_999 / 2


# --- results ----------------------------------------------------------------------------------------

def test_nearest_other_takes_the_nearest_then_the_key_sorting_first():
    pairs = [NearPair("c", "train", "x", "val", 4), NearPair("b", "train", "x", "val", 4),
             NearPair("d", "train", "x", "train", 6), NearPair("a", "train", "d", "train", 2),
             NearPair("d", "train", "e", "train", 2)]
    assert nearest_other(pairs) == {"x": "b", "b": "x", "c": "x", "d": "a", "a": "d", "e": "d"}
    assert nearest_other([]) == {}


# --- pathological buckets ---------------------------------------------------------------------------

def test_thousands_of_identical_hashes_are_listed_as_a_star():
    blank = [(f"blank_{i:05d}", "train", 0) for i in range(5000)]  # flat images all hash to 0
    near = [(f"near_{i}", "val", 1 << i) for i in range(3)]  # distance 1 from the blank ones, 2 apart
    far = [("far", "train", 2**40 - 1)]  # in band 0's bucket, but 40 bits away
    found = pairs_in_bucket(blank + near + far, DEFAULT_MAX_DISTANCE, band_index=0)
    star = [p for p in found.pairs if p.key_b.startswith("blank")]
    assert len(star) == 4999 and {p.key_a for p in star} == {"blank_00000"}
    assert sorted((p.key_a, p.key_b) for p in found.pairs if p.key_b.startswith("near")) == \
        [("blank_00000", f"near_{i}") for i in range(3)] + [("near_0", "near_1"), ("near_0", "near_2"),
                                                            ("near_1", "near_2")]
    assert found.unlisted == (5000 * 4999 // 2 - 4999) + 3 * 4999
    # nearest_other is what the complete list of pairs would give: every blank one and every near
    # one is nearest (at 0 and at 1) to the blank key sorting first, which is nearest to the second.
    expected = {key: "blank_00000" for key, _, _ in blank[1:] + near}
    expected["blank_00000"] = "blank_00001"
    assert nearest_other(found.pairs) == expected


def test_a_small_group_of_identical_hashes_is_listed_whole_and_only_from_band_0():
    copies = [(f"k{i}", "train", 0xDEADBEEF) for i in range(10)]
    assert len(pairs_in_bucket(copies, DEFAULT_MAX_DISTANCE, band_index=0).pairs) == 45
    assert pairs_in_bucket(copies, DEFAULT_MAX_DISTANCE, band_index=3).pairs == []


def test_a_dense_cluster_of_distinct_hashes_costs_no_more_than_all_pairs():
    # 600 distinct hashes within 4 of one centre, so every pair is within 8: splitting cannot help.
    rng = random.Random(4)
    centre = rng.getrandbits(64) & ~(0xFF << 56)  # band 0 (the top 8 bits) is 0 for all
    values: set = set()
    while len(values) < 600:
        value = centre
        for bit in rng.sample(range(56), rng.randint(1, 4)):
            value ^= 1 << bit
        values.add(value)
    hashes = np.array(sorted(values), dtype=np.uint64)
    found = bucket_pair_indices(hashes, DEFAULT_MAX_DISTANCE, band_index=0)
    expected = brute_force(hashes, DEFAULT_MAX_DISTANCE)
    assert list(zip(found.first.tolist(), found.second.tolist(), found.distance.tolist())) == expected
    assert found.compared <= 600 * 599 // 2


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        bands_for(64)
    with pytest.raises(ValueError):
        band_layout(0)
    with pytest.raises(ValueError):
        band_keys(2**64, 9)
    with pytest.raises(ValueError):
        pairs_in_bucket([("a", "train", 0)], 8, band_index=9)


def test_the_star_rule_keeps_nearest_other_exact():
    hashes = planted_hashes(2000, DEFAULT_MAX_DISTANCE, seed=9)
    rng = np.random.default_rng(9)
    for size in (5, 12, 40):  # more groups of identical hashes, some near others
        hashes[rng.integers(0, 2000, size)] = hashes[int(rng.integers(0, 2000))]

    def near_pairs(found):
        return [NearPair(f"k{a:05d}", "train", f"k{b:05d}", "train", d)
                for a, b, d in zip(found.first.tolist(), found.second.tolist(), found.distance.tolist())]

    complete = search_indices(hashes, DEFAULT_MAX_DISTANCE, group_limit=10_000)
    starred = search_indices(hashes, DEFAULT_MAX_DISTANCE, group_limit=3)
    assert complete.unlisted == 0 and starred.unlisted > 0
    assert len(starred.first) + starred.unlisted == len(complete.first)
    assert set(near_pairs(starred)) < set(near_pairs(complete))
    assert nearest_other(near_pairs(starred)) == nearest_other(near_pairs(complete))


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_the_search_shared_out_in_parts_is_the_whole_search(parts):
    hashes = planted_hashes(3000, DEFAULT_MAX_DISTANCE, seed=4)
    hashes[100:400] = hashes[7]  # a big group of identical hashes: a star, and unlisted pairs
    whole = search_indices(hashes, DEFAULT_MAX_DISTANCE)
    shares = [search_indices(hashes, DEFAULT_MAX_DISTANCE, part=(i, parts)) for i in range(parts)]
    assert all(len(share.first) for share in shares)  # every part finds some
    merged = merge_parts(shares)
    for field in ("first", "second", "distance"):
        assert np.array_equal(getattr(merged, field), getattr(whole, field))
    assert (merged.unlisted, merged.compared) == (whole.unlisted, whole.compared) and whole.unlisted > 0
    with pytest.raises(ValueError):
        search_indices(hashes, DEFAULT_MAX_DISTANCE, part=(parts, parts))


def test_a_bucket_must_share_its_band():
    with pytest.raises(ValueError):
        pairs_in_bucket([("a", "train", 0), ("b", "train", 2**63)], DEFAULT_MAX_DISTANCE, band_index=0)
