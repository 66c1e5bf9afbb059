"""Tests of pipeline.sample, the generator of miniature ILSVRC2012 releases.

The archives are read back with tarfile and PIL only (no pipeline code), and the labels are checked against an
independent table (tests/data/ilsvrc2012_id_to_wnid.tsv, derived from the devkit's meta_clsloc.mat).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import struct
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

import pipeline
from pipeline import sample
from pipeline.sample import ExpectedSample, make_sample_release
from transforms.records import SAMPLE_REJECT_REASONS

DATA = Path(__file__).parent / "data"
PHOTOS = Path(pipeline.__file__).parent / "data" / "photos"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------
# Reading a release back


def _tar_entries(tar: tarfile.TarFile):
    for info in tar:
        data = tar.extractfile(info).read() if info.isreg() else None
        yield info, data


def read_release(release) -> dict:
    """split -> list of (key, TarInfo, bytes | None, where), straight from the archives."""
    out = {"train": [], "val": [], "test": []}
    with tarfile.open(release.archives["train"]) as outer:
        for info, data in _tar_entries(outer):
            assert info.isreg() and info.name.endswith(".tar"), info.name
            with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                for sub, subdata in _tar_entries(inner):
                    out["train"].append((sub.name.rsplit(".", 1)[0], sub, subdata, info.name))
    for split in ("val", "test"):
        if split in release.archives:
            with tarfile.open(release.archives[split]) as tar:
                for info, data in _tar_entries(tar):
                    out[split].append((info.name.rsplit(".", 1)[0], info, data, None))
    return out


def open_image(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def fully_loads(data: bytes) -> bool:
    try:
        open_image(data).load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_sample_release(tmp_path_factory.mktemp("sample") / "release")


@pytest.fixture(scope="module")
def members(release):
    return read_release(release)


@pytest.fixture(scope="module")
def id_table():
    """ILSVRC2012_ID -> (WNID, sorted 0-based index), from the independent TSV."""
    with open(DATA / "ilsvrc2012_id_to_wnid.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 1000
    return {int(r["ILSVRC2012_ID"]): (r["WNID"], int(r["sorted_index_0based"])) for r in rows}


def devkit_member(release, name: str) -> bytes:
    with tarfile.open(release.archives["devkit"], "r:gz") as tar:
        return tar.extractfile(name).read()


def all_expected(release):
    for split, table in release.expected.items():
        for key, exp in table.items():
            assert exp.key == key and exp.split == split
            yield exp


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_archive_names_and_roles(release):
    root = Path(release.root)
    assert sorted(os.listdir(root)) == sorted([
        "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz",
        "ILSVRC2012_img_test_v10102019.tar", "ILSVRC2012_bbox_train_v2.tar.gz", "ILSVRC2012_bbox_val_v3.tgz"])
    assert release.archives == {
        "train": str(root / "ILSVRC2012_img_train.tar"),
        "val": str(root / "ILSVRC2012_img_val.tar"),
        "devkit": str(root / "ILSVRC2012_devkit_t12.tar.gz"),
        "test": str(root / "ILSVRC2012_img_test_v10102019.tar"),
        "bbox_train": str(root / "ILSVRC2012_bbox_train_v2.tar.gz"),
        "bbox_val": str(root / "ILSVRC2012_bbox_val_v3.tgz"),
    }


def test_train_is_a_tar_of_class_tars(release, members):
    with tarfile.open(release.archives["train"]) as outer:
        names = outer.getnames()
    assert names == [f"{w}.tar" for w in release.classes] and release.classes == sorted(release.classes)
    widths, numbers = set(), {}
    for key, info, _data, class_tar in members["train"]:
        wnid = class_tar[: -len(".tar")]
        assert re.fullmatch(rf"{wnid}_[1-9][0-9]*\.JPEG", info.name), info.name  # flat, no folder
        n = int(key.split("_")[1])
        widths.add(len(str(n)))
        numbers.setdefault(wnid, []).append(n)
    assert len(widths) >= 2  # not fixed width
    for ns in numbers.values():
        ns.sort()
        assert len(ns) == len(set(ns))
        assert ns != list(range(ns[0], ns[0] + len(ns)))  # not consecutive
    # members inside a class tar are not in sorted order everywhere (as in the real archive)
    orders = {}
    for _key, info, _d, class_tar in members["train"]:
        orders.setdefault(class_tar, []).append(info.name)
    assert any(names != sorted(names) for names in orders.values())


def test_val_and_test_are_flat_and_val_is_not_sorted(release, members):
    val_files = [info.name for _k, info, _d, _w in members["val"] if not info.isdir()]
    assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", n) for n in val_files)
    assert val_files != sorted(val_files)
    dirs = [info.name for _k, info, _d, _w in members["val"] if info.isdir()]
    assert len(dirs) == 1  # one directory entry, to be skipped
    test_files = [info.name for _k, info, _d, _w in members["test"]]
    assert len(test_files) == 4
    assert all(re.fullmatch(r"ILSVRC2012_test_\d{8}\.JPEG", n) for n in test_files)


def test_devkit_holds_the_real_ground_truth_and_blacklist(release):
    with tarfile.open(release.archives["devkit"], "r:gz") as tar:
        names = tar.getnames()
    assert "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt" in names
    assert "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_blacklist.txt" in names
    assert "ILSVRC2012_devkit_t12/readme.txt" in names
    gt = devkit_member(release, sample.DEVKIT_GT_MEMBER)
    assert hashlib.md5(gt).hexdigest() == "1cfce2418d86c664c2e10863eecd0aa3"
    lines = gt.decode().split("\n")
    assert len(lines) == 50_001 and lines[-1] == "" and lines[:3] == ["490", "361", "171"]
    blacklist = devkit_member(release, sample.DEVKIT_BLACKLIST_MEMBER).split()
    assert len(blacklist) == 1762


def test_every_expectation_is_exactly_one_member(release, members):
    for split in ("train", "val", "test"):
        found = {}
        for key, info, _d, _w in members[split]:
            if info.isdir():
                assert key not in release.expected[split]
                continue
            found.setdefault(key, []).append(info)
        assert sorted(found) == sorted(release.expected[split]), split
        assert all(len(v) == 1 for v in found.values()), split
        for key, (info,) in found.items():
            exp = release.expected[split][key]
            assert exp.source.endswith("/" + info.name)


def test_tar_headers_are_fixed(release):
    paths = [release.archives[r] for r in ("train", "val", "test")]
    for path in paths:
        with tarfile.open(path) as tar:
            for info in tar:
                assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
                    1_336_003_200, 1000, 1000, "ilsvrc", "ilsvrc")
    with open(release.archives["devkit"], "rb") as f:
        head = f.read(10)
    assert head[:2] == b"\x1f\x8b" and struct.unpack("<I", head[4:8])[0] == 1_336_003_200


# ---------------------------------------------------------------------------------------------------------
# Labels, through an independent route


def test_classes_and_val_images_follow_the_real_ground_truth(release, id_table):
    gt = [int(x) for x in devkit_member(release, sample.DEVKIT_GT_MEMBER).split()]
    first = []
    for ilsvrc_id in gt:
        wnid = id_table[ilsvrc_id][0]
        if wnid not in first:
            first.append(wnid)
        if len(first) == 8:
            break
    assert release.classes == sorted(first)
    labelled_val = sorted(k for k, e in release.expected["val"].items() if e.case != "unlabeled")
    wanted = [i for i, x in enumerate(gt, start=1) if id_table[x][0] in first][:24]
    assert labelled_val == [f"ILSVRC2012_val_{i:08d}" for i in wanted]
    assert labelled_val[-1] > "ILSVRC2012_val_00000024"  # sparse, like a real subset


def test_labels_match_the_real_ground_truth(release, members, id_table):
    gt = [int(x) for x in devkit_member(release, sample.DEVKIT_GT_MEMBER).split()]
    for key, exp in release.expected["val"].items():
        index = int(key.rsplit("_", 1)[1])
        if exp.case == "unlabeled":
            assert index > 50_000 and exp.wnid is None and exp.label == -1 and exp.outcome == "unlabeled"
            continue
        wnid, label = id_table[gt[index - 1]]
        assert (exp.wnid, exp.label) == (wnid, label), key
    by_wnid = {w: i for w, i in id_table.values()}
    for key, _info, _d, class_tar in members["train"]:
        exp = release.expected["train"][key]
        assert exp.wnid == class_tar[: -len(".tar")] and exp.label == by_wnid[exp.wnid]
    for exp in release.expected["test"].values():
        assert (exp.wnid, exp.label, exp.outcome, exp.case) == (None, -1, "kept", "photo")


def test_first_val_image_is_the_sea_snake(release):
    exp = release.expected["val"]["ILSVRC2012_val_00000001"]
    assert (exp.wnid, exp.label) == ("n01751748", 65)  # FORMATS.md: line 1 = 490 = n01751748 = index 65


# ---------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_byte_identical_archives(release, tmp_path):
    again = make_sample_release(tmp_path / "again")
    for role, path in release.archives.items():
        assert Path(path).read_bytes() == Path(again.archives[role]).read_bytes(), role
    assert again.expected == release.expected


def test_another_seed_gives_other_images(tmp_path):
    a = make_sample_release(tmp_path / "a", classes=2, train_per_class=2, val_images=8, test_images=0, seed=1)
    b = make_sample_release(tmp_path / "b", classes=2, train_per_class=2, val_images=8, test_images=0, seed=2)
    assert Path(a.archives["train"]).read_bytes() != Path(b.archives["train"]).read_bytes()
    assert a.classes == b.classes  # classes come from the ground truth, not from the seed
    assert "test" not in a.archives and not (tmp_path / "a" / sample.TEST_TAR).exists()


# ---------------------------------------------------------------------------------------------------------
# Expectations are consistent and planted cases are what they claim


def test_expectations_are_well_formed(release):
    exps = list(all_expected(release))
    for e in exps:
        assert e.outcome == "kept" or e.outcome in SAMPLE_REJECT_REASONS
        assert e.case in sample.PLANTED_CASES and sample.PLANTED_CASES[e.case][0] == e.outcome
        if e.outcome == "kept":
            assert isinstance(e.reencoded, bool) and e.orig_format and e.orig_width and e.orig_height
        else:
            assert e.reencoded is None
        if e.split != "test" and e.case != "unlabeled":
            assert e.wnid is not None and 0 <= e.label < 1000
    photos = [e for e in exps if e.case == "photo"]
    assert sum(not e.reencoded for e in photos) > 0.8 * len(photos)  # most are kept byte for byte
    assert any(e.reencoded for e in photos)  # and some are too large for longer:512
    planted = {e.case for e in exps}
    assert planted == set(sample.PLANTED_CASES)
    assert {e.outcome for e in exps} == {"kept"} | set(SAMPLE_REJECT_REASONS) - {"duplicate_key"}


def test_images_are_distinct_except_planted_duplicates(release, members):
    by_sha = {}
    for split, rows in members.items():
        for key, _info, data, _w in rows:
            if data is not None:
                sha = hashlib.sha256(data).hexdigest()
                assert release.expected[split][key].sha256 == sha
                by_sha.setdefault(sha, []).append((split, key))
    groups = [g for g in by_sha.values() if len(g) > 1]
    assert len(groups) == 2
    splits_of = sorted(sorted({s for s, _k in g}) for g in groups)
    assert splits_of == [["train"], ["train", "val"]]  # one within train (across classes), one across splits
    for group in groups:
        first = min(k for _s, k in group)
        cases = sorted(release.expected[s][k].case for s, k in group)
        assert cases == ["duplicate", "photo"]
        for s, k in group:
            assert release.expected[s][k].duplicate_of == (None if k == first else first)
    n_dup = sum(e.duplicate_of is not None for e in all_expected(release))
    assert n_dup == 2
    train_group = next(g for g in groups if {s for s, _ in g} == {"train"})
    assert len({release.expected["train"][k].wnid for _s, k in train_group}) == 2


def _check_kept_header(exp: ExpectedSample, im: Image.Image):
    assert (im.format, im.mode, im.size) == (exp.orig_format, exp.orig_mode, (exp.orig_width, exp.orig_height))


def test_planted_cases_decode_as_claimed(release, members):
    seen = {}
    for split, rows in members.items():
        for key, info, data, _w in rows:
            if info.isdir():
                continue
            exp = release.expected[split][key]
            seen[exp.case] = seen.get(exp.case, 0) + 1
            case = exp.case
            if case in ("symlink", "hardlink"):
                assert info.issym() if case == "symlink" else info.islnk()
                assert data is None and exp.sha256 is None
                continue
            if case == "empty":
                assert data == b""
                continue
            if case == "not_an_image":
                assert data.lstrip().upper().startswith(b"<!DOCTYPE HTML")
                with pytest.raises(UnidentifiedImageError):
                    open_image(data)
                continue
            im = open_image(data)
            if exp.outcome == "kept":
                _check_kept_header(exp, im)
                assert fully_loads(data), key
                assert (exp.exif_orientation == 6) == (case == "exif_rotated")
            if case in ("photo", "duplicate", "unlabeled"):
                assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")
                assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
                assert im.getexif().get(0x0112) is None
                if exp.outcome == "kept":
                    assert exp.reencoded == (max(im.size) > 512)
            elif case == "cmyk":
                assert im.format == "JPEG" and im.mode == "CMYK" and exp.reencoded
            elif case == "png_as_jpeg":
                assert data.startswith(PNG_SIGNATURE) and info.name.endswith(".JPEG") and im.format == "PNG"
            elif case == "grayscale":
                assert im.format == "JPEG" and im.mode == "L" and len(im.getbands()) == 1
            elif case == "progressive":
                assert im.format == "JPEG" and im.mode == "RGB" and im.info.get("progressive")
            elif case == "exif_rotated":
                assert im.format == "JPEG" and im.getexif().get(0x0112) == 6 and exp.reencoded
            elif case == "palette_alpha":
                assert im.format == "PNG" and im.mode == "P" and "transparency" in im.info and b"tRNS" in data
            elif case == "png16":
                assert data.startswith(PNG_SIGNATURE) and data[24:26] == b"\x10\x00"  # bit depth 16, gray
                assert im.mode.startswith("I")
            elif case == "truncated":
                assert im.format == "JPEG"
                with pytest.raises(OSError, match="truncated"):
                    im.load()
            elif case == "bomb":
                w, h = im.size
                assert w * h > 89_478_485 and len(data) < 64 * 1024 and im.format == "PNG"
            elif case == "corrupt":
                assert im.format == "PNG" and data.startswith(PNG_SIGNATURE)
                with pytest.raises(OSError) as err:
                    im.load()
                assert "truncated" not in str(err.value)
            elif case == "unsupported_format":
                assert im.format in ("PPM", "ICO")
            else:  # pragma: no cover
                raise AssertionError(f"unchecked case {case}")
    expected_counts = {
        "cmyk": 3, "png_as_jpeg": 1, "grayscale": 2, "progressive": 1, "exif_rotated": 2, "palette_alpha": 1,
        "png16": 1, "truncated": 3, "empty": 1, "not_an_image": 1, "bomb": 1, "corrupt": 1,
        "unsupported_format": 2, "duplicate": 2, "symlink": 1, "hardlink": 1, "unlabeled": 1,
    }
    assert {c: n for c, n in seen.items() if c != "photo"} == expected_counts
    assert seen["photo"] == 8 * 6 + 24 - 6 + 4  # regular photos; val faults take 6 of the 24 labelled slots


def test_bundled_edge_cases_are_planted_verbatim(release, members):
    bundled = {hashlib.sha256((PHOTOS / n).read_bytes()).hexdigest(): n for n in (
        "pil_sample_cmyk.jpg", "hopper_orientation_6.jpg", "truncated_jpeg.jpg", "hopper_gray.jpg", "hopper.png")}
    planted = {e.sha256: e for e in all_expected(release) if e.sha256 in bundled}
    assert sorted(bundled[s] for s in planted) == sorted(bundled.values())
    ycck = next(e for s, e in planted.items() if bundled[s] == "pil_sample_cmyk.jpg")
    assert ycck.case == "cmyk"
    assert open_image((PHOTOS / "pil_sample_cmyk.jpg").read_bytes()).info.get("adobe_transform") == 2


def test_real_quirk_names_are_used_when_their_class_is_present(release):
    # n02105855 (Shetland sheepdog) is among the default classes; its real PNG-as-JPEG file is n02105855_2933
    assert "n02105855" in release.classes
    assert release.expected["train"]["n02105855_2933"].case == "png_as_jpeg"


# ---------------------------------------------------------------------------------------------------------
# Options


def test_without_faults_everything_is_a_kept_photo(tmp_path):
    rel = make_sample_release(tmp_path / "clean", classes=2, train_per_class=3, val_images=5, test_images=2,
                              plant_faults=False)
    exps = list(all_expected(rel))
    assert len(exps) == 2 * 3 + 5 + 2
    assert {(e.case, e.outcome, e.duplicate_of) for e in exps} == {("photo", "kept", None)}
    with tarfile.open(rel.archives["val"]) as tar:
        assert all(info.isreg() for info in tar)


def test_min_size_adds_train_photos(tmp_path):
    rel = make_sample_release(tmp_path / "big", classes=2, train_per_class=1, val_images=0, test_images=0,
                              plant_faults=False, min_size="1MB")
    train = rel.expected["train"]
    assert len(train) > 2
    with tarfile.open(rel.archives["train"]) as outer:
        inner_total = sum(m.size for m in outer)
    assert inner_total >= 1_000_000


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        make_sample_release(tmp_path / "x", classes=0)
    with pytest.raises(ValueError):
        make_sample_release(tmp_path / "x", classes=1, train_per_class=1)  # faults need two train photos
    with pytest.raises(ValueError):
        make_sample_release(tmp_path / "x", min_size="lots")


# ---------------------------------------------------------------------------------------------------------
# The bundle


def test_photo_bundle_is_small_and_attributed():
    files = sorted(p.name for p in PHOTOS.iterdir())
    total = sum((PHOTOS / f).stat().st_size for f in files)
    assert total < 2_000_000
    attribution = (PHOTOS / "ATTRIBUTION.md").read_text()
    for f in files:
        if f != "ATTRIBUTION.md":
            assert f in attribution, f
    for name in sample.PHOTOS:
        with Image.open(PHOTOS / name) as im:
            assert im.format == "JPEG" and max(im.size) <= 800 and im.mode in ("RGB", "L")
