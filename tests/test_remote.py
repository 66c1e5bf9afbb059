"""SOURCE and --out as s3:// URLs, against a real S3 API server on loopback (moto's server, through s3fs).

The build runs as the real command line in a subprocess, its Beam workers in further processes:
they all reach the server through the environment (tests/s3server.py). The server logs every
response it sends, which is how the archives are shown to be read by ranged GETs, never whole.
An http(s) SOURCE is built from a loopback HTTP server with byte ranges and directory listings
(benchmarks/range_server.py), which logs what it sends too.
"""
import hashlib
import io
import json
import os
import posixpath
import subprocess
import tarfile
import tempfile
import time

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import CLI, REPO, version_of
from s3server import s3_server_for_this_process

from benchmarks.range_server import RangeServer
from pipeline.lock import LOCK_NAME, LockLost, OutputLock
from pipeline.options import UsageError
from pipeline.versions import MARKER_NAME
from transforms.readahead import HEADER_BLOCK, SPARSE_BLOCK
from transforms.storage import UPLOAD_PART, atomic_write

pytestmark = [pytest.mark.e2e, pytest.mark.inputs]  # real builds through the command line

BUILD_OPTIONS = ["--no-progress", "--max-reject-rate", "0.5", "--shard-size", "120KB", "--direct_num_workers", "2"]
TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_img_test_v10102019.tar")


@pytest.fixture(scope="module")
def s3():
    """The server, with this process's environment and fsspec's config pointed at it for the module."""
    with s3_server_for_this_process() as server:
        yield server


def run_cli(s3, *args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, **s3.env, "PYTHONUNBUFFERED": "1"})


def check(proc, code=0):
    assert proc.returncode == code, f"exit {proc.returncode} != {code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def kept(release, split):
    return {k: e for k, e in release.expected[split].items() if e.outcome == "kept"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3_source(s3, release):
    """The release's files uploaded with s3fs: s3://BUCKET/src/<name>."""
    files = sorted(os.path.relpath(os.path.join(d, n), release.root)
                   for d, _, names in os.walk(release.root) for n in names)
    assert set(TARS) <= set(files)
    for name in files:
        s3.fs.put_file(os.path.join(release.root, name), f"{s3.bucket}/src/{name}")
    assert sorted(p[len(f"{s3.bucket}/src/"):] for p in s3.fs.find(f"{s3.bucket}/src")) == files
    return s3.url("src")


class RemoteBuild:
    def __init__(self, s3, url, proc, requests):
        self.fs = s3.fs
        self.url = url
        self.dataset = url[len("s3://"):]
        self.latest = self.fs.cat(f"{self.dataset}/LATEST").decode().strip()
        self.root = f"{self.dataset}/{self.latest}"  # the version LATEST names
        self.proc = proc
        self.requests = requests  # what the server sent during the build
        self.manifest = json.loads(self.fs.cat(f"{self.root}/manifest.json"))

    def path(self, relative):
        return f"{self.root}/{relative}"


@pytest.fixture(scope="module")
def s3_build(s3, s3_source):
    """s3:// SOURCE -> s3:// --out, with the server's log of the build."""
    s3.clear_log()
    out = s3.url("out")
    proc = check(run_cli(s3, "build", s3_source, "--out", out, *BUILD_OPTIONS))
    return RemoteBuild(s3, out, proc, s3.requests())


@pytest.fixture(scope="module")
def s3_shards(s3_build, tmp_path_factory):
    """{relative shard path: local copy} of every shard of the S3 build, fetched with s3fs."""
    local = tmp_path_factory.mktemp("s3-shards")
    copies = {}
    for _split, s in s3_build.manifest["splits"].items():
        for shard in s["shards"]:
            target = local / shard["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3_build.fs.get(s3_build.path(shard["path"]), str(target))
            copies[shard["path"]] = target
    return copies


def test_s3_to_s3_build_reads_back_with_webdataset_and_pyarrow(s3_build, s3_shards, release):
    m, fs = s3_build.manifest, s3_build.fs
    assert m["format"] == "imagenet-shards/1" and m["layout"] == "ilsvrc2012"
    assert {i["name"] for i in m["inputs"]} >= {*TARS, "ILSVRC2012_devkit_t12.tar.gz"}
    assert set(m["splits"]) == {"train", "val", "test"}
    assert len(m["splits"]["train"]["shards"]) > 3
    # Everything the manifest lists is in the bucket; no temporary file or progress folder is left there.
    listed = {s["path"] for sp in m["splits"].values() for s in sp["shards"]}
    listed |= {p for sp in m["splits"].values() for p in sp["index"]} | set(m["rejects"])
    listed |= {"manifest.json", MARKER_NAME}
    in_bucket = {p[len(s3_build.root) + 1:] for p in fs.find(s3_build.root)}
    assert listed <= in_bucket
    assert [p for p in in_bucket if any(part.startswith((".", "_")) and part != "_info.json" or "tmp" in part
                                        or part.endswith(".part") for part in p.split("/"))] == []

    for split, s in m["splits"].items():
        expected = release.expected[split]
        assert s["read"] == len(expected) == s["samples"] + s["rejected"], split
        # shards: the bytes in the bucket are the ones the manifest describes
        for shard in s["shards"]:
            data = s3_shards[shard["path"]].read_bytes()
            assert (len(data), sha256(data)) == (shard["bytes"], shard["sha256"]), shard["path"]
            assert fs.size(s3_build.path(shard["path"])) == shard["bytes"]
        # webdataset over the shards: every kept key once, with its label
        seen = {}
        urls = [str(s3_shards[shard["path"]]) for shard in s["shards"]]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in seen
            seen[sample["__key__"]] = int(sample["cls"])
            assert json.loads(sample["json"])["key"] == sample["__key__"]
        assert seen == {k: e.label for k, e in kept(release, split).items()}, split
        # the Parquet index, read by pyarrow through s3fs
        rows = pq.read_table([s3_build.path(p) for p in s["index"]], filesystem=fs).to_pylist()
        assert {r["key"]: r["label"] for r in rows} == seen
        assert len(rows) == len(seen)

    rejects = pq.read_table([s3_build.path(p) for p in m["rejects"]], filesystem=fs).to_pylist()
    assert {(r["split"], r["key"]): r["reason"] for r in rejects} == {
        (split, k): e.outcome for split, es in release.expected.items() for k, e in es.items() if e.outcome != "kept"}


def test_s3_index_offsets_point_at_the_jpeg_payloads_by_ranged_read(s3_build, s3_shards):
    for _split, s in s3_build.manifest["splits"].items():
        for row in pq.read_table([s3_build.path(p) for p in s["index"]], filesystem=s3_build.fs).to_pylist():
            # one seek and one read, on the object in the bucket
            with s3_build.fs.open(s3_build.path(row["shard"]), "rb", cache_type="none") as f:
                f.seek(row["offset"])
                payload = f.read(row["size"])
            with tarfile.open(s3_shards[row["shard"]]) as tar:
                assert tar.extractfile(f"{row['key']}.jpg").read() == payload, row["key"]
            assert payload[:2] == b"\xff\xd8"


def test_s3_source_gives_the_same_shards_as_a_local_build(s3, s3_source, s3_build, s3_shards, built, tmp_path):
    """s3:// -> local and s3:// -> s3:// are byte-identical to local -> local (conftest's `built`, same options)."""
    proc = check(run_cli(s3, "build", s3_source, "--out", tmp_path / "out", *BUILD_OPTIONS))
    local = version_of(tmp_path / "out")
    local_manifest = json.loads((local / "manifest.json").read_text())
    assert built.manifest["config"] == local_manifest["config"] == s3_build.manifest["config"], \
        "conftest's `built` no longer uses BUILD_OPTIONS: keep them in step"
    assert built.manifest["inputs"] == local_manifest["inputs"] == s3_build.manifest["inputs"]
    for split in built.manifest["splits"]:
        reference = built.manifest["splits"][split]["shards"]
        assert local_manifest["splits"][split]["shards"] == reference, split
        assert s3_build.manifest["splits"][split]["shards"] == reference, split
        for shard in reference:
            want = sha256(built.path(shard["path"]).read_bytes())
            assert sha256((local / shard["path"]).read_bytes()) == want, shard["path"]
            assert sha256(s3_shards[shard["path"]].read_bytes()) == want, shard["path"]
        for index in built.manifest["splits"][split]["index"]:
            assert (local / index).read_bytes() == built.path(index).read_bytes(), index
    assert "manifest:" in proc.stderr


def leaf_members(data: bytes) -> tuple:
    """(sizes of the files in a tar, looking inside the tars it holds (the train tar's class tars),
    the number of tars it holds)."""
    sizes, inner = [], 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isreg() and m.name.endswith(".tar"):
                inner += 1
                sizes += leaf_members(tar.extractfile(m).read())[0]
            elif m.isreg():
                sizes.append(m.size)
    return sizes, inner


def test_archives_are_read_by_ranged_gets_never_whole(s3_build, release):
    """Members are read ahead, several in one request where they lie next to each other in an
    archive; a tar's headers are read in blocks of HEADER_BLOCK (a class tar streamed once), a
    tar of tars' by a small request per class tar. So a request holds a block of headers or a few
    members, and never a whole archive, except that a flat tar no bigger than one block (the
    sample's val and test tars) is the one block its headers are read in."""
    gets = {}
    for r in s3_build.requests:
        if r.method == "GET" and r.key.startswith("src/"):
            gets.setdefault(posixpath.basename(r.key), []).append(r)
    assert set(gets) >= set(TARS)
    rows = [r for s in s3_build.manifest["splits"].values()
            for r in pq.read_table([s3_build.path(p) for p in s["index"]], filesystem=s3_build.fs).to_pylist()]
    for name in TARS:
        with open(os.path.join(release.root, name), "rb") as f:
            data = f.read()
        size, (members, class_tars) = len(data), leaf_members(data)
        requests = gets[name]
        for r in requests:
            # a bounded range, answered with exactly those bytes
            assert r.status == 206 and r.range and r.range.startswith("bytes="), (name, r)
            first, last = (int(x) for x in r.range[len("bytes="):].split("-"))
            assert r.sent == min(last + 1, size) - first, (name, r)
            assert r.sent <= HEADER_BLOCK, (name, r)
        whole = [r for r in requests if r.sent == size]
        assert len(whole) == (1 if not class_tars and size <= HEADER_BLOCK else 0), (name, whole)
        # In all: the headers' blocks (each class tar once, SPARSE_BLOCK a class tar for the outer
        # tar's headers) and the members, each about once: at least the images kept from it.
        total = sum(r.sent for r in requests)
        kept_bytes = sum(r["size"] for r in rows if r["source"].split("/")[0] == name and not r["reencoded"])
        assert kept_bytes <= total <= 2 * size + class_tars * SPARSE_BLOCK, (name, total, size)
        # a request per member at most, and a few for the headers (one block per tar here)
        header_requests = 2 * class_tars + 1
        assert len(members) / 2 < len(requests) <= len(members) + header_requests, (name, len(requests))


@pytest.mark.driver
def test_a_rebuild_of_unchanged_s3_inputs_is_up_to_date_and_writes_nothing(s3, s3_source, s3_build):
    before = {p: s3_build.fs.info(p)["ETag"] for p in s3_build.fs.find(s3_build.dataset)}
    proc = check(run_cli(s3, "build", s3_source, "--out", s3_build.url, *BUILD_OPTIONS))
    assert "up to date" in proc.stderr and s3_build.latest in proc.stderr
    s3_build.fs.invalidate_cache()
    assert {p: s3_build.fs.info(p)["ETag"] for p in s3_build.fs.find(s3_build.dataset)} == before


def test_pieces_staged_on_s3_assemble_into_the_same_shard(s3, tmp_path):
    """Runners that scale out stage shard pieces in OUT/_pieces: on an object store as on a disk."""
    import numpy as np
    from PIL import Image

    from transforms.assembly import write_shard
    from transforms.image import ImageOptions, ResizeSpec
    from transforms.layout import PIECES_DIR, OutputLayout
    from transforms.records import MemberRef, ShardTask
    from transforms.storage import ArchiveReader

    archive = tmp_path / "class.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(7):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"n01440764_{i}.JPEG")
            info.size = buf.tell()
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    with tarfile.open(archive) as tar:
        refs = [MemberRef(m.name[:-5], "train", str(archive), m.offset_data, m.size, 0, "n01440764", m.name)
                for m in tar]
    options = ImageOptions(resize=ResizeSpec.parse("shorter:24"))
    local = write_shard(ShardTask("train", 0), refs, options, OutputLayout(str(tmp_path / "local")), 0, ArchiveReader())
    remote_root = s3.url("pieces-out")
    s3.clear_log()
    remote = write_shard(ShardTask("train", 0), refs, options, OutputLayout(remote_root), 0, ArchiveReader(),
                         pieces=3)
    assert remote.shard == local.shard and remote.shard.samples == 7
    root = remote_root[len("s3://"):]
    assert s3.fs.cat(f"{root}/train/train-000000.tar") == (tmp_path / "local/train/train-000000.tar").read_bytes()
    local_index = (tmp_path / "local/train/train-000000.parquet").read_bytes()
    assert s3.fs.cat(f"{root}/train/train-000000.parquet") == local_index
    staged = {(r.method, r.key) for r in s3.requests() if f"/{PIECES_DIR}/" in r.key}
    pieces = {f"pieces-out/{PIECES_DIR}/train-000000-{i:05d}.pkl" for i in range(3)}
    assert {key for method, key in staged if method == "PUT"} == pieces  # the three pieces went to S3 ...
    assert not s3.fs.find(f"{root}/{PIECES_DIR}")  # ... and are gone


@pytest.mark.driver
def test_one_build_at_a_time_per_s3_out_with_a_lease_that_a_killed_build_cannot_hold(s3, s3_source):
    out = s3.url("locked")
    with OutputLock(out):  # a build is running
        proc = run_cli(s3, "build", s3_source, "--out", out, *BUILD_OPTIONS)
        assert proc.returncode == 2 and "another build is writing to --out" in proc.stderr, proc.stderr
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            OutputLock(out).__enter__()
    s3.fs.invalidate_cache()
    assert s3.fs.find(f"{s3.bucket}/locked") == []  # released: the lock object is gone

    # a build killed long ago: its lease (the lock object's "expires") has run out
    s3.fs.pipe(f"{s3.bucket}/locked/{LOCK_NAME}-000000001",
               json.dumps({"holder": "pid 7 on gone", "token": "t", "expires": time.time() - 1}).encode())
    with OutputLock(out) as taker:  # taken over
        taker.check()
        s3.fs.invalidate_cache()
        (lock,) = s3.fs.find(f"{s3.bucket}/locked")  # the stale lease is removed
        assert lock.endswith(f"{LOCK_NAME}-000000002")
        # a build that stalls past its lease while another takes the lock over publishes nothing
        s3.fs.pipe(f"{s3.bucket}/locked/{LOCK_NAME}-000000003",
                   json.dumps({"holder": "pid 8 on next", "token": "u", "expires": time.time() + 300}).encode())
        with pytest.raises(LockLost):
            taker.check()


@pytest.mark.driver
def test_a_lease_is_renewed_while_the_build_runs(s3):
    out = s3.url("renewed")
    with OutputLock(out, lease_seconds=0.6) as held:
        time.sleep(1.5)  # more than two leases: renewed every 0.2 s
        held.check()
        with pytest.raises(UsageError):
            OutputLock(out).__enter__()


@pytest.mark.driver
def test_a_rebuild_takes_the_tar_headers_from_the_cache_not_from_the_archive(s3, s3_source, release):
    out = s3.url("cached")

    def header_reads() -> list:  # the val tar's headers are read from its start (no payload starts there)
        return [r for r in s3.requests() if r.method == "GET" and r.key == "src/ILSVRC2012_img_val.tar"
                and r.range.startswith("bytes=0-")]

    s3.clear_log()
    check(run_cli(s3, "build", s3_source, "--out", out, *BUILD_OPTIONS, "--splits", "val"))
    assert header_reads()  # the headers' block (the sample's val tar is smaller than one)
    s3.fs.invalidate_cache()
    assert s3.fs.find(f"{s3.bucket}/cached/cache/tar-headers")  # kept beside the versions

    s3.clear_log()
    proc = check(run_cli(s3, "build", s3_source, "--out", out, *BUILD_OPTIONS, "--splits", "val", "--force"))
    assert header_reads() == [] and "published" in proc.stderr


def test_an_s3_output_is_streamed_as_a_multipart_upload_that_shows_only_once_complete(s3, monkeypatch):
    """atomic_write to S3: parts go to the store while the file is written (no local temporary
    copy), and the object appears only when the upload completes; on error it is aborted."""
    def no_local_copy(*args, **kwargs):
        raise AssertionError("a remote output must not be written to a local temporary file")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_local_copy)
    key = "streamed/train-000000.tar"
    part = bytes(range(256)) * (UPLOAD_PART // 256)
    s3.clear_log()
    with atomic_write(s3.url(key)) as f:
        for i in range(3):
            f.write(part[: len(part) - i])
        uploads = s3.fs.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads", [])
        assert [u["Key"] for u in uploads] == [key]  # the upload is under way ...
        assert [r for r in s3.requests() if r.method == "PUT" and "partNumber=" in r.query]  # ... parts sent
        s3.fs.invalidate_cache()
        assert not s3.fs.exists(f"{s3.bucket}/{key}")  # ... and a reader sees nothing yet
    s3.fs.invalidate_cache()
    assert s3.fs.cat(f"{s3.bucket}/{key}") == part + part[:-1] + part[:-2]
    puts = [r for r in s3.requests() if r.method == "PUT" and r.key == key and "partNumber=" in r.query]
    assert len(puts) >= 2  # a part each time UPLOAD_PART bytes were buffered, the rest on completion
    assert not s3.fs.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads")

    broken = "streamed/broken.tar"
    with pytest.raises(RuntimeError, match="the kernel failed"):
        with atomic_write(s3.url(broken)) as f:
            f.write(part * 2)
            raise RuntimeError("the kernel failed")
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(f"{s3.bucket}/{broken}")
    assert not s3.fs.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads")  # aborted
    with pytest.raises(ValueError):
        with atomic_write(s3.url("streamed/small.json")) as f:
            f.write(b"{}")  # smaller than a part: one PUT on success, none on error
            raise ValueError("stop")
    s3.fs.invalidate_cache()
    assert s3.fs.find(f"{s3.bucket}/streamed") == [f"{s3.bucket}/{key}"]


def test_an_http_source_with_a_directory_listing_builds_the_same_shards(release, built, tmp_path):
    """SOURCE as http://host/folder/ (an index page of links, as web servers list folders), read by
    byte ranges: the same shards as from local disk, a request per member or fewer."""
    with RangeServer(release.root) as server:
        proc = check(subprocess.run([*CLI, "build", server.url(), "--out", tmp_path / "out", *BUILD_OPTIONS],
                                    capture_output=True, text=True, timeout=300, cwd=REPO,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        served = server.requests()
    manifest = json.loads((version_of(tmp_path / "out") / "manifest.json").read_text())
    assert manifest["inputs"] == built.manifest["inputs"] and manifest["config"] == built.manifest["config"]
    for split, s in built.manifest["splits"].items():
        assert manifest["splits"][split]["shards"] == s["shards"], split
    assert "published" in proc.stderr

    archives = {posixpath.basename(p) for p in TARS}
    ranged = [r for r in served if r.method == "GET" and posixpath.basename(r.path) in archives]
    assert ranged and all(r.status == 206 and r.range for r in ranged)  # archives only by ranges
    whole = [r for r in served if r.method == "GET" and r.range is None and not r.path.endswith("/")]
    assert all(posixpath.basename(r.path) not in archives for r in whole), whole
    members = sum(s["read"] for s in manifest["splits"].values())
    with open(os.path.join(release.root, TARS[0]), "rb") as f:
        class_tars = leaf_members(f.read())[1]
    # a request per member or fewer; for the headers, one per class tar and one for the train tar's
    # list of them, and one block per flat tar (each is smaller than a block here)
    assert len(ranged) <= members + 2 * class_tars + len(TARS) - 1, (len(ranged), members)
