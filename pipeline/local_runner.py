"""The local runner's worker processes: their log level and their memory allocator.

Beam's local runner starts its workers as processes of their own that inherit this process's
environment, and hands them no pipeline options: the two settings below reach them through
environment variables.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
from typing import Iterator

__all__ = ["worker_log_level", "MALLOC_DEFAULTS", "tune_malloc"]


@contextlib.contextmanager
def worker_log_level(options) -> Iterator[None]:
    """Tell the local runner's worker processes the log level (--default_sdk_harness_log_level).

    The local runner hands its workers no pipeline options, so they would log at INFO (~35 lines
    a small build). The SDK harness reads its options from the file that PIPELINE_OPTIONS_FILE
    names (the variable of Beam's worker container contract), and the workers inherit this
    process's environment."""
    level = options.get_all_options()["default_sdk_harness_log_level"]
    with tempfile.TemporaryDirectory(prefix="imagenet-shards-") as folder:
        path = os.path.join(folder, "worker-options.json")
        with open(path, "w") as f:
            json.dump({"options": {"default_sdk_harness_log_level": level}}, f)
        previous = os.environ.get(_OPTIONS_FILE)
        os.environ[_OPTIONS_FILE] = path
        try:
            yield
        finally:
            if previous is None:
                del os.environ[_OPTIONS_FILE]
            else:
                os.environ[_OPTIONS_FILE] = previous


_OPTIONS_FILE = "PIPELINE_OPTIONS_FILE"


# glibc's mallopt parameter numbers, and the environment variables that set the same at a
# process's start (glibc reads MALLOC_* variables once, when a process starts).
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}

# What the build's processes use unless the user's environment says otherwise.
MALLOC_DEFAULTS = {
    # glibc gives threads that allocate their own malloc arenas (up to 8 per core) and keeps what
    # is freed in each; Beam's gRPC threads move every record through several. Two arenas per
    # process: measured on the benchmark's builds, the process tree's RSS grew 25% less per sample
    # (13.5 -> 10.1 KB), at no measurable cost in time.
    "MALLOC_ARENA_MAX": "2",
    # The shuffles hand each worker its values in buffers of tens of KB to a few MB (a segment's
    # pickled pieces, a shard's rows, batches of hashes), freed a moment later. By default glibc
    # raises its mmap threshold (up to 32 MB) each time such a buffer is freed, so that they all
    # come from the heap from then on, and trims the heap only once twice that is free at its top:
    # freed buffers pile up in the heap instead of going back to the operating system. Fixed
    # thresholds of 4 MiB keep the biggest buffers in mappings of their own (returned on free) and
    # trim the heap once 4 MiB are free at its top. Measured on benchmarks/scale.py's builds of
    # 200k and 1M tiny images at ImageNet's shard granularity (2 cores, one run each): the process
    # tree's peak at 1M was 1,374 MiB, against 1,644 with glibc's defaults (the code before this
    # setting). Lower thresholds saved little more (128 KiB: 1,271 and 1,334 MiB at 1M in two
    # runs) for 10-15% more CPU time, all of it page faults (3.4M at 200k, against 0.46M at 4 MiB),
    # since every buffer over the threshold is mapped and faulted in afresh and the heap is
    # trimmed and grown again all the time: 48 s of CPU at 200k at 128 KiB, 42 s at 4 MiB, and
    # 41 s with the thresholds fixed at glibc's own maxima (32 MiB and 64 MiB), which saved
    # nothing (1,138 MiB at 200k, against 1,023 at 4 MiB).
    "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(4 << 20),
}


def tune_malloc() -> None:
    """Set MALLOC_DEFAULTS for this process and the processes it starts, where the environment
    does not set them already (a user's own values win).

    The local runner's worker processes inherit the environment, and glibc reads the variables
    when each starts; this process, already started, is told the same through mallopt. Nothing
    happens where the C library is not glibc."""
    for name, value in MALLOC_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    for name, parameter in _MALLOPT.items():
        try:
            mallopt(parameter, int(os.environ[name]))
        except ValueError:  # a value the user set that is not a number: glibc ignores it too
            pass
