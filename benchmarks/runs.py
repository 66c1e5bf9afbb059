"""The timed end-to-end runs: `imagenet-shards build` and the naive script, each in a subprocess whose
process tree's memory is sampled."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Callable, Optional

from benchmarks.procmem import MemoryPeak, run_sampled
from pipeline.versions import read_manifest

__all__ = ["REPO_ROOT", "BuildRun", "warm_page_cache", "pipeline_build", "naive_script_build"]

# The folder that holds the benchmarks package: `python -m benchmarks.bench` must find it from anywhere.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class BuildRun:
    """One timed run of a build."""

    name: str
    exit_code: int
    wall_s: float
    cpu_s: float  # the user and system time of the whole process tree
    images: int
    memory: MemoryPeak
    log: str
    loadavg: float = 0.0  # the machine's 1-minute load when the build started (other users' work)

    def as_dict(self) -> dict:
        return {"name": self.name, "exit_code": self.exit_code, "wall_s": round(self.wall_s, 3),
                "cpu_s": round(self.cpu_s, 3), "images": self.images,
                "images_per_s": round(self.images / self.wall_s, 2), "loadavg_at_start": self.loadavg,
                "memory": self.memory.as_dict(), "log": self.log}


def warm_page_cache(folder: str) -> None:
    """Read every file under `folder` once, so that a timed run starts with its input in the page
    cache, as a corpus this size (1.7 GB) stays on any machine with memory to spare. This VM's
    kernel pages out whatever has not been touched for 60 s (DAMON), so otherwise each run found
    a different share of the corpus on disk (5-15%, read back at ~290 MB/s), whichever program it
    was. The runs still read every byte themselves, from the page cache."""
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.read(1 << 23):
                    pass


def _run_build(name: str, cmd: list[str], logdir: str, images: Callable[[int], int], corpus: str,
               env: Optional[dict] = None) -> BuildRun:
    warm_page_cache(corpus)
    load = round(os.getloadavg()[0], 2)
    log = os.path.join(logdir, f"{name}.log")
    run = run_sampled(cmd, log, env=env)
    return BuildRun(name, run.exit_code, run.wall_s, run.cpu_s, images(run.exit_code), run.memory, log, load)


def _cli() -> list[str]:
    """The command line of the tool: its console script, or the package run as a module."""
    script = os.path.join(os.path.dirname(sys.executable), "imagenet-shards")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline"]


def _images_read(out: str) -> int:
    return sum(split["read"] for split in read_manifest(out)["splits"].values())


def pipeline_build(corpus: str, out: str, resize: str, shard_size: str, logdir: str, name: str) -> BuildRun:
    """`imagenet-shards build` in a subprocess, its process tree's memory sampled."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*_cli(), "build", corpus, "--out", out, "--no-progress", "--shard-size", shard_size,
           "--resize", resize]
    return _run_build(name, cmd, logdir, lambda code: _images_read(out) if code == 0 else 0, corpus)


def naive_script_build(corpus: str, out: str, resize: str, shard_size: str, logdir: str, name: str,
                       images: int) -> BuildRun:
    """naive_convert in a subprocess (python -m benchmarks.bench --naive-script), its memory sampled."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.bench", "--naive-script", corpus, out, "--resize", resize,
           "--shard-size", shard_size]
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}  # The benchmarks package is not installed.
    return _run_build(name, cmd, logdir, lambda code: images if code == 0 else 0, corpus, env)
