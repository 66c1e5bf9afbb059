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
    # The shuffles hand each worker its values in buffers of tens to hundreds of KB (a segment's
    # pickled pieces, a shard's rows), freed a moment later. By default glibc raises its mmap
    # threshold up to 32 MB as such buffers are freed, so they come from the heap from then on, and
    # the heap is trimmed only from its top: freed buffers pile up in the heap instead of going
    # back to the operating system. With blocks of 128 KB or more in their own mappings (returned
    # on free) and the heap trimmed once 128 KB at its top are free, the benchmark's build of 1M
    # samples peaked at 1,351 MiB over its process tree instead of 2,011 (537 MiB in its largest
    # process instead of 836), the tree's growth from 200k to 1M samples 0.45 KB a sample instead
    # of 0.98, and it took no longer (benchmarks/scale.py, with ImageNet-sized shards).
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
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
