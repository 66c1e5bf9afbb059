"""The scale benchmark: what a build costs per sample outside the codecs, in memory and in time.

    python -m benchmarks.scale [--samples 50000,200000,1000000] [--out bench-out/scale]     (make bench-scale)

For each N, a release in the official layout is generated once and kept under OUT/corpus-N/ (a
train tar of 1,000 per-class tars and a flat val tar of 2% of the samples, with the devkit), of N
tiny unique JPEGs: 64 x 64 baseline RGB JPEGs that the build keeps byte for byte, so that the
codecs cost little (about 60 us an image) and what is measured is the bookkeeping around them
(indexing, planning, shuffles, tar, Parquet, the duplicate searches, the manifest). Each corpus is
then built with the tool's defaults through its command line (`python -m pipeline build SOURCE
--out OUT`, in a fresh OUT), while the RSS of the whole process tree (the driver and the local
runner's workers) and of its largest process is sampled every 0.2 s.

It prints, for each N: the wall time, samples per second, the peak RSS of the tree and of its largest
process (and which process that was); then, between each pair of consecutive sizes, the slopes (KB
per sample of the tree and of the largest process, and seconds per sample) and their projection to
ImageNet-21k's 14.2M samples. The figures go to OUT/scale.json, and the memory of every process at
every second of each build to OUT/timeline-N.csv (to tell the driver's growth from the workers').

How the images are made (`tiny_jpeg`): a 64 x 64 image is 8 x 8 blocks of 8 x 8 pixels, each block
flat and grey, encoded with a restart marker after each row of blocks. A row's entropy-coded bytes
then decode on their own (the DC prediction restarts at each marker), so 256 rows are encoded once,
with PIL, and sample i is the fixed header, then 8 of those rows chosen by the bytes of a bijective
mix of i, with the restart markers between them: a valid JPEG whose pixels are unique to i, made by
joining bytes (about 2 us). The images are 64 pixels wide, not 16, because the perceptual hash of
a JPEG kept byte for byte comes from its 1/8 decode: 8 x 8 values spread the hashes as photos'
hashes are spread (a mean distance of 31.6 bits between neighbours, none closer than 16 over 5,000
samples), where the 2 x 2 values of a 16 x 16 image would make near-duplicates of nearly every
sample, which real datasets do not have.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from typing import Optional

import numpy as np
from PIL import Image

from benchmarks.output_digests import digests
from benchmarks.procmem import MemoryPeak, TreeMemorySampler, process_tree, rss_bytes
from benchmarks.runs import warm_page_cache
from benchmarks.settings import IMAGENET_21K, GiB
from pipeline.sample import (
    DEVKIT_TAR,
    TRAIN_TAR,
    VAL_TAR,
    Member,
    choose_classes_and_val,
    devkit_bytes,
    tar_bytes,
    tar_info,
    write_tar,
)
from pipeline.versions import current_version, read_manifest
from transforms.keys import val_key
from transforms.storage import atomic_write

__all__ = ["GENERATOR_VERSION", "TARGETS", "tiny_jpeg", "ScaleCorpus", "ensure_scale_corpus", "ScaleRun", "build_once",
           "slopes", "main"]

# Bump it when the images or the layout the generator writes change: the cache key includes it.
GENERATOR_VERSION = 1
CLASSES = 1000  # ImageNet-1k's classes: the official layout labels by them
VAL_SHARE = 0.02  # the share of the samples in the flat val tar (at most the devkit's 50,000)
MiB = 1 << 20

# The targets (issue 12, "ImageNet-21k on one machine").
TARGETS = {
    "tree_slope_kb": 0.4,  # KB a sample of the whole tree's peak RSS, between 200k and 1M samples
    "largest_at_1m": 1 * GiB,  # the largest process's peak RSS at 1M samples
    "projected_21k": 8 * GiB,  # the tree's peak projected to ImageNet-21k
    "samples_per_s": 10_000,  # on 2 cores
}

_SIDE = 64
_ROWS = _SIDE // 8  # rows of 8 x 8 blocks, one restart interval each
_VARIANTS = 256  # encoded rows to choose from: one byte of the sample's mix picks each row
_MIX = 0x9E3779B97F4A7C15  # odd, so i -> i * _MIX mod 2**64 is a bijection
_MASK = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class _RowTable:
    header: bytes  # everything before the entropy-coded data, the same for every image
    rows: tuple  # _VARIANTS rows' entropy-coded bytes, each decodable on its own


def _encode_rows(seed: int) -> _RowTable:
    """Encode _VARIANTS distinct rows of flat blocks, _ROWS at a time, and cut them out."""
    rng = np.random.default_rng(seed)
    header: Optional[bytes] = None
    rows: list[bytes] = []
    while len(rows) < _VARIANTS:
        levels = rng.integers(24, 232, (_ROWS, _ROWS), dtype=np.uint8)  # clear of clipping at 0 and 255
        grey = np.kron(levels, np.ones((8, 8), np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB").save(buffer, "JPEG", quality=90, subsampling=0,
                                                                     restart_marker_rows=1)
        data = buffer.getvalue()
        sos = data.index(b"\xff\xda")
        start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
        header = header or data[:start]
        if data[:start] != header or data[-2:] != b"\xff\xd9":
            raise RuntimeError("the encoder did not give every image the same header")
        scan, at = data[start:-2], 0
        for k in range(_ROWS - 1):
            end = scan.index(bytes([0xFF, 0xD0 + k]), at)
            rows.append(scan[at:end])
            at = end + 2
        rows.append(scan[at:])
    if len(set(rows)) != len(rows) or header is None:
        raise RuntimeError("two encoded rows are the same")
    return _RowTable(header, tuple(rows[:_VARIANTS]))


_TABLE: Optional[_RowTable] = None
_MARKERS = [bytes([0xFF, 0xD0 + k]) for k in range(_ROWS - 1)]


def tiny_jpeg(i: int) -> bytes:
    """A 64 x 64 baseline RGB JPEG whose pixels are unique to i (0 <= i < 2**64); see the module
    docstring."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _encode_rows(0)
    rows = _TABLE.rows
    x = (i * _MIX) & _MASK
    parts = [_TABLE.header]
    for k in range(_ROWS):
        parts.append(rows[(x >> (8 * k)) & 0xFF])
        if k < _ROWS - 1:
            parts.append(_MARKERS[k])
    parts.append(b"\xff\xd9")
    return b"".join(parts)


@dataclasses.dataclass(frozen=True)
class ScaleCorpus:
    """The size of a generated release."""

    samples: int
    classes: int = CLASSES

    @property
    def val(self) -> int:
        return min(50_000, int(self.samples * VAL_SHARE))

    @property
    def train(self) -> int:
        return self.samples - self.val

    @property
    def key(self) -> str:
        return f"corpus-{self.samples}-classes{self.classes}-gen{GENERATOR_VERSION}"


def _class_tar(job: tuple[str, int, int]) -> bytes:
    """The bytes of one class tar: `count` samples numbered from `first`."""
    wnid, first, count = job
    return tar_bytes([Member(f"{wnid}_{i}.JPEG", "", "tiny", tiny_jpeg(i)) for i in range(first, first + count)])


def _write_corpus(spec: ScaleCorpus, dest: str, processes: int) -> None:
    chosen = choose_classes_and_val(spec.classes, spec.val)
    classes = sorted(chosen.classes)
    per_class = [spec.train // spec.classes + (c < spec.train % spec.classes) for c in range(spec.classes)]
    firsts = np.concatenate([[0], np.cumsum(per_class)[:-1]]).tolist()
    jobs = [(wnid, int(first), count) for wnid, first, count in zip(classes, firsts, per_class)]
    with (multiprocessing.Pool(processes) as pool,
          atomic_write(os.path.join(dest, TRAIN_TAR)) as f,
          tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as outer):
        for (wnid, _, _), inner in zip(jobs, pool.imap(_class_tar, jobs, chunksize=4)):
            outer.addfile(tar_info(f"{wnid}.tar", len(inner)), io.BytesIO(inner))
    val = [Member(f"{val_key(slot.index)}.JPEG", "", "tiny", tiny_jpeg(spec.train + n))
           for n, slot in enumerate(chosen.val)]
    with atomic_write(os.path.join(dest, VAL_TAR)) as f:
        write_tar(f, val)
    with atomic_write(os.path.join(dest, DEVKIT_TAR)) as f:
        f.write(devkit_bytes(classes))


def ensure_scale_corpus(spec: ScaleCorpus, root: str, processes: Optional[int] = None, say=print) -> str:
    """The release's folder for `spec`, written once (then reused)."""
    folder = os.path.join(root, spec.key)
    marker = os.path.join(folder, "corpus.json")
    if os.path.exists(marker):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    say(f"writing {spec.samples:,} tiny JPEGs ({spec.train:,} train in {spec.classes} class tars, {spec.val:,} val) "
        f"to {folder} ...")
    started = time.perf_counter()
    _write_corpus(spec, folder, processes or os.cpu_count() or 1)
    seconds = time.perf_counter() - started
    with open(marker, "w") as f:
        json.dump({**dataclasses.asdict(spec), "generator": GENERATOR_VERSION, "seconds": round(seconds, 1)}, f)
    say(f"  written in {seconds:.1f} s")
    return folder


class _Timeline:
    """Every second, the RSS of each process of the tree (a thread; a context manager)."""

    def __init__(self, root: int, path: str, interval: float = 1.0):
        self._root, self._path, self._interval = root, path, interval
        self._stop = threading.Event()
        self._rows: list[tuple] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.wait(self._interval):
            pids = process_tree(self._root)
            sizes = [rss_bytes(pid) for pid in pids]
            self._rows.append((round(time.perf_counter() - started, 1), sum(sizes) // MiB,
                               " ".join(f"{pid}:{size // MiB}" for pid, size in zip(pids, sizes) if size)))

    def __enter__(self) -> _Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with open(self._path, "w", newline="") as f:
            csv.writer(f).writerows([("seconds", "tree_mib", "pid:mib (the driver first)"), *self._rows])


@dataclasses.dataclass
class ScaleRun:
    """One build of one corpus."""

    samples: int  # the samples the build wrote (from its manifest)
    exit_code: int
    wall_s: float
    cpu_s: float
    memory: MemoryPeak
    log: str

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict:
        return {"samples": self.samples, "exit_code": self.exit_code, "wall_s": round(self.wall_s, 2),
                "cpu_s": round(self.cpu_s, 2), "samples_per_s": round(self.samples_per_s),
                "tree_mib": round(self.memory.tree_rss / MiB), "largest_mib": round(self.memory.process_rss / MiB),
                "largest_is_driver": self.memory.process_rss == self.memory.root_rss,
                "driver_mib": round(self.memory.root_rss / MiB), "worker_mib": round(self.memory.worker_rss / MiB),
                "memory": self.memory.as_dict(), "log": self.log}


def build_once(source: str, out: str, log: str, timeline: str, extra: tuple = ()) -> ScaleRun:
    """A build of `source` with the tool's defaults into a fresh `out`, its tree's memory sampled
    every 0.2 s (and every second per process, into `timeline`)."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh OUT: no header cache, no earlier version
    warm_page_cache(source)
    cmd = [sys.executable, "-m", "pipeline", "build", source, "--out", out, "--no-progress", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as output:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
        with TreeMemorySampler(proc.pid, interval=0.2) as sampler, _Timeline(proc.pid, timeline):
            code = proc.wait()
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    samples = 0
    if code == 0:
        manifest = read_manifest(current_version(out))
        samples = sum(s["samples"] for s in manifest["splits"].values())
    return ScaleRun(samples, code, wall, cpu, sampler.peak, log)


def _digests(root: str) -> dict:
    """benchmarks/output_digests.py's digests, with the manifest's `fingerprint` left out too: it
    holds a digest of the tool's own code, which differs between the two versions compared."""
    found = digests(root)
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    for field in ("created", "version", "previous", "diff", "fingerprint"):
        manifest.pop(field, None)
    found["manifest.json"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return found


def slopes(a: ScaleRun, b: ScaleRun) -> dict:
    """The growth per sample from build `a` to the bigger build `b`, and its projection to ImageNet-21k."""
    n = b.samples - a.samples
    tree = (b.memory.tree_rss - a.memory.tree_rss) / n
    largest = (b.memory.process_rss - a.memory.process_rss) / n
    seconds = (b.wall_s - a.wall_s) / n
    return {"from": a.samples, "to": b.samples, "tree_kb": round(tree / 1000, 3),
            "largest_kb": round(largest / 1000, 3),
            "marginal_samples_per_s": round(1 / seconds) if seconds > 0 else None,
            "projected_21k_tree_gib": round((b.memory.tree_rss + tree * (IMAGENET_21K - b.samples)) / GiB, 2),
            "projected_21k_largest_gib": round((b.memory.process_rss + largest * (IMAGENET_21K - b.samples)) / GiB, 2),
            "projected_21k_hours": round((b.wall_s + seconds * (IMAGENET_21K - b.samples)) / 3600, 2)}


def _print_report(runs: list[ScaleRun], steps: list[dict]) -> None:
    print(f"\n{'samples':>10} {'wall s':>8} {'samples/s':>10} {'tree MiB':>9} {'largest MiB':>12}  largest is")
    for r in runs:
        who = "the driver" if r.memory.process_rss == r.memory.root_rss else "a worker"
        print(f"{r.samples:>10,} {r.wall_s:>8.1f} {r.samples_per_s:>10,.0f} {r.memory.tree_rss / MiB:>9,.0f} "
              f"{r.memory.process_rss / MiB:>12,.0f}  {who}")
    for s in steps:
        rate = f"{s['marginal_samples_per_s']:,} samples/s" if s["marginal_samples_per_s"] else "n/a"
        print(f"{s['from']:,} -> {s['to']:,}: tree {s['tree_kb']:.3f} KB/sample, largest process "
              f"{s['largest_kb']:.3f} KB/sample, {rate} at the margin; ImageNet-21k ({IMAGENET_21K:,}) projects to "
              f"{s['projected_21k_tree_gib']:.1f} GiB tree, {s['projected_21k_largest_gib']:.1f} GiB largest, "
              f"{s['projected_21k_hours']:.1f} h")
    _print_targets(runs, steps)


def _print_targets(runs: list[ScaleRun], steps: list[dict]) -> None:
    print("\ntargets (issue 12):")
    step = next((s for s in steps if s["from"] >= 150_000 and s["to"] >= 900_000), steps[-1] if steps else None)
    if step is not None:
        ok = step["tree_kb"] <= TARGETS["tree_slope_kb"]
        print(f"  tree slope {step['tree_kb']:.3f} KB/sample ({step['from']:,} -> {step['to']:,}) <= "
              f"{TARGETS['tree_slope_kb']}: {'met' if ok else 'MISSED'}")
        ok = step["projected_21k_tree_gib"] * GiB <= TARGETS["projected_21k"]
        print(f"  ImageNet-21k projected {step['projected_21k_tree_gib']:.1f} GiB <= 8 GiB: "
              f"{'met' if ok else 'MISSED'}")
    big = max(runs, key=lambda r: r.samples)
    ok = big.memory.process_rss <= TARGETS["largest_at_1m"]
    print(f"  largest process at {big.samples:,}: {big.memory.process_rss / MiB:,.0f} MiB <= 1,024 MiB: "
          f"{'met' if ok else 'MISSED'}")
    ok = big.samples_per_s >= TARGETS["samples_per_s"]
    print(f"  {big.samples_per_s:,.0f} samples/s at {big.samples:,} >= {TARGETS['samples_per_s']:,}: "
          f"{'met' if ok else 'MISSED'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", default="50000,200000,1000000", help="the corpus sizes, comma-separated")
    parser.add_argument("--out", default=os.path.join("bench-out", "scale"),
                        help="where the corpora (kept), the builds and the report go")
    parser.add_argument("--generate-only", action="store_true", help="write the corpora, build nothing")
    parser.add_argument("--digests", action="store_true",
                        help="write the sha256 of every file each build wrote to OUT/digests-N.json (to compare "
                             "two versions of the code: benchmarks/output_digests.py)")
    parser.add_argument("--keep-builds", action="store_true", help="keep each build's OUT (OUT/build-N)")
    parser.add_argument("--tag", default="", help="a name for this run's files (OUT/scale-TAG.json, ...)")
    parser.add_argument("build_args", nargs="*", help="more build options, after --")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.samples.split(","))
    os.makedirs(args.out, exist_ok=True)
    corpora = [ensure_scale_corpus(ScaleCorpus(n), args.out) for n in sizes]
    if args.generate_only:
        return 0
    runs = []
    tag = f"-{args.tag}" if args.tag else ""
    for n, corpus in zip(sizes, corpora):
        print(f"building {n:,} samples ...", flush=True)
        run = build_once(corpus, os.path.join(args.out, f"build-{n}"), os.path.join(args.out, f"build{tag}-{n}.log"),
                         os.path.join(args.out, f"timeline{tag}-{n}.csv"), tuple(args.build_args))
        if run.exit_code:
            print(f"the build of {n:,} samples failed (exit {run.exit_code}): see {run.log}")
            return 1
        built = os.path.join(args.out, f"build-{n}")
        if args.digests:
            with open(os.path.join(args.out, f"digests{tag}-{n}.json"), "w") as f:
                json.dump({f"scale-{n}": _digests(current_version(built))}, f, indent=1, sort_keys=True)
        if not args.keep_builds:
            shutil.rmtree(built, ignore_errors=True)
        print(f"  {run.wall_s:.1f} s, {run.samples_per_s:,.0f} samples/s, CPU {run.cpu_s / n * 1e6:.0f} us/sample, "
              f"tree {run.memory.tree_rss / MiB:,.0f} MiB, largest {run.memory.process_rss / MiB:,.0f} MiB (driver "
              f"{run.memory.root_rss / MiB:,.0f}), load {os.getloadavg()[0]:.1f}", flush=True)
        runs.append(run)
    steps = [slopes(a, b) for a, b in zip(runs, runs[1:])]
    _print_report(runs, steps)
    report = {"runs": [r.as_dict() for r in runs], "slopes": steps, "targets": TARGETS,
              "build_args": args.build_args, "cpus": os.cpu_count()}
    path = os.path.join(args.out, f"scale{tag}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
