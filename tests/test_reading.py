"""The reading API (pipeline/reading/): open_dataset, the manifest's counts, get(key) and query(...).

A real build of a release with planted faults (byte duplicates, rejects), boxes and planted
near-duplicates is read through the API and, independently, with tarfile (the bytes and the
`.cls` of every member) and pyarrow (each index file on its own, filtered in plain Python): the
API must give what those readers give. The same build copied to a loopback S3 server (moto, as
in tests/test_remote.py) is read again through s3:// URLs.
"""
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from s3server import s3_server_for_this_process

from pipeline.reading import Dataset, Query, Sample, open_dataset
from transforms.hierarchy import UnknownWnid

# The reading side of a finished build: no Beam in the code under test, so `make test-beam-lowest` leaves it out.
pytestmark = pytest.mark.readers

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def release(release_with_near_copies):
    """Planted faults (two byte duplicates in train, rejects), boxes, and planted near-duplicates."""
    return release_with_near_copies


@pytest.fixture(scope="module")
def built(built_with_near_copies):
    """That release, built once for the session (conftest)."""
    return built_with_near_copies


# --- independent readers ---------------------------------------------------------------------------

def tar_members(built, split: str) -> dict:
    """{key: {"jpg": bytes, "cls": int, "shard": relative path}} of a split, read with tarfile."""
    found: dict = {}
    for shard in built.manifest["splits"][split]["shards"]:
        with tarfile.open(built.path(shard["path"])) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    found.setdefault(key, {"shard": shard["path"]})[ext] = tar.extractfile(member).read()
    return {key: {**m, "cls": int(m["cls"])} for key, m in found.items()}


def index_rows(built, split: str) -> list:
    """The split's index rows: each index file of the manifest read on its own, in manifest order."""
    rows = []
    for path in built.manifest["splits"][split]["index"]:
        rows += pq.read_table(built.path(path)).to_pylist()
    return rows


def class_records(built) -> dict:
    return {c["wnid"]: c for c in built.manifest["classes"]}


# --- open_dataset and the manifest -----------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("split", SPLITS)
def test_len_counts_classes_and_shards_are_the_manifests(built, split):
    ds = open_dataset(built.root, split)
    entry = built.manifest["splits"][split]
    members = tar_members(built, split)
    assert len(ds) == entry["samples"] == len(members) > 0
    assert ds.classes == built.manifest["classes"] and len(ds.classes) == 1000
    assert ds.fine_classes is None
    assert ds.counts == {**{k: entry[k] for k in ("read", "samples", "rejected", "duplicates", "near_duplicates",
                                                  "bytes", "left_out", "with_boxes", "boxes",
                                                  "label_disagreements")},
                         "shards": len(entry["shards"])}
    assert ds.bytes == entry["bytes"] == sum(os.path.getsize(p) for p in built.shard_paths(split))
    assert ds.rejected == entry["rejected"] and ds.rejects_by_reason == entry["rejects_by_reason"]
    assert [(s.url, s.path, s.samples, s.bytes, s.sha256) for s in ds.shards] == [
        (str(built.path(s["path"])), s["path"], s["samples"], s["bytes"], s["sha256"]) for s in entry["shards"]]
    assert sum(s.samples for s in ds.shards) == len(ds)


@pytest.mark.e2e
def test_open_dataset_reads_the_root_a_version_folder_and_a_file_url_alike(built):
    by_root = open_dataset(built.root, "val")
    by_version = open_dataset(built.out, "val")
    by_url = open_dataset(f"file://{built.root}", "val")
    assert by_root.url == by_version.url == str(built.out)
    assert by_url.url == f"file://{built.out}"
    key = index_rows(built, "val")[0]["key"]
    assert by_root.get(key).jpeg == by_version.get(key).jpeg == by_url.get(key).jpeg
    assert by_url.index().equals(by_root.index())


@pytest.mark.e2e
def test_a_missing_split_and_a_folder_without_a_build_are_errors(built, tmp_path):
    with pytest.raises(KeyError, match="no split 'validation'.*test, train, val"):
        open_dataset(built.root, "validation")
    with pytest.raises(FileNotFoundError, match="no published build"):
        open_dataset(tmp_path, "train")


@pytest.mark.e2e
@pytest.mark.parametrize("split", SPLITS)
def test_the_index_is_every_index_file_in_manifest_order_read_once(built, split):
    ds = open_dataset(built.root, split)
    table = ds.index()
    assert table.to_pylist() == index_rows(built, split)
    assert ds.index() is table


# --- get(key) --------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("split", SPLITS)
def test_get_returns_the_bytes_and_the_label_of_the_tar_member(built, split):
    ds = open_dataset(built.root, split)
    members = tar_members(built, split)
    rows = {r["key"]: r for r in index_rows(built, split)}
    for key, member in members.items():
        sample = ds.get(key)
        assert isinstance(sample, Sample) and sample.key == key and sample.split == split
        assert sample.jpeg == member["jpg"]
        assert sample.label == member["cls"] == rows[key]["label"]
        assert sample.row == rows[key] and rows[key]["shard"] == member["shard"]
        assert sample.wnid == rows[key]["wnid"] and sample.boxes == rows[key]["boxes"]
        assert key in ds and ds[key].jpeg == member["jpg"]
    image = ds.get(next(iter(members))).image()
    row = rows[next(iter(members))]
    assert image.mode == "RGB" and image.size == (row["width"], row["height"])
    ds.close()
    assert ds.get(next(iter(members))).jpeg == members[next(iter(members))]["jpg"]  # reopens after close


@pytest.mark.e2e
def test_an_unknown_key_raises_key_error_naming_it(built):
    ds = open_dataset(built.root, "train")
    val_key = index_rows(built, "val")[0]["key"]
    for key in ("n00000000_1", val_key):  # a key of another split is not one of this split
        with pytest.raises(KeyError, match=key):
            ds.get(key)
        assert key not in ds


@pytest.mark.e2e
def test_a_pickled_dataset_reads_the_same_samples(built):
    ds = open_dataset(built.root, "val")
    key = index_rows(built, "val")[-1]["key"]
    ds.get(key)  # opens a file and reads the index: neither may travel in the pickle
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.get(key).jpeg == tar_members(built, "val")[key]["jpg"] and len(copy) == len(ds)


@pytest.mark.e2e
@pytest.mark.parametrize("world_size", [1, 2])
def test_stream_gives_every_sample_of_the_split_with_its_tar_bytes(built, world_size):
    """Dataset.stream is pipeline.reading.stream over the manifest's shards: over the ranks, each
    sample of the tar once (plus the marked padding), with its bytes and label."""
    ds = open_dataset(built.root, "train")
    members = tar_members(built, "train")
    seen = []
    for rank in range(world_size):
        samples = list(ds.stream(decode=None, output="sample", rank=rank, world_size=world_size, seed=3))
        assert len(samples) == len(ds.stream(rank=rank, world_size=world_size)) == -(-len(ds) // world_size)
        for sample in samples:
            assert sample["image"] == members[sample["key"]]["jpg"] and sample["label"] == members[sample["key"]]["cls"]
        seen += [s["key"] for s in samples if not s["padding"]]
    assert sorted(seen) == sorted(members) and len(members) == len(ds)


# --- query(...) ------------------------------------------------------------------------------------

def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _subtree_ancestor(built, rows) -> str:
    """A WNID above some of the split's classes but not all (the first such, in sorted order)."""
    records = class_records(built)
    present = {r["fine_wnid"] for r in rows}
    for ancestor in sorted({a for w in present for a in records[w]["ancestors"]}):
        under = {w for w in present if ancestor in records[w]["ancestors"]}
        if 1 < len(under) < len(present):
            return ancestor
    raise AssertionError("the release's classes share every ancestor: the test would be vacuous")


def _cases(built, rows):
    """(name, query keywords, the rows they must give, by a filter in plain Python) for the split."""
    records = class_records(built)
    label = _median(r["label"] for r in rows)
    size = _median(min(r["orig_width"], r["orig_height"]) for r in rows)
    wnids = sorted({r["wnid"] for r in rows})
    ancestor = _subtree_ancestor(built, rows)
    return [
        ("expression", {"filter": pc.field("has_boxes") & (pc.field("label") < label)},
         lambda r: r["has_boxes"] and r["label"] < label),
        ("sql", {"sql": f"SELECT key FROM index WHERE label < {label}"}, lambda r: r["label"] < label),
        ("sql, offset quoted, any order", {"sql": 'SELECT key, "offset" FROM index WHERE "offset" > 2048 '
                                                  "ORDER BY key DESC"},
         lambda r: r["offset"] > 2048),
        ("classes", {"classes": [wnids[0], wnids[1]]}, lambda r: r["wnid"] in wnids[:2]),
        ("classes by label", {"classes": rows[0]["label"]}, lambda r: r["label"] == rows[0]["label"]),
        ("under", {"under": ancestor},
         lambda r: r["fine_wnid"] == ancestor or ancestor in records[r["fine_wnid"]]["ancestors"]),
        ("has_boxes", {"has_boxes": True}, lambda r: r["has_boxes"]),
        ("no boxes", {"has_boxes": False}, lambda r: not r["has_boxes"]),
        ("min_size", {"min_size": size}, lambda r: min(r["orig_width"], r["orig_height"]) >= size),
        ("no_duplicates", {"no_duplicates": True}, lambda r: r["duplicate_of"] is None),
        ("no_near_duplicates", {"no_near_duplicates": True}, lambda r: r["near_duplicate_of"] is None),
        ("all together", {"has_boxes": True, "no_near_duplicates": True, "sql": f"SELECT key FROM index "
                                                                                f"WHERE label >= {label}"},
         lambda r: r["has_boxes"] and r["near_duplicate_of"] is None and r["label"] >= label),
    ]


@pytest.mark.e2e
def test_each_query_gives_the_rows_of_a_plain_filter_and_reads_only_their_samples(built):
    ds = open_dataset(built.root, "train")
    rows = index_rows(built, "train")
    members = tar_members(built, "train")
    for name, keywords, keep in _cases(built, rows):
        expected = [r for r in rows if keep(r)]
        assert 0 < len(expected) < len(rows), name  # the case is not vacuous
        q = ds.query(**keywords)
        assert isinstance(q, Query) and len(q) == len(expected), name
        assert q.keys() == [r["key"] for r in expected], name
        assert q.table.to_pylist() == expected, name
        samples = list(q)
        assert [s.key for s in samples] == [r["key"] for r in expected], name
        assert all(s.jpeg == members[s.key]["jpg"] and s.label == members[s.key]["cls"] for s in samples), name


@pytest.mark.e2e
def test_a_query_reads_in_shard_order_and_can_be_refined(built):
    ds = open_dataset(built.root, "val")
    order = {s["path"]: i for i, s in enumerate(built.manifest["splits"]["val"]["shards"])}
    q = ds.query(sql="SELECT key FROM index ORDER BY random()")
    places = [(order[s.row["shard"]], s.row["offset"]) for s in q]
    assert len(places) == len(ds) and places == sorted(places) and len(set(places)) == len(places)
    rows = index_rows(built, "val")
    refined = ds.query(has_boxes=True).query(no_near_duplicates=True)
    assert refined.keys() == [r["key"] for r in rows if r["has_boxes"] and r["near_duplicate_of"] is None]
    assert 0 < len(refined) < len(ds)
    assert len(ds.query()) == len(ds)


@pytest.mark.e2e
def test_queries_that_cannot_be_answered_say_why(built):
    ds = open_dataset(built.root, "train")
    with pytest.raises(ValueError, match="n09999999"):
        ds.query(classes=["n09999999"])
    with pytest.raises(ValueError, match="12345"):
        ds.query(classes=12345)
    with pytest.raises(UnknownWnid):
        ds.query(under="n99999999")
    with pytest.raises(ValueError, match="key column"):
        ds.query(sql="SELECT label FROM index")
    assert len(ds.query(under="n01440764")) == 0  # tench: a class of the table that the release has no image of
    searched_off = {**built.manifest, "near_duplicates": None}  # what --near-duplicate-distance off writes
    with pytest.raises(ValueError, match="did not search for near-duplicates"):
        Dataset(str(built.out), "train", searched_off).query(no_near_duplicates=True)


# --- what it imports -------------------------------------------------------------------------------

def test_the_reading_api_imports_without_torch_and_without_beam():
    code = ("import sys; sys.modules['torch'] = None; import pipeline.reading; "
            "assert 'apache_beam' not in sys.modules, 'beam'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- s3:// ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_dataset(built):
    """The build copied to the S3 server (LATEST and the version it names): s3://BUCKET/reading-api."""
    with s3_server_for_this_process() as server:
        latest = (built.root / "LATEST").read_text().strip()
        base = f"{server.bucket}/reading-api"
        server.fs.put(str(built.out), f"{base}/{latest}", recursive=True)  # in one batch: a file at a time is slow
        server.fs.pipe_file(f"{base}/LATEST", (latest + "\n").encode())
        yield server, f"s3://{base}"


@pytest.mark.e2e
def test_an_s3_dataset_reads_like_the_local_one_and_get_is_one_ranged_get(built, s3_dataset):
    server, url = s3_dataset
    ds = open_dataset(url, "train")
    assert ds.url.startswith("s3://") and len(ds) == built.manifest["splits"]["train"]["samples"]
    assert ds.index().to_pylist() == index_rows(built, "train")
    members = tar_members(built, "train")
    rows = index_rows(built, "train")
    ds.get(rows[0]["key"])  # reads the index first
    server.requests()  # waits for the responses still being sent
    server.clear_log()
    row = rows[-1]
    assert ds.get(row["key"]).jpeg == members[row["key"]]["jpg"]
    (request,) = server.requests()
    latest = (built.root / "LATEST").read_text().strip()
    assert (request.method, request.key) == ("GET", f"reading-api/{latest}/{row['shard']}")
    assert request.range == f"bytes={row['offset']}-{row['offset'] + row['size'] - 1}"
    assert request.sent == row["size"]
    q = ds.query(has_boxes=True)
    expected = [r["key"] for r in rows if r["has_boxes"]]
    assert [(s.key, s.jpeg) for s in q] == [(k, members[k]["jpg"]) for k in expected]


# --- a local copy without LATEST: an output of an earlier release ------------------------------------

@pytest.mark.e2e
def test_an_unversioned_output_is_read_as_it_stands(built, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(built.out, old)  # manifest.json at the root, as earlier releases wrote it
    ds = open_dataset(old, "test")
    assert ds.url == str(old)
    members = tar_members(built, "test")
    assert {s.key: s.jpeg for s in ds.query()} == {k: m["jpg"] for k, m in members.items()}
    assert isinstance(ds.index(), pa.Table)
