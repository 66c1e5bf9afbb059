"""The peak memory of a process tree, sampled with psutil.

A Beam build is a driver plus worker subprocesses (and their helpers); what the machine must hold
is the sum over all of them, and what one worker must fit in is its own peak. Both are sampled
here every `interval` seconds: the tree is found again at each sample, so workers that start or
end mid-run are seen.

RSS counts shared pages (the Python libraries every process maps) once per process, so the tree
sum overstates what the machine really needs by roughly (processes - 1) x the shared part; it is
the figure that `ps` and `top` users add up, and it is what an OOM killer weighs.

    with TreeMemorySampler(proc.pid) as mem:
        proc.wait()
    mem.peak.tree_rss, mem.peak.process_rss, mem.peak.worker_rss

run_sampled(cmd) does the same for a command, and also gives the tree's wall and CPU time.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import threading
import time
from typing import Optional

import psutil

__all__ = ["MemoryPeak", "SampledRun", "TreeMemorySampler", "process_tree", "rss_bytes", "run_sampled"]


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now (`root` first)."""
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:  # The root has ended.
        return [root]
    return [root, *(child.pid for child in children)]


def rss_bytes(pid: int) -> int:
    """The resident set size of one process; 0 when it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


@dataclasses.dataclass
class MemoryPeak:
    """The peaks of a process tree's memory over a run."""

    tree_rss: int = 0  # the largest sum of RSS over the whole tree at one sample
    tree_processes: int = 0  # the processes in the tree at that sample
    process_rss: int = 0  # the largest RSS of any single process of the tree (the driver included)
    process_cmd: str = ""  # its command line (cut)
    worker_rss: int = 0  # the largest RSS of any descendant (the root excluded)
    worker_cmd: str = ""
    root_rss: int = 0  # the root's (the driver's) peak
    max_processes: int = 0  # the most processes seen in the tree at once
    samples: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class TreeMemorySampler:
    """Samples a process tree's RSS from a background thread until it is stopped (a context manager)."""

    def __init__(self, root_pid: int, interval: float = 0.1):
        self.root = root_pid
        self.interval = interval
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procmem", daemon=True)

    def sample(self) -> None:
        """Take one sample now (the thread calls it too)."""
        tree = process_tree(self.root)
        sizes = {pid: rss_bytes(pid) for pid in tree}
        peak = self.peak
        peak.samples += 1
        total = sum(sizes.values())
        peak.max_processes = max(peak.max_processes, sum(1 for s in sizes.values() if s))
        if total > peak.tree_rss:
            peak.tree_rss, peak.tree_processes = total, sum(1 for s in sizes.values() if s)
        peak.root_rss = max(peak.root_rss, sizes.get(self.root, 0))
        for pid, size in sizes.items():
            if size > peak.process_rss:
                peak.process_rss, peak.process_cmd = size, _cmdline(pid)[:200]
            if pid != self.root and size > peak.worker_rss:
                peak.worker_rss, peak.worker_cmd = size, _cmdline(pid)[:200]

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class SampledRun:
    """A finished command: its exit code, its times and its memory peaks."""

    exit_code: int
    wall_s: float
    cpu_s: float  # the user and system time of the whole tree (every process it waited for)
    memory: MemoryPeak


def run_sampled(cmd: list[str], log_path: Optional[str] = None, interval: float = 0.1,
                timeout: Optional[float] = None, **popen) -> SampledRun:
    """Run `cmd` to completion while sampling its tree's memory. Its output goes to `log_path` (or is
    discarded). The CPU time comes from getrusage(RUSAGE_CHILDREN): call it from one thread at a time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path or os.devnull, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
        with TreeMemorySampler(proc.pid, interval) as sampler:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return SampledRun(code, wall, cpu, sampler.peak)
