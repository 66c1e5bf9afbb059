"""A finished build read through each common reader with no glue: webdataset, wids, pyarrow, DuckDB
and polars (the obvious glob), Hugging Face datasets, DALI's index files and timm's _info.json.

wids, timm and DALI need torch or a GPU, which these tests do not install. wids runs for real in a
subprocess, with stand-ins for the torch modules it imports at its top where torch is missing;
timm's _info.json is parsed the way timm's webdataset reader parses it (those few lines are
replicated below); and each DALI index is compared byte for byte with what DALI's `wds2idx` tool
writes for its tar (its algorithm, replicated below as an independent reference).
"""
import collections
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.versions import DatasetRoot
from transforms.reader_files import timm_info
from transforms.schema import DATASET_COLUMNS, INDEX_SCHEMA, IndexRow
from transforms.shard_writer import JSON_FOR_NULL

SPLITS = ("train", "val", "test")


def _index_rows(built, split: str) -> list:
    """A split's index rows, shard by shard in manifest order, each shard's in tar order."""
    return pq.read_table([str(built.path(p)) for p in built.manifest["splits"][split]["index"]]).to_pylist()


def _total_samples(built) -> int:
    return sum(s["samples"] for s in built.manifest["splits"].values())


# --- the sample .json ------------------------------------------------------------------------------

def test_every_field_that_can_be_null_in_the_index_has_its_value_in_the_json():
    hints = typing.get_type_hints(IndexRow)
    optional = {name for name, hint in hints.items() if type(None) in typing.get_args(hint)}
    assert optional - set(DATASET_COLUMNS) == set(JSON_FOR_NULL)
    assert {f.name for f in INDEX_SCHEMA if f.nullable} - set(DATASET_COLUMNS) == set(JSON_FOR_NULL)


@pytest.mark.e2e
def test_each_json_field_has_one_type_in_every_sample_and_none_is_null(built):
    types = collections.defaultdict(set)
    seen = collections.defaultdict(set)
    for split in SPLITS:
        for path in built.shard_paths(split):
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        for name, value in json.load(tar.extractfile(member)).items():
                            types[name].add(type(value).__name__)
                            if name in JSON_FOR_NULL:
                                seen[name].add(value)
    assert set(types) == {f.name for f in dataclasses.fields(IndexRow)} - set(DATASET_COLUMNS) | {"boxes_px"}
    assert types["phash"] == {"int"}
    assert {name: t for name, t in types.items() if len(t) != 1 or "NoneType" in t} == {}
    # the build has samples with and without each of these: the test is not vacuous
    assert "" in seen["wnid"] and len(seen["wnid"]) > 1 and {0, 6} <= seen["exif_orientation"]


@pytest.mark.e2e
def test_webdataset_reads_each_sample_with_its_index_row(built):
    for split in SPLITS:
        rows = {r["key"]: r for r in _index_rows(built, split)}
        samples = list(wds.WebDataset([str(p) for p in built.shard_paths(split)], shardshuffle=False))
        assert sorted(s["__key__"] for s in samples) == sorted(rows)
        for sample in samples:
            row, meta = rows[sample["__key__"]], json.loads(sample["json"])
            assert int(sample["cls"]) == row["label"] and len(sample["jpg"]) == row["size"]
            boxes = meta.pop("boxes")
            assert len(boxes) == len(row["boxes"]) and len(meta.pop("boxes_px")) == len(boxes)
            assert all(got == pytest.approx(want) for got, want in zip(boxes, row["boxes"]))
            expected = {name: JSON_FOR_NULL[name] if value is None and name in JSON_FOR_NULL else value
                        for name, value in row.items() if name not in (*DATASET_COLUMNS, "boxes")}
            assert meta == expected


# --- Hugging Face datasets -------------------------------------------------------------------------

@pytest.mark.e2e
def test_hugging_face_datasets_loads_the_version_folder_without_streaming(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(built.out), cache_dir=str(tmp_path / "hf"))
    assert {split: loaded[split].num_rows for split in loaded} == {
        split: s["samples"] for split, s in built.manifest["splits"].items()}
    boxed = [r for r in loaded["val"] if r["json"]["boxes"]]
    assert boxed and all(len(b) == 4 for r in boxed for b in r["json"]["boxes"])
    for row in loaded["val"].select(range(3)):
        assert row["cls"] == row["json"]["label"] and row["json"]["key"] == row["__key__"]
        assert row["jpg"].size == (row["json"]["width"], row["json"]["height"])
        assert isinstance(row["json"]["phash"], int) and "near_duplicate_of" not in row["json"]
    assert {r["json"]["wnid"] for r in loaded["test"]} == {""}
    # the packaged webdataset builder on chosen shards, with the types the card declares
    features = datasets.load_dataset_builder(str(built.out)).info.features
    chosen = datasets.load_dataset("webdataset", data_files={"train": [str(p) for p in built.shard_paths("train")]},
                                   features=features, cache_dir=str(tmp_path / "hf-files"))
    assert chosen["train"].num_rows == built.manifest["splits"]["train"]["samples"]


# --- the index: pyarrow, DuckDB, polars ------------------------------------------------------------

@pytest.mark.e2e
def test_the_manifest_has_the_sha256_of_each_index_file_as_it_stands(built):
    assert sum(s["duplicates"] for s in built.manifest["splits"].values()) > 0  # some files were rewritten
    for s in built.manifest["splits"].values():
        assert [e["path"] for e in s["index_files"]] == s["index"]
        for entry in s["index_files"]:
            data = built.path(entry["path"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), entry["path"]
            assert pq.read_metadata(built.path(entry["path"])).num_rows == entry["rows"]


@pytest.mark.e2e
def test_duckdb_reads_the_index_through_the_obvious_glob_and_nothing_else(built):
    duckdb = pytest.importorskip("duckdb")
    glob = f"{built.out}/*/*.parquet"
    assert duckdb.sql(f"SELECT * FROM read_parquet('{glob}') LIMIT 0").columns == INDEX_SCHEMA.names
    ((count, keys),) = duckdb.sql(
        f"SELECT count(*), count(DISTINCT split || '/' || key) FROM read_parquet('{glob}')").fetchall()
    assert count == keys == _total_samples(built)
    # "offset" is a reserved word of SQL: quoted, it locates the stored JPEG, the source's bytes when kept
    kept = duckdb.sql(f'SELECT shard, "offset", size, sha256 FROM read_parquet(\'{glob}\') WHERE NOT reencoded'
                      ).fetchall()
    assert kept
    for shard, offset, size, sha256 in kept:
        with open(built.path(shard), "rb") as f:
            f.seek(offset)
            assert hashlib.sha256(f.read(size)).hexdigest() == sha256
    # the rejects tables, one folder deeper, have a glob of their own
    ((rejects,),) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{built.out}/rejects/*/*.parquet')").fetchall()
    m = built.manifest
    assert rejects == sum(s["rejected"] for s in m["splits"].values()) + sum(m["annotation_rejects_by_reason"].values())


@pytest.mark.e2e
def test_polars_reads_the_index_through_the_obvious_glob(built):
    pl = pytest.importorskip("polars")
    glob = f"{built.out}/*/*.parquet"
    frame = pl.read_parquet(glob)
    assert frame.columns == INDEX_SCHEMA.names and frame.height == _total_samples(built)
    with_boxes = pl.scan_parquet(glob).filter(pl.col("has_boxes")).select(pl.len()).collect().item()
    assert with_boxes == sum(s["with_boxes"] for s in built.manifest["splits"].values()) > 0


# --- wids -------------------------------------------------------------------------------------------

# Run in a subprocess: the stand-ins must not reach the other tests' modules.
WIDS_READER = r"""
import json, sys, types, typing
try:
    import torch  # noqa: F401 (wids's own dependency, where it is installed)
    real_torch = True
except ImportError:
    real_torch = False  # wids imports these two torch modules at its top and uses only what they define here
    T = typing.TypeVar("T")

    class Dataset(typing.Generic[T]):
        pass

    class Sampler(typing.Generic[T]):
        pass

    modules = {name: types.ModuleType(name) for name in ("torch", "torch.distributed", "torch.utils",
                                                          "torch.utils.data")}
    modules["torch.distributed"].is_initialized = lambda: False
    modules["torch.utils.data"].Dataset, modules["torch.utils.data"].Sampler = Dataset, Sampler
    modules["torch"].distributed, modules["torch"].utils = modules["torch.distributed"], modules["torch.utils"]
    modules["torch.utils"].data = modules["torch.utils.data"]
    sys.modules.update(modules)
import wids

dataset = wids.ShardListDataset(sys.argv[1], cache_dir=sys.argv[2], transformations=[])
samples = []
for i in range(len(dataset)):
    sample = dataset[i]
    meta = json.loads(sample[".json"].read())
    jpeg = sample[".jpg"].read()
    samples.append([sample["__key__"], int(sample[".cls"].read()), meta["key"], len(jpeg) == meta["size"]])
print(json.dumps({"real_torch": real_torch, "samples": samples}))
"""


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("wids") is None, reason="wids is not installed")
def test_wids_opens_each_split_index_and_reads_its_samples(built, tmp_path):
    """With stand-ins for torch where it is missing (make test), with torch itself where it is there
    (make test-readers runs this test too)."""
    for split in SPLITS:
        index = built.out / built.manifest["reader_files"]["wids"][split]
        proc = subprocess.run([sys.executable, "-c", WIDS_READER, str(index), str(tmp_path / split)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.splitlines()[-1])
        assert got["real_torch"] == (importlib.util.find_spec("torch") is not None)
        assert got["samples"] == [[r["key"], r["label"], r["key"], True] for r in _index_rows(built, split)], split


# --- timm -------------------------------------------------------------------------------------------

def timm_split_info(info: dict, split: str) -> dict:
    """What timm's webdataset reader takes from _info.json for a split named plainly
    (timm/data/readers/reader_wds.py, _parse_split_info and _info_convert)."""
    if "splits" not in info or split not in info["splits"]:
        raise RuntimeError(f"split {split} not found in info ({info.get('splits', {}).keys()})")
    found = info["splits"][split]
    return {"num_samples": found["num_samples"], "filenames": tuple(found["filenames"]),
            "shard_lengths": tuple(found["shard_lengths"]), "alt_label": found.get("alt_label", ""),
            "name": found["name"]}


@pytest.mark.e2e
def test_timm_finds_every_split_at_the_dataset_root_and_in_the_version(built):
    latest = (built.root / "LATEST").read_text().strip()
    for folder in (built.root, built.out):  # timm's --data-dir: OUT, or the version folder
        info = json.loads((folder / "_info.json").read_text())
        for split, s in built.manifest["splits"].items():
            found = timm_split_info(info, split)
            assert found["name"] == split and found["num_samples"] == s["samples"] == sum(found["shard_lengths"])
            if folder == built.root:
                assert all(f.startswith(f"{latest}/") for f in found["filenames"])
            for filename, length in zip(found["filenames"], found["shard_lengths"]):
                with tarfile.open(os.path.join(folder, filename)) as tar:  # timm joins --data-dir and the name
                    assert sum(1 for m in tar if m.name.endswith(".cls")) == length
        # timm's train.py evaluates on "validation" unless told otherwise
        assert timm_split_info(info, "validation")["filenames"] == timm_split_info(info, "val")["filenames"]


def test_publish_writes_timms_info_at_the_root_and_pruning_keeps_it(tmp_path):
    root = DatasetRoot(str(tmp_path))
    manifest = {"classes": [], "splits": {"train": {"samples": 3, "shards": [
        {"path": "train/train-000000.tar", "samples": 3, "bytes": 10240, "sha256": "a" * 64}]}}}
    build_ids = ["20260101T000000.000Z-aaaaaaaa", "20260102T000000.000Z-bbbbbbbb"]
    for build_id in build_ids:
        (Path(root.start_version(build_id, build_id[-8:] * 8)) / "manifest.json").write_text(json.dumps(manifest))
        root.publish(build_id)
        assert json.loads((tmp_path / "_info.json").read_text()) == timm_info(manifest, f"versions/{build_id}/")
    assert root.prune(1) == [f"versions/{build_ids[0]}"] and root.remove_unfinished() == []
    info = json.loads((tmp_path / "_info.json").read_text())
    assert info["splits"]["train"]["filenames"] == [f"versions/{build_ids[1]}/train/train-000000.tar"]


# --- DALI -------------------------------------------------------------------------------------------

def wds2idx(tar_path) -> bytes:
    """What DALI's tools/wds2idx.py writes for a tar: its algorithm (GNU tar lists the members and
    the blocks they end at; a sample is a run of members whose names agree before the first dot)."""
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    blocks = subprocess.run(["tar", "--list", "--block-num", "--file", str(tar_path)], capture_output=True,
                            check=True, env=env).stdout.split(b"\n")
    listing = subprocess.run(["tar", "--verbose", "--list", "--file", str(tar_path)], capture_output=True,
                             check=True, env=env).stdout.split(b"\n")
    samples: list = []
    last = None
    for line, next_line, entry in zip(blocks, blocks[1:], listing):
        if not line or not entry or entry[:1] != b"-":
            continue
        name = line[line.find(b":") + 2:].decode("ascii")
        end = int(next_line[next_line.find(b"block") + 6: next_line.find(b":")]) * 512
        size_field = entry[: -len(name)]
        size_field = size_field[: size_field.rfind(b"-") - 8]
        size = int(size_field[size_field.rfind(b" "):])
        offset = end - size
        offset -= offset % 512
        dot = name.find(".", name.rfind("/") + 1)
        base, ext = name[:dot], name[dot + 1:]
        if not base or base.endswith("/"):
            continue
        if base != last:
            samples.append([])
            last = base
        samples[-1].append(f"{ext} {offset} {size} {name}")
    if not samples:
        raise ValueError("Webdataset Tar File empty")
    return (f"v1.2 {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)).encode()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("tar") is None, reason="wds2idx lists tars with GNU tar")
def test_each_dali_index_is_what_dalis_wds2idx_writes_for_its_tar(built):
    checked = 0
    for split in SPLITS:
        rows = {r["key"]: r for r in _index_rows(built, split)}
        for shard in built.manifest["splits"][split]["shards"]:
            tar = built.path(shard["path"])
            idx = tar.with_suffix(".idx")
            if shard["samples"] == 0:  # wds2idx refuses an empty tar, DALI an index of no samples
                assert not idx.exists()
                continue
            assert idx.read_bytes() == wds2idx(tar), shard["path"]
            lines = idx.read_text().splitlines()
            assert lines[0] == f"v1.2 {shard['samples']}"
            for line in lines[1:]:  # the .jpg data is where the Parquet index says
                ext, offset, size, name = line.split()[:4]
                assert ext == "jpg" and (int(offset), int(size)) == (rows[name[:-4]]["offset"], rows[name[:-4]]["size"])
            checked += 1
    assert checked >= 10
