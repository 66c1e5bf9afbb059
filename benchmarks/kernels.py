"""The kernels (the bytes of a source image -> the JPEG to store) and their timing on one core and on all.

reference  a fixed yardstick written here, independent of the project's code: PIL open, draft
           (libjpeg's DCT-domain scaling), convert to RGB, Lanczos resize, JPEG q90;
project    transforms.image.process_image, what the build runs for each image;
naive      a full decode, convert, Lanczos resize, JPEG q90: what a hand-written script does.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable

from PIL import Image

from benchmarks.settings import QUALITY
from transforms.image import ImageOptions, ResizeSpec, process_image

__all__ = ["target_size", "encode_jpeg", "reference_kernel", "naive_kernel", "project_kernel", "kernels_for", "one_cpu",
           "per_image_best", "time_kernels", "reference_on_all_cores"]


def target_size(width: int, height: int, resize: str) -> tuple[int, int]:
    """The stored size, by the rule the README states (written here again, not imported): the
    constrained side becomes exactly N, the other max(1, floor(x * N / side + 0.5)); it never upscales."""
    mode, _, number = resize.partition(":")
    if mode == "none":
        return width, height
    n = int(number)
    side = max(width, height) if mode == "longer" else min(width, height)
    if side <= n:
        return width, height
    w, h = (n if x == side else max(1, (2 * x * n + side) // (2 * side)) for x in (width, height))
    return w, h


def encode_jpeg(im: Image.Image) -> bytes:
    """`im` as a JPEG at the build's quality."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def reference_kernel(data: bytes, resize: str) -> bytes:
    """The yardstick: libjpeg's DCT scaling while decoding, then Lanczos to the exact size."""
    im = Image.open(io.BytesIO(data))
    target = target_size(*im.size, resize)
    im.draft("RGB", target)
    return encode_jpeg(im.convert("RGB").resize(target, Image.Resampling.LANCZOS))


def naive_kernel(data: bytes, resize: str) -> bytes:
    """What a hand-written script does: a full decode, then Lanczos to the exact size."""
    im = Image.open(io.BytesIO(data))
    target = target_size(*im.size, resize)
    return encode_jpeg(im.convert("RGB").resize(target, Image.Resampling.LANCZOS))


def project_kernel(resize: str) -> Callable[[bytes], bytes]:
    """The build's own per-image function, with the build's options for `resize`."""
    options = ImageOptions(resize=ResizeSpec.parse(resize), quality=QUALITY)
    return lambda data: process_image(data, options).jpeg


def kernels_for(resize: str) -> dict[str, Callable[[bytes], bytes]]:
    """The three kernels by name, each taking the bytes of one image."""
    return {
        "reference": lambda data: reference_kernel(data, resize),
        "project": project_kernel(resize),
        "naive": lambda data: naive_kernel(data, resize),
    }


@contextmanager
def one_cpu():
    """Run the block on one CPU (the last that this process may use), then give the others back."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def per_image_best(runs: list[list[float]]) -> list[float]:
    """Each image's best time over the passes (runs[pass][image])."""
    return [min(times) for times in zip(*runs)]


def _rate(seconds: list[float]) -> dict:
    total = sum(seconds)
    return {"images_per_s": round(len(seconds) / total, 2), "ms_per_image": round(1000 * total / len(seconds), 3)}


def time_kernels(kernels: dict[str, Callable[[bytes], bytes]], datas: list[bytes], repeats: int) -> dict:
    """The images/s of each kernel over `datas`: every image goes through every kernel in turn (so that
    load from other users hits all kernels alike), in `repeats` passes; an image's time is its best pass,
    and the rate is the images / the sum of those (the median pass is kept too, to show the noise)."""
    for fn in kernels.values():  # a warm-up: plugins and first allocations
        for data in datas[:5]:
            fn(data)
    runs: dict[str, list[list[float]]] = {name: [] for name in kernels}
    for _ in range(repeats):
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for data in datas:
            for name, fn in kernels.items():
                started = time.perf_counter()
                fn(data)
                times[name].append(time.perf_counter() - started)
        for name in kernels:
            runs[name].append(times[name])
    return {name: {**_rate(per_image_best(r)), "images": len(datas), "repeats": repeats,
                   "median_pass_s": round(statistics.median(sum(t) for t in r), 3),
                   # timeit's statistic: the fastest whole pass (less optimistic than each image's best)
                   "best_pass_images_per_s": round(len(datas) / min(sum(t) for t in r), 2)}
            for name, r in runs.items()}


def _reference_worker(cpu: int, datas: list, resize: str, start, results) -> None:
    os.sched_setaffinity(0, {cpu})
    for data in datas[:5]:  # a warm-up: plugins and first allocations
        reference_kernel(data, resize)
    start.wait()
    began = time.perf_counter()
    for data in datas:
        reference_kernel(data, resize)
    results.put((cpu, len(datas), time.perf_counter() - began))


def reference_on_all_cores(datas: list[bytes], resize: str, cores: int) -> dict:
    """The reference kernel on every core at once, one process per core, over `datas` dealt out in
    turn: the codecs' own rate on this machine with nothing else to do. This is the "cores x
    reference" the build is held to, measured rather than multiplied: over the very images the
    build processes (not a sample), in one sustained pass as long as the build's, under the same
    load from other users (it runs right after each build), with whatever the cores share (caches,
    memory bandwidth) shared as in the build. The processes are forked, so the bytes are not copied."""
    ctx = multiprocessing.get_context("fork")
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    start, results = ctx.Barrier(len(cpus) + 1), ctx.Queue()
    procs = [ctx.Process(target=_reference_worker, args=(cpu, datas[i::len(cpus)], resize, start, results))
             for i, cpu in enumerate(cpus)]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    done = [results.get() for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return {"images_per_s": round(len(datas) / wall, 2), "wall_s": round(wall, 3), "images": len(datas),
            "processes": len(cpus),
            "per_process_images_per_s": [round(n / t, 2) for _, n, t in sorted(done)]}
