"""The scale benchmark: what a build costs per sample outside the codecs, in memory and in time.

    python -m benchmarks.scale [--samples 50000,200000,1000000] [--out bench-out/scale]     (make bench-scale)

For each N, a release in the official layout is generated once and kept under OUT/corpus-N/ (a
train tar of 1,000 per-class tars and a flat val tar of 2% of the samples, with the devkit; see
benchmarks/scale_corpus.py), of N tiny unique JPEGs: 64 x 64 baseline RGB JPEGs that the build
keeps byte for byte, so that the codecs cost little (about 60 us an image) and what is measured is
the bookkeeping around them (indexing, planning, shuffles, tar, Parquet, the duplicate searches,
the manifest). Each corpus is then built through the tool's command line (`python -m pipeline
build SOURCE --out OUT --shard-size SIZE`, in a fresh OUT) with its defaults but one, while the RSS
of the whole process tree (the driver and the local runner's workers) and of its largest process
is sampled every 0.2 s.

The one option that is not the default is the shard size: it is chosen so that a shard holds as
many samples as a default shard of ImageNet holds. ImageNet's JPEGs average about 110 KB
(ILSVRC2012's train tar: ~140 GB over 1,281,167 images), and the planner counts 2,816 bytes of tar
headers and padding besides each image (transforms/sharding.py), so a sample takes ~112,816 bytes
and a default shard of 512 MB holds 512,000,000 // 112,816 = 4,538 samples. The tiny JPEGs average
~849 bytes, ~3,665 bytes a sample with the same overhead, so 4,538 of them make a shard of
4,538 x 3,665 = ~16.6 MB, and the benchmark passes that as --shard-size (and prints the arithmetic).
With the default 512 MB instead, a tiny corpus would make a few shards of ~140,000 samples each,
which ImageNet never has: what is measured is the bookkeeping per sample at ImageNet's shard
granularity, which is what a build of ImageNet-21k costs. A --shard-size given after `--` is
used instead.

It prints, for each N: the wall time, samples per second, the peak RSS of the tree and of its largest
process (and which process that was); then, between each pair of consecutive sizes, the slopes (KB
per sample of the tree and of the largest process, and seconds per sample) and their projection to
ImageNet-21k's 14.2M samples. The figures go to OUT/scale.json, and the memory of every process at
every second of each build to OUT/timeline-N.csv (to tell the driver's growth from the workers').

"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional

from benchmarks.output_digests import digests
from benchmarks.procmem import MemoryPeak, TreeMemorySampler, process_tree, rss_bytes
from benchmarks.runs import warm_page_cache
from benchmarks.scale_corpus import GENERATOR_VERSION, ScaleCorpus, ensure_scale_corpus, tiny_jpeg
from benchmarks.settings import IMAGENET_21K, GiB
from pipeline.options import DEFAULT_SHARD_SIZE
from pipeline.versions import current_version, read_manifest
from transforms.sharding import estimate_sample_bytes
from transforms.sizes import parse_byte_size

__all__ = ["GENERATOR_VERSION", "TARGETS", "IMAGENET_MEAN_JPEG_BYTES", "tiny_jpeg", "ShardGranularity",
           "imagenet_granularity", "ScaleCorpus", "ensure_scale_corpus", "ScaleRun", "build_once",
           "slopes", "main"]

MiB = 1 << 20
# ImageNet's mean JPEG: ILSVRC2012's train tar is ~140 GB over 1,281,167 images.
IMAGENET_MEAN_JPEG_BYTES = 110_000

# The targets (issue 12, "ImageNet-21k on one machine").
TARGETS = {
    "tree_slope_kb": 0.4,  # KB a sample of the whole tree's peak RSS, between 200k and 1M samples
    "largest_at_1m": 1 * GiB,  # the largest process's peak RSS at 1M samples
    "projected_21k": 8 * GiB,  # the tree's peak projected to ImageNet-21k
    "samples_per_s": 10_000,  # on 2 cores
}


@dataclasses.dataclass(frozen=True)
class ShardGranularity:
    """The shard size that gives tiny JPEGs as many samples a shard as ImageNet has at the
    default shard size (see the module docstring)."""

    default_shard_size: int  # the build's default --shard-size, in bytes
    imagenet_sample_bytes: int  # an ImageNet sample in its shard, as the planner estimates it
    samples_per_shard: int  # ImageNet's samples in a default shard
    tiny_sample_bytes: int  # a tiny JPEG's sample in its shard, as the planner estimates it
    shard_size: int  # the --shard-size the benchmark passes

    def describe(self) -> str:
        return (f"shard size {self.shard_size / 1e6:.1f} MB: ImageNet's samples take ~{self.imagenet_sample_bytes:,} "
                f"bytes in a shard (a {IMAGENET_MEAN_JPEG_BYTES:,}-byte JPEG and the tar's overhead), so a default "
                f"{self.default_shard_size / 1e6:,.0f} MB shard holds {self.samples_per_shard:,} of them; "
                f"{self.samples_per_shard:,} tiny samples of ~{self.tiny_sample_bytes:,} bytes make "
                f"{self.shard_size:,} bytes. The figures are the bookkeeping per sample at ImageNet's shard "
                f"granularity.")


def imagenet_granularity(probes: int = 1000) -> ShardGranularity:
    """The shard size for the tiny corpus (the tiny JPEGs' mean size from `probes` of them)."""
    default = parse_byte_size(DEFAULT_SHARD_SIZE)
    tiny_mean = round(sum(len(tiny_jpeg(i * 7919)) for i in range(probes)) / probes)
    # Both kinds of image are kept byte for byte (ImageNet's mostly, the tiny ones always): the
    # planner's estimate is then the image's size and the tar's overhead.
    imagenet = estimate_sample_bytes(IMAGENET_MEAN_JPEG_BYTES, "none", None, 90)
    tiny = estimate_sample_bytes(tiny_mean, "none", None, 90)
    per_shard = default // imagenet
    return ShardGranularity(default, imagenet, per_shard, tiny, per_shard * tiny)


def _sets_shard_size(build_args) -> bool:
    return any(a == "--shard-size" or a.startswith("--shard-size=") for a in build_args)



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


def _print_report(runs: list[ScaleRun], steps: list[dict], granularity: Optional[ShardGranularity]) -> None:
    if granularity is not None:
        print(f"\n{granularity.describe()}")
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
    build_args = list(args.build_args)
    granularity = None
    if _sets_shard_size(build_args):
        print("the shard size given after -- is used (not ImageNet's granularity)")
    else:
        granularity = imagenet_granularity()
        build_args += ["--shard-size", str(granularity.shard_size)]
        print(granularity.describe())
    runs = []
    tag = f"-{args.tag}" if args.tag else ""
    for n, corpus in zip(sizes, corpora):
        print(f"building {n:,} samples ...", flush=True)
        run = build_once(corpus, os.path.join(args.out, f"build-{n}"), os.path.join(args.out, f"build{tag}-{n}.log"),
                         os.path.join(args.out, f"timeline{tag}-{n}.csv"), tuple(build_args))
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
    _print_report(runs, steps, granularity)
    report = {"runs": [r.as_dict() for r in runs], "slopes": steps, "targets": TARGETS,
              "build_args": build_args, "cpus": os.cpu_count(),
              "shard_granularity": dataclasses.asdict(granularity) if granularity else None}
    path = os.path.join(args.out, f"scale{tag}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
