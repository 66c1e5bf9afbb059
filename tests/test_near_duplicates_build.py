"""Near-duplicates in a build: every stored sample's perceptual hash (the index and the .json), the
search over the whole build (transforms/near_duplicate_search.py), the flags written into the index
files in one rewrite with duplicate_of (transforms/index.py), the manifest and the summary; then real
builds of a release with planted near-duplicates (pipeline/sample/near_copies.py).

The figures of the README's "Near-duplicates" section come from these fixtures: every planted copy
(re-encoded, resized by 10%, cropped by 5%, brightened, saved as PNG; in val and in another class)
is found, and every pair that a build reports joins two images cut from one photograph (the planted
ones, and now and then two of the release's random crops of one bundled photo).
"""
import argparse
import collections
import hashlib
import io
import itertools
import json
import random
import sqlite3
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import build, read_manifest, run_cli, version_of
from PIL import Image

from pipeline.options import BuildConfig, add_build_arguments, config_from_args
from pipeline.sample import NEAR_COPIES, make_sample_release
from pipeline.sample.near_copies import original_photo
from transforms.image import ImageOptions, ResizeSpec, process_image
from transforms.index import FlagDuplicates, write_index_file
from transforms.layout import NEAR_DUPLICATES_NAME, OutputLayout
from transforms.manifest import assemble_manifest
from transforms.near_duplicate_search import (
    read_shard_hashes,
    search_batches,
    shard_hashes,
    split_pair,
    write_near_duplicates,
)
from transforms.near_duplicates import DEFAULT_MAX_DISTANCE
from transforms.phash import from_int64, hamming, phash_of, to_int64
from transforms.previous import PreviousImages, version_diff, write_lookup
from transforms.records import Fact, MemberRef, NearDuplicatesFile, ShardDuplicates, ShardInfo, SplitCount
from transforms.schema import INDEX_SCHEMA, NEAR_DUPLICATES_SCHEMA, IndexRow
from transforms.storage import ArchiveReader


def _row(key, split, phash, shard_id=0, sha=None):
    """An index row; its source bytes are its own unless `sha` says otherwise."""
    sha = sha or hashlib.sha256(f"{split}/{key}".encode()).hexdigest()
    return IndexRow(key, split, f"{split}/{split}-{shard_id:06d}.tar", 512, 5, 0, "n01440764", 2, 2, 2, 2, "JPEG",
                    "RGB", False, sha, None, None, (), f"x/{key}", phash=to_int64(phash))


def _jpeg(im: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


# --- the hash, in the kernel and in every row ---------------------------------------------------------

def test_the_kernel_hashes_the_pixels_it_has():
    photo = original_photo("skimage_chelsea.jpg")  # 500 x 333: a JPEG of it is kept byte for byte
    kept = _jpeg(photo, quality=90)
    result = process_image(kept, ImageOptions())
    draft = Image.open(io.BytesIO(kept))
    draft.draft("L", (draft.width // 8, draft.height // 8))
    draft.load()
    assert not result.reencoded and result.phash == phash_of(draft, reduced_by=8)

    buf = io.BytesIO()
    photo.save(buf, "PNG")  # re-encoded: hashed from the pixels it stores, before they are encoded
    result = process_image(buf.getvalue(), ImageOptions())
    assert result.reencoded and result.phash == phash_of(photo)
    small = process_image(buf.getvalue(), ImageOptions(resize=ResizeSpec.parse("shorter:128")))
    assert hamming(small.phash, result.phash) <= 4  # the stored pixels are smaller: about the same hash

    tiny = process_image(_jpeg(photo.resize((6, 5)), quality=90), ImageOptions())  # drafted at 1/4, not 1/8
    assert not tiny.reencoded and 0 <= tiny.phash < 2**63


def test_a_previous_versions_image_keeps_its_hash_and_an_old_index_is_passed_over(tmp_path):
    layout = OutputLayout(str(tmp_path / "previous"))
    data = _jpeg(original_photo("skimage_coffee.jpg"), quality=90)
    archive = tmp_path / "a.bin"
    archive.write_bytes(data)
    phash = process_image(data, ImageOptions()).phash
    row = _row("n01440764_1", "train", phash, sha=hashlib.sha256(data).hexdigest())
    info = write_index_file(layout, "train", 0, [row], {})
    val = write_index_file(layout, "val", 0, [_row("ILSVRC2012_val_00000001", "val", phash)], {})
    old = pq.read_table(layout.url(val.path)).drop_columns(["phash", "near_duplicate_of"])
    pq.write_table(old, layout.url(val.path))  # as an earlier tool wrote it
    manifest = {"splits": {"train": {"index": [info.path]}, "val": {"index": ["val/val-000000.parquet"]}}}
    lookup = str(tmp_path / "lookup.sqlite")
    assert write_lookup(layout.root, manifest, lookup) == 1  # the old file's rows are not reused
    previous = PreviousImages(lookup, layout.root)
    ref = MemberRef("n01440764_1", "train", str(archive), 0, len(data), 0, "n01440764", "a.bin/n01440764_1")
    (found,) = previous.find([ref]).values()
    assert previous.image(found, data, ArchiveReader()).phash == phash
    previous.close()
    with sqlite3.connect(lookup) as db:
        assert db.execute("SELECT phash FROM previous").fetchall() == [(to_int64(phash),)]
    assert version_diff(layout.root, manifest, layout.root, manifest)["splits"]["val"]["unchanged"] == 1


def test_the_int64_column_takes_any_64_bit_hash(tmp_path):
    layout = OutputLayout(str(tmp_path))
    rows = [_row("a", "train", 2**64 - 1), _row("b", "train", 2**63 - 1)]
    info = write_index_file(layout, "train", 0, rows, {})
    stored = pq.read_table(layout.url(info.path)).column("phash").to_pylist()
    assert stored == [-1, 2**63 - 1] and [from_int64(v) for v in stored] == [2**64 - 1, 2**63 - 1]


# --- the search --------------------------------------------------------------------------------------

def _nearest_by_brute_force(rows, max_distance):
    """{(split, key): the key of its nearest other sample within max_distance, sorting first}."""
    best = {}
    for a, b in itertools.permutations(rows, 2):
        d = hamming(from_int64(a.phash), from_int64(b.phash))
        if d <= max_distance:
            candidate = (d, b.key, b.split)
            if (a.split, a.key) not in best or candidate < best[a.split, a.key]:
                best[a.split, a.key] = candidate
    return {owner: key for owner, (_, key, _) in best.items()}


def test_the_search_over_shards_finds_every_pair_and_each_samples_nearest():
    rng = random.Random(3)
    centres = [rng.getrandbits(63) for _ in range(30)]
    rows = []
    for n in range(300):
        if n % 3:
            phash = rng.choice(centres)
            for bit in rng.sample(range(63), rng.randint(0, 5)):
                phash ^= 1 << bit
        else:
            phash = rng.getrandbits(63)
        split = ("train", "val", "test")[n % 7 % 3]
        rows.append(_row(f"n01440764_{n % 250}", split, phash, shard_id=n % 4))  # some keys in two splits
    rows.append(_row("blank", "train", 0, shard_id=1))
    rows.append(_row("blank", "val", 0, shard_id=2))  # the same key and hash in two splits
    by_shard = collections.defaultdict(list)
    for r in rows:
        by_shard[r.split, int(r.shard[-10:-4])].append(r)
    batches = [shard_hashes(split, shard_id, [r.key for r in shard_rows], [r.phash for r in shard_rows])
               for (split, shard_id), shard_rows in by_shard.items()]
    random.Random(1).shuffle(batches)
    found = search_batches(batches, DEFAULT_MAX_DISTANCE)

    expected = []
    for a, b in itertools.combinations(sorted(rows, key=lambda r: (r.key, r.split)), 2):
        d = hamming(from_int64(a.phash), from_int64(b.phash))
        if d <= DEFAULT_MAX_DISTANCE:
            expected.append((a.key, a.split, b.key, b.split, d))
    got = list(zip(*(found.columns[c] for c in NEAR_DUPLICATES_SCHEMA.names)))
    assert got == sorted(expected) and len(got) > 100
    assert found.samples == len(rows) and found.unlisted == 0
    counts = collections.Counter(split_pair(a, b) for _, a, _, b, _ in expected)
    assert found.by_split_pair == {name: counts[name] for name in ("train-train", "train-val", "train-test",
                                                                   "val-val", "val-test", "test-test")}
    links = {(split, key): other for (split, _), shard_links in found.links.items()
             for key, other in shard_links.items()}
    assert links == _nearest_by_brute_force(rows, DEFAULT_MAX_DISTANCE)
    assert links["train", "blank"] == "blank" and links["val", "blank"] == "blank"
    for (split, shard_id), shard_links in found.links.items():  # each link goes to the shard of its sample
        assert set(shard_links) <= {r.key for r in by_shard[split, shard_id]}


def test_the_search_reads_keys_and_hashes_from_an_index_file(tmp_path):
    layout = OutputLayout(str(tmp_path))
    rows = [_row("n01440764_2", "val", 2**63 + 5, 7), _row("caf\u00e9_1", "val", 12345, 7), _row("z", "val", 0, 7)]
    record = write_index_file(layout, "val", 7, rows, {})
    read = read_shard_hashes(layout.url(record.path), "val", 7)
    assert (read.split, read.shard_id) == ("val", 7)
    assert [k.decode("utf-8") for k in read.keys.tolist()] == [r.key for r in rows]
    assert read.hashes.dtype == np.uint64 and read.hashes.tolist() == [2**63 + 5, 12345, 0]
    from_rows = shard_hashes("val", 7, [r.key for r in rows], [r.phash for r in rows])  # as the test above makes them
    assert np.array_equal(from_rows.keys, read.keys) and np.array_equal(from_rows.hashes, read.hashes)
    with pytest.raises(ValueError, match="2 keys but 1 hashes"):
        shard_hashes("val", 7, ["a", "b"], [1])


def test_a_build_of_no_samples_has_an_empty_pairs_file(tmp_path):
    found = search_batches([shard_hashes("train", 0, [], [])], DEFAULT_MAX_DISTANCE)
    record = write_near_duplicates(OutputLayout(str(tmp_path)), found, DEFAULT_MAX_DISTANCE)
    table = pq.read_table(tmp_path / NEAR_DUPLICATES_NAME)
    assert table.schema.equals(NEAR_DUPLICATES_SCHEMA) and table.num_rows == 0
    assert (record.pairs, record.samples, record.by_split_pair) == (0, 0, {})
    data = (tmp_path / NEAR_DUPLICATES_NAME).read_bytes()
    assert (record.bytes, record.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_split_pairs_are_named_in_the_order_of_the_splits():
    assert [split_pair(*p) for p in (("val", "train"), ("train", "val"), ("test", "val"), ("val", "val"),
                                     ("a", "train"), ("b", "a"))] == [
        "train-val", "train-val", "val-test", "val-val", "train-a", "a-b"]


# --- the flags: one rewrite per index file -----------------------------------------------------------

@pytest.mark.beam
def test_duplicates_and_near_duplicates_are_written_in_one_rewrite(tmp_path):
    layout = OutputLayout(str(tmp_path))
    same = hashlib.sha256(b"same").hexdigest()
    shards = {0: [_row("b", "train", 1, 0, same), _row("c", "train", 2**40, 0)],
              1: [_row("a", "train", 1, 1, same)], 2: [_row("d", "train", 2**50, 2)], 3: [_row("e", "train", 7, 3)]}
    index_files = [write_index_file(layout, "train", shard_id, rows, {}) for shard_id, rows in shards.items()]
    untouched = (tmp_path / "train" / "train-000003.parquet").read_bytes()
    near = [(("train", 0), ("near_duplicate_of", (("b", "a"), ("c", "d")))),
            (("train", 1), ("near_duplicate_of", (("a", "b"),))), (("train", 2), ("near_duplicate_of", (("d", "c"),)))]

    def facts(d: ShardDuplicates):
        data = (tmp_path / "train" / f"train-{d.shard_id:06d}.parquet").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        return d.shard_id, d.flagged, d.near_flagged, (d.bytes, d.sha256) == (len(data), digest)

    with TestPipeline() as p:
        flagged = {"index": p | beam.Create(index_files), "near_links": p | "Near" >> beam.Create(near)} | (
            FlagDuplicates(str(tmp_path), 2))
        # one ShardDuplicates a shard: its file was rewritten once, with both columns
        assert_that(flagged | beam.Map(facts), equal_to([(0, 1, 2, True), (1, 0, 1, True), (2, 0, 1, True)]))
    table = pq.read_table([str(tmp_path / "train" / f"train-{i:06d}.parquet") for i in range(4)])
    assert table.schema == INDEX_SCHEMA
    assert {r["key"]: (r["duplicate_of"], r["near_duplicate_of"]) for r in table.to_pylist()} == {
        "a": (None, "b"), "b": ("a", "a"), "c": (None, "d"), "d": (None, "c"), "e": (None, None)}
    assert (tmp_path / "train" / "train-000003.parquet").read_bytes() == untouched


# --- the manifest and the option -----------------------------------------------------------------------

def test_the_manifest_counts_pairs_per_split_pair_and_flags_per_split():
    pairs = NearDuplicatesFile(NEAR_DUPLICATES_NAME, 8, 3, 2, 0, {"train-train": 0, "train-val": 2, "val-val": 0},
                               1234, "e" * 64)
    facts = [Fact("read", SplitCount("train", 1)), Fact("read", SplitCount("val", 2)),
             Fact("shard", ShardInfo("train", 0, "train/train-000000.tar", 1, 10, "a" * 64)),
             Fact("shard", ShardInfo("val", 0, "val/val-000000.tar", 2, 10, "b" * 64)),
             Fact("duplicates", ShardDuplicates("train", 0, 0, 99, "c" * 64, near_flagged=1)),
             Fact("duplicates", ShardDuplicates("val", 0, 0, 98, "d" * 64, near_flagged=2)),
             Fact("near_duplicates", pairs)]
    manifest = assemble_manifest({}, facts)
    assert manifest["near_duplicates"] == {"path": NEAR_DUPLICATES_NAME, "max_distance": 8, "samples": 3, "pairs": 2,
                                           "unlisted": 0, "by_split_pair": pairs.by_split_pair, "bytes": 1234,
                                           "sha256": "e" * 64}
    assert {s: m["near_duplicates"] for s, m in manifest["splits"].items()} == {"train": 1, "val": 2}
    assert {s: m["duplicates"] for s, m in manifest["splits"].items()} == {"train": 0, "val": 0}
    assert assemble_manifest({}, facts[:-1])["near_duplicates"] is None  # the search was off


def _config(*args) -> BuildConfig:
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return config_from_args(parser.parse_args(["src", "--out", "out", *args]))


def test_the_distance_option():
    assert _config().near_duplicate_distance == DEFAULT_MAX_DISTANCE == 8
    assert _config("--near-duplicate-distance", "0").near_duplicate_distance == 0
    assert _config("--near-duplicate-distance", "off").near_duplicate_distance is None
    assert _config("--near-duplicate-distance", "10").for_manifest()["near_duplicate_distance"] == 10
    for bad in ("13", "-1", "eight"):
        with pytest.raises(SystemExit):
            _config("--near-duplicate-distance", bad)


# --- the fixture factory -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A release with planted near-duplicates and no faults: 4 classes of 6 photos, 12 val images."""
    return make_sample_release(tmp_path_factory.mktemp("planted"), classes=4, train_per_class=6, val_images=12,
                               test_images=2, plant_faults=False, near_duplicates=True, seed=0)


def _member_bytes(release) -> dict:
    """{(split, key): bytes} of every member of a release."""
    found = {}
    with tarfile.open(release.archives["train"]) as outer:
        for class_tar in outer:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(class_tar).read())) as inner:
                for m in inner:
                    found["train", m.name[:-5]] = inner.extractfile(m).read()
    for split in ("val", "test"):
        with tarfile.open(release.archives[split]) as tar:
            for m in tar:
                if m.isfile():
                    found[split, m.name[:-5]] = tar.extractfile(m).read()
    return found


def test_the_release_plants_copies_in_val_and_in_another_class(planted):
    expected = planted.expected
    (original,) = {c.original for c in planted.near_duplicates}
    assert [(c.kind, c.copy[0]) for c in planted.near_duplicates] == list(NEAR_COPIES)
    wnid = expected["train"][original[1]].wnid
    for c in planted.near_duplicates:
        e = expected[c.copy[0]][c.copy[1]]
        assert e.case == "near_copy" and e.outcome == "kept" and e.photo == expected["train"][original[1]].photo
        assert c.copy[0] == "val" or e.wnid != wnid  # in val, or in another class
    assert expected["val"][next(c.copy[1] for c in planted.near_duplicates if c.kind == "png")].orig_format == "PNG"
    others = [expected[s][k] for s, k in planted.other_photographs]
    assert len(others) == 7 and len({e.wnid for e in others}) == 1  # other photographs of one class
    with pytest.raises(ValueError, match="near_duplicates"):
        make_sample_release(planted.root + "-x", classes=1, train_per_class=3, plant_faults=False,
                            near_duplicates=True)


def test_the_kernel_puts_every_copy_near_its_original_and_no_other_photograph_near_another(planted):
    data = _member_bytes(planted)
    phash = {k: process_image(data[k], ImageOptions()).phash for k in data}
    for c in planted.near_duplicates:
        assert hamming(phash[c.original], phash[c.copy]) <= DEFAULT_MAX_DISTANCE, c.kind
    for a, b in itertools.combinations(planted.other_photographs, 2):
        assert hamming(phash[a], phash[b]) > DEFAULT_MAX_DISTANCE + 8, (a, b)


# --- real builds ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_build(planted, tmp_path_factory):
    return build(planted, tmp_path_factory.mktemp("near") / "out", "--shard-size", "150KB", "--direct_num_workers",
                 "2")


def _index(b) -> list:
    return pq.read_table([str(b.path(p)) for s in b.manifest["splits"].values() for p in s["index"]]).to_pylist()


@pytest.mark.e2e
def test_a_build_finds_every_planted_copy_and_pairs_no_two_photographs(planted, planted_build):
    b = planted_build
    pairs = pq.read_table(b.path(NEAR_DUPLICATES_NAME)).to_pylist()
    found = {frozenset({(p["split_a"], p["key_a"]), (p["split_b"], p["key_b"])}): p["distance"] for p in pairs}
    recall = [frozenset({c.original, c.copy}) in found for c in planted.near_duplicates]
    assert all(recall)  # 5 of 5 (the README's recall)
    for a, b_ in itertools.combinations(planted.other_photographs, 2):
        assert frozenset({a, b_}) not in found
    photo = {(s, k): e.photo for s, es in planted.expected.items() for k, e in es.items()}
    assert all(p["distance"] <= DEFAULT_MAX_DISTANCE for p in pairs)
    # precision: every pair joins two images cut from one bundled photograph
    assert [p for p in pairs if photo[p["split_a"], p["key_a"]] != photo[p["split_b"], p["key_b"]]] == []
    planted_pairs = {frozenset(p) for p in itertools.combinations(
        [planted.near_duplicates[0].original] + [c.copy for c in planted.near_duplicates], 2)}
    assert planted_pairs <= set(found)  # the copies are near each other too
    m = b.manifest["near_duplicates"]
    assert (m["pairs"], m["samples"], m["max_distance"]) == (len(pairs), len(_index(b)), DEFAULT_MAX_DISTANCE)
    counts = collections.Counter(split_pair(p["split_a"], p["split_b"]) for p in pairs)
    assert {k: v for k, v in m["by_split_pair"].items() if v} == dict(counts) and counts["train-val"] >= 6
    data = b.path(NEAR_DUPLICATES_NAME).read_bytes()
    assert (m["bytes"], m["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert f"possible train/val leakage: {counts['train-val']:,} train-val pairs" in b.proc.stderr
    assert f"near-duplicates (perceptual hashes within 8 bits): {len(pairs):,} pairs" in b.proc.stderr


@pytest.mark.e2e
def test_near_duplicate_of_names_the_nearest_other_sample_and_the_json_has_the_hash(planted_build):
    b = planted_build
    rows = _index(b)
    pairs = pq.read_table(b.path(NEAR_DUPLICATES_NAME)).to_pylist()
    nearest = {}
    for p in pairs:
        for mine, theirs in (("a", "b"), ("b", "a")):
            owner, candidate = (p[f"split_{mine}"], p[f"key_{mine}"]), (p["distance"], p[f"key_{theirs}"],
                                                                         p[f"split_{theirs}"])
            nearest[owner] = min(nearest.get(owner, candidate), candidate)
    assert {(r["split"], r["key"]): r["near_duplicate_of"] for r in rows if r["near_duplicate_of"]} == {
        owner: key for owner, (_, key, _) in nearest.items()}
    flagged = collections.Counter(r["split"] for r in rows if r["near_duplicate_of"])
    assert {s: m["near_duplicates"] for s, m in b.manifest["splits"].items()} == {
        s: flagged[s] for s in b.manifest["splits"]}
    for s in b.manifest["splits"].values():  # the rewritten files' digests are the manifest's
        for entry in s["index_files"]:
            data = b.path(entry["path"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    by_key = {(r["split"], r["key"]): r["phash"] for r in rows}
    for split, s in b.manifest["splits"].items():
        for shard in s["shards"]:
            with tarfile.open(b.path(shard["path"])) as tar:
                for m in tar:
                    if m.name.endswith(".json"):
                        sample = json.load(tar.extractfile(m))
                        assert sample["phash"] == by_key[split, sample["key"]] and "near_duplicate_of" not in sample
    hashes = np.array([from_int64(r["phash"]) for r in rows], dtype=np.uint64)
    assert len(np.unique(hashes)) > len(rows) // 2  # hashes, not a constant


@pytest.mark.e2e
def test_off_searches_nothing_and_zero_finds_identical_hashes(planted, planted_build, tmp_path):
    off = run_cli("build", planted.root, "--out", tmp_path / "off", "--no-progress", "--near-duplicate-distance", "off",
                  check_code=0)
    manifest = read_manifest(tmp_path / "off")
    assert manifest["near_duplicates"] is None and manifest["config"]["near_duplicate_distance"] is None
    assert not (version_of(tmp_path / "off") / NEAR_DUPLICATES_NAME).exists()
    assert "near-duplicates (" not in off.stderr and "leakage" not in off.stderr
    index = pq.read_table([str(p) for p in version_of(tmp_path / "off").glob("*/*.parquet")]).column(
        "near_duplicate_of")
    assert index.null_count == len(index)

    zero = build(planted, tmp_path / "zero", "--near-duplicate-distance", "0")
    pairs = pq.read_table(zero.path(NEAR_DUPLICATES_NAME)).to_pylist()
    at_eight = pq.read_table(planted_build.path(NEAR_DUPLICATES_NAME)).to_pylist()
    assert pairs == [p for p in at_eight if p["distance"] == 0] and pairs  # the re-encoded and PNG copies
    assert zero.manifest["near_duplicates"]["max_distance"] == 0
