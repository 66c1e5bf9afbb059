"""`imagenet-shards verify OUT`: check a finished build, file by file, against its manifest.

    add_verify_arguments(parser)             # OUT, --workers, --sample N, --seed S, --no-progress
    code = run_verify(args, say, terminal)   # 0: all holds, 1: a problem was found, 2: OUT holds no dataset

OUT is a dataset root (the version that LATEST names is checked), a version folder or an output of an
earlier release, local or an fsspec URL. The files are hashed against the manifest; each tar is read
once, front to back, by Python's tarfile (not by the writer's code), and its samples are checked against
its index file's rows; the images must decode (all, or a seeded draw: --sample N); keys must be unique in each split;
the counts must reconcile by the manifest's own rule (transforms.manifest.reconcile) and with the tars,
the index files and the rejects tables; and the files of other readers (DALI, wids, timm) must agree.
Shards are checked by a pool of threads, one shard a task (hashing, reading and decoding release the
GIL). Each function says what it checks; a problem names the file (relative to the version) and the key.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import json
import os
import posixpath
import random
import tarfile
import threading
import time
from typing import IO, Callable, Iterator, Optional

import fsspec
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from pipeline.versions import LATEST_NAME, DatasetRoot, current_version
from transforms.layout import MANIFEST_NAME, TIMM_INFO_NAME
from transforms.manifest import FORMAT, reconcile
from transforms.reader_files import DALI_INDEX_VERSION, timm_info, wids_index
from transforms.schema import table_from_parquet_bytes
from transforms.storage import open_input

__all__ = ["Problem", "Problems", "ShardJob", "ShardResult", "add_verify_arguments", "run_verify", "check_shard"]

MEMBERS = ("jpg", "cls", "json")  # what every sample holds, in the order of the writer (transforms/shard_writer.py)
JSON_FIELDS = ("key", "label", "offset", "size")  # the fields of a sample's .json compared with its index row
COLUMNS = ("key", "split", "shard", "offset", "size", "label", "width", "height", "reencoded", "sha256",
           "duplicate_of", "near_duplicate_of", "has_boxes", "boxes", "label_disagrees")
INDEX_COUNTS = ("duplicates", "near_duplicates", "with_boxes", "boxes", "label_disagreements")
SHOWN_PER_FILE = 20  # the problems listed for one file; the report counts the others
READ_BLOCK = 1 << 16  # tarfile copies its buffer on every read: 64 KiB was the fastest of 10 KiB to 1 MiB


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    """One thing that does not hold: the file (relative to the version), the key it concerns, what is wrong."""
    path: str
    key: str
    text: str


class Problems(list):
    """The problems found so far."""

    def add(self, path: str, text: str, key: str = "") -> None:
        self.append(Problem(path, key, text))


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `imagenet-shards verify`."""
    parser.add_argument("out", metavar="OUT", help="the dataset root or a version folder (a path or fsspec URL)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="shards checked at once (default: the CPU count)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="decode N images drawn at random (default: every image)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the draw of --sample (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard to check: its manifest entry, its index file's, and which of its samples to decode."""
    split: str
    shard: dict  # path, samples, bytes, sha256
    index: dict  # path; also rows, bytes and sha256 where the manifest has index_files
    decode: Optional[frozenset]  # the ordinals (in tar order) of the samples to decode; None: every one
    dali: bool  # the build writes DALI indexes (its manifest lists reader files)


@dataclasses.dataclass
class ShardResult:
    """What the check of one shard found."""
    problems: Problems
    keys: list  # the shard's keys in tar order (the index's where the tar is missing)
    tar_samples: Optional[int] = None  # None: the tar is missing or unreadable
    read: int = 0  # the samples read from the tar (up to the damage in an unreadable one)
    rows: Optional[int] = None  # None: the index file is missing or unreadable
    decoded: int = 0
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # INDEX_COUNTS


class HashingReader:
    """A file read front to back, hashed and counted as it is read."""

    def __init__(self, f: IO[bytes], on_read: Callable[[int], None]):
        self._f, self._on_read, self.sha256, self.size = f, on_read, hashlib.sha256(), 0
        self.unreadable = False  # set when the file is not a readable tar

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        self._on_read(len(data))
        return data


def _read_file(url: str) -> bytes:
    """The bytes of a whole file (a path or an fsspec URL)."""
    with fsspec.open(url, "rb") as f:
        return f.read()


def _check_digest(path: str, entry: dict, size: int, digest: str, problems: Problems) -> None:
    """Compare a file's size and sha256 with those of its manifest entry, where it has them."""
    if "bytes" in entry and size != entry["bytes"]:
        problems.add(path, f"{size:,} bytes, but the manifest says {entry['bytes']:,}")
    if "sha256" in entry and digest != entry["sha256"]:
        problems.add(path, f"sha256 {digest[:16]}... is not the manifest's {entry['sha256'][:16]}...")


def _index_rows(root: str, job: ShardJob, result: ShardResult) -> dict:
    """{key: row (COLUMNS)} of the shard's index file, which is hashed, and its rows checked and counted."""
    path, problems = job.index["path"], result.problems
    try:
        data = _read_file(posixpath.join(root, path))
        _check_digest(path, job.index, len(data), hashlib.sha256(data).hexdigest(), problems)
        table = table_from_parquet_bytes(data)
    except (pa.ArrowException, OSError) as e:  # a FileNotFoundError is an OSError
        problems.add(path, "missing" if isinstance(e, FileNotFoundError) else f"not a readable Parquet file ({e})")
        return {}
    if table.num_rows != job.index.get("rows", table.num_rows):
        problems.add(path, f"{table.num_rows} rows, but the manifest says {job.index['rows']}")
    by_key: dict = {}
    for row in table.select([c for c in COLUMNS if c in table.column_names]).to_pylist():
        if row["key"] in by_key:
            problems.add(path, "twice in the index file", row["key"])
        by_key[row["key"]] = row
        if (row.get("split"), row.get("shard")) != (job.split, job.shard["path"]):
            problems.add(path, f"the row names split {row.get('split')} and shard {row.get('shard')}", row["key"])
        result.counts.update(duplicates=row.get("duplicate_of") is not None,
                             near_duplicates=row.get("near_duplicate_of") is not None,
                             with_boxes=bool(row.get("has_boxes")), boxes=len(row.get("boxes") or ()),
                             label_disagreements=bool(row.get("label_disagrees")))
    result.rows = table.num_rows
    return by_key


def _tar_members(reader: HashingReader, path: str, problems: Problems) -> Iterator[tuple]:
    """(name, payload offset, size, data) of each member of a tar read as a stream, in tar order. What
    follows the end of the archive is read too, so that the digest covers the whole file."""
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=READ_BLOCK) as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header it reads; none is needed again
                if not member.isfile():
                    problems.add(path, "a tar member that is not a file", member.name)
                    continue
                yield member.name, member.offset_data, member.size, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as e:
        problems.add(path, f"not a readable tar ({e})")
        reader.unreadable = True
    while reader.read(READ_BLOCK):
        pass


def _check_sample(path: str, key: str, members: dict, row: Optional[dict], decode: bool, problems: Problems) -> bool:
    """Check one sample of a tar ({extension: (offset, size, data)}) against its index row (None: the
    index does not have it); returns whether its .jpg was decoded."""
    if sorted(members) != sorted(MEMBERS):
        problems.add(path, f"the members {', '.join('.' + m for m in sorted(members))} (a sample holds .jpg, .cls "
                           "and .json)", key)
    (offset, size, jpg), (_, _, cls), (_, _, meta) = (members.get(m, (None, None, None)) for m in MEMBERS)
    if row is not None:
        if jpg is not None and (offset, size) != (row["offset"], row["size"]):
            problems.add(path, f"the index says offset {row['offset']} and size {row['size']}, but the tar's .jpg "
                               f"lies at offset {offset} with size {size}", key)
        if jpg is not None and row.get("reencoded") is False and hashlib.sha256(jpg).hexdigest() != row["sha256"]:
            problems.add(path, "the .jpg was stored byte for byte, but it does not have the source's sha256", key)
        if cls is not None and cls.strip() != str(row["label"]).encode():
            problems.add(path, f"the .cls holds {cls[:20]!r}, but the index says label {row['label']}", key)
        try:
            agrees = meta is None or [json.loads(meta).get(f) for f in JSON_FIELDS] == [row[f] for f in JSON_FIELDS]
        except (ValueError, AttributeError):
            agrees = False
        if not agrees:
            problems.add(path, f"the .json does not agree with the index's {', '.join(JSON_FIELDS)}", key)
    if not decode or jpg is None:
        return False
    try:
        with Image.open(io.BytesIO(jpg)) as image:
            image.load()
            found = (image.format, image.mode, image.size)
        if row is not None and found != ("JPEG", "RGB", (row["width"], row["height"])):
            problems.add(path, f"the .jpg decodes to {found[0]} {found[1]} {found[2][0]}x{found[2][1]}, but the "
                               f"index says JPEG RGB {row['width']}x{row['height']}", key)
    except Exception as e:  # whatever PIL raises, the image does not decode
        problems.add(path, f"the .jpg does not decode ({type(e).__name__}: {e})", key)
    return True


def check_shard(root: str, job: ShardJob, on_read: Callable[[int], None]) -> ShardResult:
    """Check one shard, its index file and its DALI index (see the module's docstring); on_read(n) is
    told of each read of the tar."""
    path, result = job.shard["path"], ShardResult(Problems(), [])
    problems, by_key, dali = result.problems, _index_rows(root, job, result), []  # dali: the tar's DALI index lines
    try:
        with open_input(posixpath.join(root, path)) as f:
            reader = HashingReader(f, on_read)
            members = _tar_members(reader, path, problems)
            for ordinal, (key, group) in enumerate(itertools.groupby(members, lambda m: m[0].partition(".")[0])):
                found = {name.partition(".")[2]: (offset, size, data) for name, offset, size, data in group}
                dali.append(" ".join(f"{ext} {o} {s} {key}.{ext}" for ext, (o, s, _) in found.items()))
                if key not in by_key and result.rows is not None:
                    problems.add(path, "in the tar, but not in the index", key)
                decode = job.decode is None or ordinal in job.decode
                result.decoded += _check_sample(path, key, found, by_key.get(key), decode, problems)
                result.keys.append(key)
    except FileNotFoundError:
        problems.add(path, "missing")
        result.keys = list(by_key)
        return result
    _check_digest(path, job.shard, reader.size, reader.sha256.hexdigest(), problems)
    result.read = len(result.keys)
    if reader.unreadable:  # its samples, and the DALI index's, are not known
        return result
    result.tar_samples = len(result.keys)
    if result.tar_samples != job.shard.get("samples"):
        problems.add(path, f"{result.tar_samples} samples, but the manifest says {job.shard.get('samples')}")
    problems += [Problem(path, key, "in the index, but not in the tar") for key in by_key.keys() - set(result.keys)]
    if job.dali and dali:
        idx = path[:-len(".tar")] + ".idx"
        try:
            if _read_file(posixpath.join(root, idx)).decode("utf-8", "replace").splitlines() != \
                    [f"{DALI_INDEX_VERSION} {len(dali)}", *dali]:
                problems.add(idx, "does not match its tar's members (what DALI's wds2idx writes for the tar)")
        except FileNotFoundError:
            problems.add(idx, "missing (the shard's DALI index)")
    return result


def shard_jobs(manifest: dict, sample: Optional[int], seed: int, problems: Problems) -> list:
    """The shards of every split with their index files, and the draw of the images to decode."""
    jobs = []
    for split, entry in sorted(manifest["splits"].items()):
        index = {i["path"]: i for i in entry.get("index_files") or [{"path": p} for p in entry["index"]]}
        for shard in entry["shards"]:
            path = shard["path"][:-len(".tar")] + ".parquet"
            jobs.append(ShardJob(split, shard, index.pop(path, {"path": path}), None, "reader_files" in manifest))
        for path in index:
            problems.add(path, "listed in the manifest, but for no shard of its name")
    if sample is not None:
        sizes = [job.shard["samples"] for job in jobs]
        drawn = random.Random(seed).sample(range(sum(sizes)), min(max(sample, 0), sum(sizes)))
        starts = itertools.accumulate(sizes, initial=0)
        jobs = [dataclasses.replace(job, decode=frozenset(d - start for d in drawn if start <= d < start + n))
                for job, start, n in zip(jobs, starts, sizes)]
    return jobs


def _check_counts(root: str, manifest: dict, jobs: list, results: list, problems: Problems) -> None:
    """Keys unique in each split, and the manifest's counts against the tars, the index files and the
    rejects tables. (A key may repeat across splits: an ImageFolder's train/dog/001.jpg and
    val/dog/001.jpg are both dog_001, and readers address a sample by split and key.) A count that a
    missing or unreadable file leaves unknown is not compared: that file is reported already."""
    where: dict = {}
    for job, result in zip(jobs, results):
        for key in result.keys:
            if (job.split, key) in where:
                problems.add(job.shard["path"], f"a duplicated key: {where[job.split, key]} has it too", key)
            where.setdefault((job.split, key), job.shard["path"])
    for text in reconcile(manifest):
        problems.add(MANIFEST_NAME, text)
    found: dict = collections.defaultdict(collections.Counter)
    unknown: dict = collections.defaultdict(set)
    for job, result in zip(jobs, results):
        found[job.split].update(result.counts, bytes=job.shard["bytes"], tar=result.tar_samples or 0,
                                rows=result.rows or 0)
        unknown[job.split] |= ({"tar"} if result.tar_samples is None else set()) | \
            ({"rows", *INDEX_COUNTS} if result.rows is None else set())
    rejects: dict = collections.defaultdict(collections.Counter)
    for path in manifest.get("rejects", []):
        try:
            table = table_from_parquet_bytes(_read_file(posixpath.join(root, path)))
            for split, reason in zip(table.column("split").to_pylist(), table.column("reason").to_pylist()):
                rejects[split][reason] += 1
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as e:
            problems.add(path, f"not readable ({type(e).__name__}: {e})")
    for split, entry in sorted(manifest["splits"].items()):
        checks = [("samples", "tar", "samples in its tars"), ("samples", "rows", "rows in its index files"),
                  ("bytes", "bytes", "bytes in its shards' entries")]
        checks += [(name, name, f"{name} in its index files") for name in INDEX_COUNTS if name in entry]
        for field, kind, what in checks:
            if kind not in unknown[split] and entry.get(field) != found[split][kind]:
                problems.add(MANIFEST_NAME, f"{split}: {field} is {entry.get(field)}, but there are "
                                            f"{found[split][kind]} {what}")
        if (entry.get("rejected"), entry.get("rejects_by_reason", {})) != (rejects[split].total(), rejects[split]):
            problems.add(MANIFEST_NAME, f"{split}: rejected {entry.get('rejected')} {entry.get('rejects_by_reason')}, "
                                        f"but its rejects table holds {rejects[split].total()} {dict(rejects[split])}")


def _check_other_files(root: str, manifest: dict, out: str, latest: Optional[str], problems: Problems) -> list:
    """The wids indexes and timm's _info.json against the manifest, near-duplicates.parquet's digest, and
    the split folders' listings against the manifest; returns the files checked."""
    readers, near = manifest.get("reader_files") or {}, manifest.get("near_duplicates") or {}
    files: list = [(p, posixpath.join(root, p), wids_index(manifest, s))
                   for s, p in sorted((readers.get("wids") or {}).items())]
    if readers.get("timm"):
        files.append((readers["timm"], posixpath.join(root, readers["timm"]), timm_info(manifest)))
    if latest is not None and DatasetRoot(out).exists(TIMM_INFO_NAME):  # timm's copy for the version LATEST names
        url = posixpath.join(out, TIMM_INFO_NAME)
        files.append((url, url, timm_info(manifest, prefix=f"{latest}/")))
    files += [(near["path"], posixpath.join(root, near["path"]), None)] if near else []
    for path, url, document in files:
        try:
            data = _read_file(url)
            if document is None:
                _check_digest(path, near, len(data), hashlib.sha256(data).hexdigest(), problems)
            elif json.loads(data) != document:
                problems.add(path, "does not agree with the manifest's shards and counts")
        except (FileNotFoundError, ValueError) as e:
            problems.add(path, f"not readable ({type(e).__name__}: {e})")
    fs, base = fsspec.core.url_to_fs(root)
    listed = {p for s in manifest["splits"].values() for p in [*(x["path"] for x in s["shards"]), *s["index"]]}
    for split in sorted(manifest["splits"]):
        names = fs.ls(posixpath.join(base, split), detail=False) if fs.isdir(posixpath.join(base, split)) else []
        for relative in (f"{split}/{posixpath.basename(n.rstrip('/'))}" for n in names):
            if relative.endswith((".tar", ".parquet")) and relative not in listed:
                problems.add(relative, "not listed in the manifest, but a glob of the split's files would read it")
    return [path for path, _, _ in files]


def _run_jobs(root: str, jobs: list, args, terminal: IO[str]) -> list:
    """Check every shard on a pool of threads, with a progress bar of the bytes read (as the build's)."""
    interactive, lock = terminal.isatty(), threading.Lock()
    with tqdm(total=sum(job.shard["bytes"] for job in jobs), unit="B", unit_scale=True, desc="verify",
              file=terminal, dynamic_ncols=True, mininterval=0.5 if interactive else 15,
              disable=True if not args.progress else None if interactive else False) as bar:
        def on_read(n: int) -> None:
            with lock:
                bar.update(n)

        def checked(job: ShardJob) -> ShardResult:  # an error that stops one shard's check is its problem
            try:
                return check_shard(root, job, on_read)
            except Exception as e:  # the shard is named in the report; the other shards are still checked
                return ShardResult(Problems([Problem(job.shard["path"], "", f"not checked ({e!r})")]), [])

        with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
            return list(pool.map(checked, jobs))


def run_verify(args, say: Callable[[str], None], terminal: IO[str]) -> int:
    """Check OUT (args from add_verify_arguments), saying the report line by line; `terminal` shows the
    progress bar. Returns the exit status: 0 when every check holds, 1 when a problem was found, 2 when
    OUT holds no dataset (no manifest, or one that is not JSON or not a manifest of this tool)."""
    started, workers, problems = time.monotonic(), max(1, args.workers), Problems()
    try:
        latest = DatasetRoot(args.out).latest()
        root = current_version(args.out)
        manifest = json.loads(_read_file(posixpath.join(root, MANIFEST_NAME)))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"its {MANIFEST_NAME} is not a manifest of imagenet-shards (format {FORMAT})")
        jobs = shard_jobs(manifest, args.sample, args.seed, problems)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        say(f"imagenet-shards verify: {args.out} holds no usable dataset ({type(e).__name__}: {e})")
        return 2
    say(f"verifying {root}" + (f" (the version that {LATEST_NAME} names)" if latest else ""))
    results = _run_jobs(root, jobs, args, terminal)
    problems += [problem for result in results for problem in result.problems]
    _check_counts(root, manifest, jobs, results, problems)
    others = _check_other_files(root, manifest, args.out, latest, problems)
    samples, decoded = sum(r.read for r in results), sum(r.decoded for r in results)
    dali = sum(1 for job, r in zip(jobs, results) if job.dali and r.tar_samples)
    drawn = f" (--sample {args.sample}, --seed {args.seed})" if args.sample is not None else ""
    say(f"  {len(jobs)} shards ({sum(j.shard['bytes'] for j in jobs):,} bytes) and their index files hashed; "
        f"{samples:,} samples read from the tars and checked against the index; {decoded:,} images decoded{drawn}")
    say(f"  counts of {len(manifest['splits'])} splits reconciled with the tars, the index files and "
        f"{len(manifest.get('rejects', []))} rejects tables; {dali} DALI indexes checked against their tars; "
        f"also checked: {', '.join(others) or 'no other file'}")
    for path, group in itertools.groupby(sorted(set(problems)), key=lambda p: p.path):
        found = list(group)  # at most SHOWN_PER_FILE problems of a file are listed, and the others counted
        for problem in found[:SHOWN_PER_FILE]:
            say(f"problem: {path}: {problem.key + ': ' if problem.key else ''}{problem.text}")
        if len(found) > SHOWN_PER_FILE:
            say(f"problem: {path}: {len(found) - SHOWN_PER_FILE} more problems in this file")
    verdict = f"{len(set(problems))} problems" if problems else "OK, every check holds"
    say(f"verify: {verdict} ({time.monotonic() - started:.1f} s, {workers} workers)")
    return 1 if problems else 0
