"""`imagenet-shards verify` (pipeline/reading/verify.py) on real builds.

The release with every planted fault is built once (conftest's `built`); each test copies the whole
dataset root (LATEST, the version it names and timm's _info.json) and damages its own copy: a byte
flipped inside a .jpg payload, a shard deleted, an index file cut short, a count of the manifest
edited, a DALI index edited, a stray index file, and a key duplicated. The duplicated key is made
consistently (the tar, its DALI index, its index file and the manifest's digests all rewritten), so
that it is the only problem there is to find. The same build copied to a loopback S3 server is
verified through its s3:// URL.
"""
import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Build
from PIL import Image
from s3server import s3_server_for_this_process

from pipeline.reading.verify import add_verify_arguments, run_verify
from transforms.reader_files import dali_index, dali_sample_line, wids_index
from transforms.schema import INDEX_SCHEMA
from transforms.shard_writer import ShardTarWriter

# Real builds through the command line, then the reading side (no Beam in the code under test, so
# `make test-beam-lowest` leaves it out).
pytestmark = [pytest.mark.e2e, pytest.mark.readers]


def verify(out, *options) -> tuple:
    """Run verify as the command line would (its own argument parser); returns (exit status, report)."""
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    lines: list = []
    code = run_verify(parser.parse_args([str(out), "--no-progress", *map(str, options)]), lines.append, io.StringIO())
    return code, "\n".join(lines)


def problems(report: str) -> list:
    return [line[len("problem: "):] for line in report.splitlines() if line.startswith("problem: ")]


@pytest.fixture
def dataset(built, tmp_path) -> Build:
    """A copy of the whole dataset root, for one test to damage."""
    shutil.copytree(built.root, tmp_path / "out")
    return Build(tmp_path / "out", None)


def rows_of(build: Build, split: str) -> list:
    return pq.read_table([str(build.path(p)) for p in build.manifest["splits"][split]["index"]]).to_pylist()


def write_manifest(build: Build) -> None:
    build.path("manifest.json").write_text(json.dumps(build.manifest, indent=1) + "\n")


def referenced(build: Build) -> set:
    """The keys that some row's duplicate_of or near_duplicate_of names."""
    return {r[c] for split in build.manifest["splits"] for r in rows_of(build, split)
            for c in ("duplicate_of", "near_duplicate_of") if r[c]}


def rename_key(build: Build, shard: str, old: str, new: str) -> None:
    """Rename a sample consistently: its tar members and .json, the shard's DALI index and index file,
    and the sizes and digests that the manifest and the wids index give them."""
    with tarfile.open(build.path(shard)) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    out = io.BytesIO()
    writer, lines, moved = ShardTarWriter(out), [], {}
    for i in range(0, len(members), 3):
        (jpg_name, jpg), (_, cls), (_, meta) = members[i:i + 3]
        key = jpg_name.partition(".")[0]
        name = new if key == old else key
        fields = {**json.loads(meta), "key": name, "offset": writer.payload_offset(f"{name}.jpg")}
        sample = [(f"{name}.jpg", jpg), (f"{name}.cls", cls),
                  (f"{name}.json", json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())]
        offsets = writer.add_sample(sample)
        lines.append(dali_sample_line(sample, offsets))
        moved[key] = (name, offsets[0])
    size, digest = writer.close()
    build.path(shard).write_bytes(out.getvalue())
    stem = shard[:-len(".tar")]
    build.path(stem + ".idx").write_bytes(dali_index(lines))
    rows = pq.read_table(build.path(stem + ".parquet")).to_pylist()
    for row in rows:
        row["key"], row["offset"] = moved[row["key"]]
    index = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), index, compression="zstd")
    build.path(stem + ".parquet").write_bytes(index.getvalue())
    split = build.manifest["splits"][rows[0]["split"]]
    for entry in split["shards"]:
        if entry["path"] == shard:
            entry.update(bytes=size, sha256=digest)
    for entry in split["index_files"]:
        if entry["path"] == stem + ".parquet":
            entry.update(bytes=len(index.getvalue()), sha256=hashlib.sha256(index.getvalue()).hexdigest())
    split["bytes"] = sum(entry["bytes"] for entry in split["shards"])
    write_manifest(build)
    wids = build.path(build.manifest["reader_files"]["wids"][rows[0]["split"]])
    wids.write_text(json.dumps(wids_index(build.manifest, rows[0]["split"]), indent=1) + "\n")


# --- a clean build -------------------------------------------------------------------------------

def test_a_clean_build_verifies_through_latest_and_as_a_version_folder(built):
    total = sum(s["samples"] for s in built.manifest["splits"].values())
    shards = sum(len(s["shards"]) for s in built.manifest["splits"].values())
    code, report = verify(built.root)
    assert code == 0, report
    assert problems(report) == []
    assert f"verifying {built.out} (the version that LATEST names)" in report
    assert f"{shards} shards" in report and f"{total} samples read from the tars" in report
    assert f"{total} images decoded" in report
    assert report.splitlines()[-1].startswith("verify: OK")
    code, report = verify(built.out, "--workers", 1)  # the version folder itself, on one thread
    assert code == 0, report
    assert f"verifying {built.out}\n" in report


def test_sample_decodes_only_n_images_and_the_same_ones_for_a_seed(built, monkeypatch):
    opened: list = []
    original = Image.open

    def counting_open(fp, *args, **kwargs):
        image = original(fp, *args, **kwargs)
        opened.append(image.size)
        return image

    monkeypatch.setattr(Image, "open", counting_open)
    code, report = verify(built.root, "--sample", 5, "--seed", 3)
    assert code == 0, report
    assert len(opened) == 5 and "5 images decoded (--sample 5, --seed 3)" in report
    first, opened[:] = sorted(opened), []
    assert verify(built.root, "--sample", 5, "--seed", 3)[0] == 0
    assert sorted(opened) == first
    opened.clear()
    assert verify(built.root, "--sample", 0)[0] == 0 and opened == []


def test_out_without_a_dataset_is_unusable_input(tmp_path):
    code, report = verify(tmp_path)
    assert code == 2 and "holds no usable dataset" in report
    assert verify(tmp_path / "nothing-here")[0] == 2
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    code, report = verify(tmp_path)
    assert code == 2 and "not a manifest of imagenet-shards" in report


# --- damage --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kept", [True, False], ids=["kept-jpeg", "reencoded-jpeg"])
def test_a_flipped_byte_in_a_jpg_payload_names_the_shard_and_the_key(dataset, kept):
    row = next(r for r in rows_of(dataset, "train") if r["reencoded"] is not kept)
    shard = dataset.path(row["shard"])
    data = bytearray(shard.read_bytes())
    data[row["offset"] + row["size"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, report = verify(dataset.root)
    assert code == 1, report
    found = problems(report)
    assert any(p.startswith(f"{row['shard']}: sha256 ") for p in found), report
    if kept:  # a JPEG kept byte for byte has the source's sha256 in the index: the key is named
        assert f"{row['shard']}: {row['key']}: the .jpg was stored byte for byte, but it does not have the " \
               "source's sha256" in found
    assert all(p.startswith(f"{row['shard']}: ") for p in found), report


def test_a_deleted_shard_is_named(dataset):
    shard = next(s for s in dataset.manifest["splits"]["train"]["shards"] if s["samples"])["path"]
    dataset.path(shard).unlink()
    code, report = verify(dataset.root)
    assert code == 1
    assert problems(report) == [f"{shard}: missing"], report


def test_a_truncated_index_file_is_named(dataset):
    index = dataset.manifest["splits"]["val"]["index"][0]
    data = dataset.path(index).read_bytes()
    dataset.path(index).write_bytes(data[:len(data) // 2])
    code, report = verify(dataset.root)
    assert code == 1
    found = problems(report)
    assert f"{index}: {len(data) // 2:,} bytes, but the manifest says {len(data):,}" in found, report
    assert any(p.startswith(f"{index}: sha256 ") for p in found)
    assert any(p.startswith(f"{index}: not a readable Parquet file") for p in found)
    assert all(p.startswith(f"{index}: ") for p in found), report


def test_an_edited_manifest_count_is_named(dataset):
    dataset.manifest["splits"]["train"]["samples"] += 1
    write_manifest(dataset)
    code, report = verify(dataset.root)
    assert code == 1
    found = problems(report)
    samples = dataset.manifest["splits"]["train"]["samples"]
    assert f"manifest.json: train: samples is {samples}, but there are {samples - 1} samples in its tars" in found
    assert any(p.startswith("manifest.json: train: read ") for p in found), report  # reconcile()'s rule


def test_an_edited_shard_count_and_dali_index_are_named(dataset):
    entry = next(s for s in dataset.manifest["splits"]["val"]["shards"] if s["samples"])
    entry["samples"] -= 1
    write_manifest(dataset)
    idx = dataset.path(entry["path"][:-len(".tar")] + ".idx")
    idx.write_text(idx.read_text().replace("\njpg ", "\njpeg ", 1))
    code, report = verify(dataset.root)
    assert code == 1
    found = problems(report)
    assert f"{entry['path']}: {entry['samples'] + 1} samples, but the manifest says {entry['samples']}" in found
    assert any(p.startswith(f"{entry['path'][:-len('.tar')]}.idx: does not match its tar's members") for p in found)
    assert "val.wids.json: does not agree with the manifest's shards and counts" in found


def test_a_stray_index_file_in_a_split_folder_is_named(dataset):
    index = dataset.manifest["splits"]["test"]["index"][0]
    shutil.copy(dataset.path(index), dataset.path("test/test-extra.parquet"))
    code, report = verify(dataset.root)
    assert code == 1
    assert problems(report) == ["test/test-extra.parquet: not listed in the manifest, but a glob of the split's "
                                "files would read it"], report


def test_a_duplicated_key_in_one_split_is_named_with_both_shards(dataset):
    taken = referenced(dataset)
    rows = rows_of(dataset, "train")  # a train image under the key of a train image in another shard
    old = next(r for r in rows if r["key"] not in taken)
    other = next(r for r in rows if r["shard"] != old["shard"])
    rename_key(dataset, old["shard"], old["key"], other["key"])
    code, report = verify(dataset.root)
    assert code == 1
    first, second = sorted([old["shard"], other["shard"]])
    assert problems(report) == [f"{second}: {other['key']}: a duplicated key: {first} has it too"], report


def test_a_key_in_two_splits_is_not_a_problem(dataset):
    """An ImageFolder's train/dog/001.jpg and val/dog/001.jpg are both dog_001: readers address a
    sample by its split and key."""
    taken = referenced(dataset)
    old = next(r for r in rows_of(dataset, "test") if r["key"] not in taken)  # a test image under a val key
    rename_key(dataset, old["shard"], old["key"], rows_of(dataset, "val")[0]["key"])
    code, report = verify(dataset.root)
    assert code == 0, report


@pytest.mark.e2e
def test_the_command_line_verifies_and_reports_a_deleted_shard(dataset):
    """`imagenet-shards verify OUT` and `imagenet-shards report OUT` through the console entry point."""
    command = [sys.executable, "-m", "pipeline"]
    proc = subprocess.run([*command, "verify", str(dataset.root), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0 and "verify: OK" in proc.stderr, proc.stderr
    proc = subprocess.run([*command, "report", str(dataset.root)], capture_output=True, text=True)
    assert proc.returncode == 0 and (dataset.out / "report.html").stat().st_size > 10_000, proc.stderr
    shard = next(s for s in dataset.manifest["splits"]["val"]["shards"] if s["samples"])["path"]
    dataset.path(shard).unlink()
    proc = subprocess.run([*command, "verify", str(dataset.root), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 1 and f"problem: {shard}: " in proc.stderr, proc.stderr
    proc = subprocess.run([*command, "verify", str(dataset.root / "nothing-here")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr


# --- s3:// ---------------------------------------------------------------------------------------

def test_a_dataset_on_s3_verifies_and_a_deleted_shard_is_named(built):
    with s3_server_for_this_process() as server:
        base, latest = f"{server.bucket}/verify", (built.root / "LATEST").read_text().strip()
        server.fs.put(str(built.out), f"{base}/{latest}", recursive=True)  # in one batch: a file at a time is slow
        server.fs.put([str(built.root / "LATEST"), str(built.root / "_info.json")], f"{base}/")
        code, report = verify(f"s3://{base}")
        assert code == 0, report
        assert f"verifying s3://{base}/{latest} (the version that LATEST names)" in report
        assert f"s3://{base}/_info.json" in report  # timm's copy at the root, checked too
        shard = next(s for s in built.manifest["splits"]["val"]["shards"] if s["samples"])["path"]
        server.fs.rm(f"{base}/{latest}/{shard}")
        code, report = verify(f"s3://{base}")
        assert code == 1
        assert problems(report) == [f"{shard}: missing"], report
