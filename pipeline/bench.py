"""The benchmark behind `make bench`: how fast and how lean a build is, against fixed yardsticks.

    python -m pipeline.bench [--images N] [--out DIR] [--quick] [--img2dataset]
    python -m pipeline.bench --memory [--sizes 2400,12000]

What is measured, and why:

1. A corpus that looks like ImageNet to the code: the official layout (a train tar of per-class
   tars, a flat val tar in shuffled order, the devkit; written with pipeline/sample.py's tar and
   devkit writers), N train images (12,000 by default) and N/10 val images, ImageNet's size mix (mostly 500x375,
   500x333, 375x500; some small; a few percent over 1,000 px) and ImageNet's bytes (~110 KB a
   file: crops of the bundled photos with film grain added, baseline 4:2:0 JPEG at quality 85-95;
   grain matters, it is what makes decoding and encoding cost what they cost on real photos).
   sample.py's own photo maker has no grain and no large sizes, so the images are made here.
   The corpus is cached under OUT/corpus/<its parameters>/.

2. Kernels, one image at a time on ONE core (sched_setaffinity), over the same bytes held in
   memory, in a tight loop: R passes, each image through the three kernels in turn (so that load
   from other users hits them alike); an image's time is its best pass, a rate is images / the sum
   of those (this machine is shared: best-of is what survives other people's test runs):
     reference  a fixed yardstick written here, independent of the project's code: PIL open,
                draft (libjpeg's DCT-domain scaling), convert RGB, Lanczos resize, JPEG q90;
     project    transforms.image.process_image, what the build runs for each image;
     naive      a full decode, convert, Lanczos resize, JPEG q90: what a hand-written script does.
   And a profile of the project's per-image work (read, decode, resize, encode, the kernel's own
   checks, sha256, index row JSON, tar writing, Parquet writing), so the next optimisation is obvious.

3. End to end: `imagenet-shards build` (all cores, Beam's local runner) against a naive
   single-process script (tarfile in, PIL full decode + resize + encode, tarfile shards out) on
   the same corpus. Start-up (interpreter, Beam, workers, the graph) is measured apart, as the
   wall time of a build of a 20-image corpus; steady-state rate = images / (wall - start-up).
   The builds' CPU time (all processes, getrusage) is recorded too: cores x images / (CPU - start-up
   CPU) is the rate on otherwise idle cores, which other users' load disturbs much less than wall time.
   After each build the reference kernel runs on all cores at once (a process a core) over all the
   build's images in memory: "cores x reference", measured under the build's conditions; the
   steady state is held to it (the one-core ratios are printed beside it).

4. Memory: peak RSS of the whole process tree (driver + Beam workers, summed, sampled from /proc
   every 0.1 s; see pipeline/procmem.py) and of its largest single process, for every build.
   A second build of a 4x smaller corpus (3,000 train images, the default resize) gives the
   per-sample slope of each figure, projected to ImageNet-1k (1.33M samples) and ImageNet-21k
   (14M), and how the steady-state time per image changes with size. `--memory` does only
   that, at the sizes given (5x apart by default).

Each is done for `--resize shorter:256` and for the default `longer:512`. The timed runs go in
rounds, every build once a round (start-up build, build, reference on all cores, naive script,
per mode; then the smaller build), and each figure is the best of its rounds: the machine's slow
minutes then fall on all of them alike. Each run starts with its corpus read once into the page
cache (see warm_page_cache). The figures are printed
with their targets (PASS/FAIL, informative: the command does not fail on them) and written to
OUT/bench.json (OUT/bench-memory.json for --memory).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from typing import Callable, Optional

import numpy as np
import PIL
from PIL import Image, features

from pipeline.procmem import MemoryPeak, run_sampled
from pipeline.workers import cpu_count

__all__ = ["CorpusSpec", "draw_size", "make_photo", "ensure_corpus", "load_images", "target_size",
           "reference_kernel", "naive_kernel", "project_kernel", "time_kernels", "profile_phases",
           "naive_convert", "make_mode_report", "check_targets", "main"]

DEFAULT_IMAGES = 12000  # the size the end-to-end target is set at
DEFAULT_SCALING_IMAGES = 3000  # the smaller build: 4x fewer
DEFAULT_OUT = "bench-out"
RESIZES = ("shorter:256", "longer:512")  # the second is the build's default
DEFAULT_RESIZE = "longer:512"
QUALITY = 90
GiB = 1 << 30
IMAGENET_1K = 1_331_167  # 1,281,167 train + 50,000 val
IMAGENET_21K = 14_197_122

# Bump when the images or the layout the generator writes change: the cache key includes it.
GENERATOR_VERSION = 1
# Film grain (standard deviation, 8-bit levels) drawn per image: with quality 85-95 this gives
# ImageNet's ~110 KB mean file size over the size mix below.
GRAIN_SIGMA = (8.0, 14.0)
CHROMA_GRAIN = 0.35  # colour noise, relative to the luma grain

# ImageNet's size mix (fraction, size or kind). "500" means longer side 500 at a random aspect.
_SIZE_MIX = (
    (0.34, (500, 375)),
    (0.14, (500, 333)),
    (0.12, (375, 500)),
    (0.05, (333, 500)),
    (0.05, (500, 400)),
    (0.02, (400, 500)),
    (0.04, (500, 500)),
    (0.08, "500"),
    (0.08, "small"),  # longer side 120..400
    (0.04, "medium"),  # longer side 600..1000
    (0.04, "large"),  # over 1,000 px: camera sizes
)
_LARGE = ((1024, 768), (1280, 960), (1600, 1200), (2048, 1536), (2592, 1944), (1200, 1600), (1536, 2048))


# ------------------------------------------------------------------------------------------------
# The corpus


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    train: int
    val: int
    classes: int
    seed: int = 0

    @classmethod
    def for_images(cls, train: int, seed: int = 0) -> CorpusSpec:
        """N train images in N/100 classes (2..1000), and N/10 val images."""
        classes = min(1000, max(2, train // 100))
        return cls(train, max(2, round(train / 10)), classes, seed)

    @property
    def key(self) -> str:
        return f"train{self.train}-val{self.val}-classes{self.classes}-seed{self.seed}-gen{GENERATOR_VERSION}"

    @property
    def images(self) -> int:
        return self.train + self.val


def draw_size(rng: random.Random) -> tuple[int, int]:
    """One (width, height) from ImageNet's size mix."""
    kind = rng.choices([k for _, k in _SIZE_MIX], [w for w, _ in _SIZE_MIX])[0]
    if isinstance(kind, tuple):
        return kind
    if kind == "large":
        return rng.choice(_LARGE)
    longer = {"500": 500, "small": rng.randint(120, 400), "medium": rng.randint(600, 1000)}[kind]
    shorter = max(1, round(longer / rng.uniform(1.0, 1.8)))
    return (longer, shorter) if rng.random() < 0.7 else (shorter, longer)


def make_photo(seed: str) -> bytes:
    """A JPEG like ImageNet's: a random crop of a bundled photo at an ImageNet size, with grain,
    baseline 4:2:0 at quality 85-95. A pure function of `seed`."""
    from pipeline.sample import _PhotoMaker  # the crop-and-resize of the bundled photos

    rng = random.Random(seed)
    im, _source = _PhotoMaker(rng).image(draw_size(rng))
    noise = np.random.default_rng(rng.getrandbits(64))
    sigma = rng.uniform(*GRAIN_SIGMA)
    pixels = np.asarray(im, dtype=np.float32)
    h, w, _ = pixels.shape
    pixels += noise.standard_normal((h, w, 1), dtype=np.float32) * sigma
    pixels += noise.standard_normal((h, w, 3), dtype=np.float32) * (sigma * CHROMA_GRAIN)
    grainy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    grainy.save(buf, "JPEG", quality=rng.randint(85, 95), subsampling=2)
    return buf.getvalue()


def _photo_job(seed: str) -> tuple[bytes, tuple[int, int]]:
    data = make_photo(seed)
    with Image.open(io.BytesIO(data)) as im:
        return data, im.size


def _corpus_stats(sizes: list[tuple[int, int]], lengths: list[int]) -> dict:
    n = len(lengths)
    longer = [max(s) for s in sizes]
    return {
        "images": n,
        "bytes": sum(lengths),
        "mean_bytes": round(sum(lengths) / n),
        "median_bytes": round(statistics.median(lengths)),
        "mean_pixels": round(sum(w * h for w, h in sizes) / n),
        "share_longer_450_520": round(sum(450 <= s <= 520 for s in longer) / n, 4),
        "share_small_under_400": round(sum(s < 400 for s in longer) / n, 4),
        "share_over_1000": round(sum(s > 1000 for s in longer) / n, 4),
        "share_portrait": round(sum(h > w for w, h in sizes) / n, 4),
    }


def _write_corpus(spec: CorpusSpec, dest: str, processes: int) -> dict:
    """Write the three archives of `spec` under `dest`; return the corpus statistics."""
    # The layout is sample.py's: its class/val choice (the real ground truth applies), names, tar
    # headers and devkit; only the photos are made here.
    from pipeline.sample import (DEVKIT_TAR, TRAIN_TAR, VAL_TAR, _atomic_write, _choose_classes_and_val,
                                 _devkit_bytes, _Member, _Planner, _tar_bytes, _tarinfo, _write_tar)

    wnids, val_slots = _choose_classes_and_val(spec.classes, spec.val)
    classes = sorted(wnids)
    planner = _Planner(spec.seed)
    per_class = [spec.train // spec.classes + (i < spec.train % spec.classes) for i in range(spec.classes)]
    seeds = [f"bench/{spec.seed}/train/{i}" for i in range(spec.train)]
    seeds += [f"bench/{spec.seed}/val/{i}" for i in range(spec.val)]
    sizes, lengths = [], []
    with multiprocessing.Pool(processes) as pool:
        photos = pool.imap(_photo_job, seeds, chunksize=4)

        def take(count: int) -> list[bytes]:
            out = []
            for data, size in itertools.islice(photos, count):
                out.append(data)
                sizes.append(size)
                lengths.append(len(data))
            return out

        def write_train(outer_file) -> None:
            with tarfile.open(fileobj=outer_file, mode="w", format=tarfile.GNU_FORMAT) as outer:
                for wnid, count in zip(classes, per_class):
                    names = [planner.train_name(wnid) for _ in range(count)]
                    members = [_Member(name, name[:-5], "photo", data) for name, data in zip(names, take(count))]
                    inner = _tar_bytes(members)
                    outer.addfile(_tarinfo(f"{wnid}.tar", len(inner)), io.BytesIO(inner))

        _atomic_write(os.path.join(dest, TRAIN_TAR), write_train)
        val = [_Member(f"ILSVRC2012_val_{index:08d}.JPEG", "", "photo", data)
               for (index, _wnid), data in zip(val_slots, take(spec.val))]
    random.Random(f"bench/{spec.seed}/val-order").shuffle(val)  # the real val tar is not sorted
    _atomic_write(os.path.join(dest, VAL_TAR), lambda f: _write_tar(f, val))
    devkit = _devkit_bytes(classes)
    _atomic_write(os.path.join(dest, DEVKIT_TAR), lambda f: f.write(devkit))
    return _corpus_stats(sizes, lengths)


def ensure_corpus(spec: CorpusSpec, cache_root: str, processes: Optional[int] = None, say=print) -> tuple[str, dict]:
    """The corpus folder for `spec` (written once, then reused) and its statistics."""
    root = os.path.join(cache_root, spec.key)
    marker = os.path.join(root, "corpus.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return root, json.load(f)["stats"]
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    say(f"writing corpus {spec.key} ({spec.images} images) to {root} ...")
    started = time.perf_counter()
    stats = _write_corpus(spec, root, processes or cpu_count())
    with open(marker, "w") as f:
        json.dump({"spec": dataclasses.asdict(spec), "stats": stats}, f, indent=1)
    say(f"  done in {time.perf_counter() - started:.1f} s")
    return root, stats


@dataclasses.dataclass(frozen=True)
class SourceImage:
    key: str
    data: bytes
    archive: str  # the tar the bytes are in, and where
    offset: int


def load_images(corpus_root: str) -> list[SourceImage]:
    """Every image of the corpus (train, then val), bytes in memory, with its place in the archives."""
    from pipeline.sample import TRAIN_TAR, VAL_TAR

    images = []
    train = os.path.join(corpus_root, TRAIN_TAR)
    with tarfile.open(train) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for m in inner:
                    data = inner.extractfile(m).read()
                    images.append(SourceImage(m.name[:-5], data, train, member.offset_data + m.offset_data))
    val = os.path.join(corpus_root, VAL_TAR)
    with tarfile.open(val) as tar:
        for m in tar:
            images.append(SourceImage(m.name[:-5], tar.extractfile(m).read(), val, m.offset_data))
    return images


def spread_sample(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when count >= len)."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


# ------------------------------------------------------------------------------------------------
# The kernels: bytes -> the JPEG to store


def target_size(width: int, height: int, resize: str) -> tuple[int, int]:
    """The stored size, by the rule the README states (written here again, not imported): the
    constrained side becomes exactly N, the other max(1, floor(x * N / side + 0.5)); never upscales."""
    mode, _, number = resize.partition(":")
    if mode == "none":
        return width, height
    n = int(number)
    side = max(width, height) if mode == "longer" else min(width, height)
    if side <= n:
        return width, height
    return tuple(n if x == side else max(1, (2 * x * n + side) // (2 * side)) for x in (width, height))


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def reference_kernel(data: bytes, resize: str) -> bytes:
    """The yardstick: libjpeg's DCT scaling while decoding, then Lanczos to the exact size."""
    im = Image.open(io.BytesIO(data))
    target = target_size(*im.size, resize)
    im.draft("RGB", target)
    return _jpeg(im.convert("RGB").resize(target, Image.LANCZOS))


def naive_kernel(data: bytes, resize: str) -> bytes:
    """What a hand-written script does: full decode, Lanczos to the exact size."""
    im = Image.open(io.BytesIO(data))
    target = target_size(*im.size, resize)
    return _jpeg(im.convert("RGB").resize(target, Image.LANCZOS))


def project_kernel(resize: str) -> Callable[[bytes], bytes]:
    """The build's own per-image function, with the build's options for `resize`."""
    from transforms.image import ImageOptions, ResizeSpec, process_image

    options = ImageOptions(resize=ResizeSpec.parse(resize), quality=QUALITY)
    return lambda data: process_image(data, options).jpeg


def kernels_for(resize: str) -> dict[str, Callable[[bytes], bytes]]:
    return {
        "reference": lambda data: reference_kernel(data, resize),
        "project": project_kernel(resize),
        "naive": lambda data: naive_kernel(data, resize),
    }


@contextmanager
def one_cpu():
    """Run the block on one CPU (the last this process may use), then give the others back."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def _per_image_best(runs: list[list[float]]) -> list[float]:
    """Each image's best time over the passes (runs[pass][image])."""
    return [min(times) for times in zip(*runs)]


def _rate(seconds: list[float]) -> dict:
    total = sum(seconds)
    return {"images_per_s": round(len(seconds) / total, 2), "ms_per_image": round(1000 * total / len(seconds), 3)}


def time_kernels(kernels: dict[str, Callable[[bytes], bytes]], datas: list[bytes], repeats: int) -> dict:
    """images/s of each kernel over `datas`: every image through every kernel in turn (so load from
    other users hits all kernels alike), `repeats` passes; an image's time is its best pass, the rate
    is images / the sum of those (the median pass is kept too, to show the noise)."""
    for fn in kernels.values():  # warm up: plugins, first allocations
        for data in datas[:5]:
            fn(data)
    runs = {name: [] for name in kernels}
    for _ in range(repeats):
        times = {name: [] for name in kernels}
        for data in datas:
            for name, fn in kernels.items():
                started = time.perf_counter()
                fn(data)
                times[name].append(time.perf_counter() - started)
        for name in kernels:
            runs[name].append(times[name])
    return {name: {**_rate(_per_image_best(r)), "images": len(datas), "repeats": repeats,
                   "median_pass_s": round(statistics.median(sum(t) for t in r), 3),
                   # timeit's statistic: the fastest whole pass (less optimistic than each image's best)
                   "best_pass_images_per_s": round(len(datas) / min(sum(t) for t in r), 2)}
            for name, r in runs.items()}


def _reference_worker(cpu: int, datas: list, resize: str, start, results) -> None:
    os.sched_setaffinity(0, {cpu})
    for data in datas[:5]:  # warm up: plugins, first allocations
        reference_kernel(data, resize)
    start.wait()
    began = time.perf_counter()
    for data in datas:
        reference_kernel(data, resize)
    results.put((cpu, len(datas), time.perf_counter() - began))


def reference_on_all_cores(datas: list[bytes], resize: str, cores: int) -> dict:
    """The reference kernel on every core at once, one process a core, over `datas` dealt out in
    turn: the codecs' own rate on this machine with nothing else to do. This is the "cores x
    reference" the build is held to, measured rather than multiplied: over the very images the
    build processes (not a sample), in one sustained pass as long as the build's, under the same
    load from other users (it runs right after each build), with whatever the cores share (caches,
    memory bandwidth) shared as in the build. Processes are forked, so the bytes are not copied."""
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


# ------------------------------------------------------------------------------------------------
# Profile of the project's per-image work

PHASES = ("read", "decode", "resize", "encode", "kernel_other", "sha256", "json", "tar", "parquet")
_PHASE_NOTES = {
    "read": "ranged read of the member from its archive (ArchiveReader, page cache)",
    "decode": "header + DCT-scaled decode (re-encoded images) or the 1/8 luma validation decode (kept ones)",
    "resize": "Lanczos from the drafted image to the target",
    "encode": "JPEG q90",
    "kernel_other": "process_image minus decode/resize/encode: probing, EXIF, checks",
    "sha256": "sha256 of the source bytes",
    "json": "the sample's index row and its .json (IndexRow -> JSON)",
    "tar": "three tar members (.jpg, .cls, .json) to the shard file, with the shard's running sha256",
    "parquet": "the shard's index rows to Parquet (zstd), per row",
}


class _Clock:
    """Time spent per phase on one image."""

    def __init__(self):
        self.spent = dict.fromkeys((*PHASES, "kernel"), 0.0)
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.spent[phase] += now - self._last
        self._last = now


def _decode_resize_encode(clock: _Clock, data: bytes, target: tuple[int, int], reencoded: bool) -> None:
    """The project's decode/resize/encode steps for one image, as transforms/image.py takes them."""
    im = Image.open(io.BytesIO(data))
    if not reencoded:  # kept byte for byte: only validated, by a 1/8-scale luma decode
        im.draft("L", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
        clock.lap("decode")
        return
    drafted = im.draft(None, target) if target != im.size else None
    im.load()
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    clock.lap("decode")
    if im.size != target:
        im = im.resize(target, Image.LANCZOS, box=drafted[1] if drafted else None)
    clock.lap("resize")
    _jpeg(im)
    clock.lap("encode")


def _index_row(image: SourceImage, processed, sha256: str, shard: str, offset: int):
    from transforms.schema import IndexRow

    return IndexRow(
        key=image.key, split="train", shard=shard, offset=offset, size=len(processed.jpeg), label=0,
        wnid="n01440764", width=processed.width, height=processed.height, orig_width=processed.orig_width,
        orig_height=processed.orig_height, orig_format=processed.orig_format, orig_mode=processed.orig_mode,
        reencoded=processed.reencoded, sha256=sha256, duplicate_of=None,
        exif_orientation=processed.exif_orientation, boxes=(), source=f"{image.archive}/{image.key}.JPEG")


def _profile_pass(images: list[SourceImage], resize: str, workdir: str) -> tuple[list[dict], float]:
    """One pass over `images`, as write_shard does it: each image's seconds per phase (with
    "kernel" = process_image itself), and the seconds of writing the pass's Parquet index."""
    from transforms.image import ImageOptions, ResizeSpec, process_image
    from transforms.index import write_index_file
    from transforms.layout import OutputLayout
    from transforms.storage import ArchiveReader
    from transforms.write_shards import ShardTarWriter, _json_bytes

    options = ImageOptions(resize=ResizeSpec.parse(resize), quality=QUALITY)
    per_image, rows = [], []
    reader = ArchiveReader()
    with open(os.path.join(workdir, "profile.tar"), "wb") as f:
        tar = ShardTarWriter(f)
        for image in images:
            clock = _Clock()
            data = reader.read(image.archive, image.offset, len(image.data))
            clock.lap("read")
            processed = process_image(data, options)
            clock.lap("kernel")
            _decode_resize_encode(clock, data, (processed.width, processed.height), processed.reencoded)
            digest = hashlib.sha256(data).hexdigest()
            clock.lap("sha256")
            row = _index_row(image, processed, digest, "train/train-000000.tar", 0)
            payload = _json_bytes(row)
            clock.lap("json")
            offset = tar.add_sample([(f"{image.key}.jpg", processed.jpeg), (f"{image.key}.cls", b"0"),
                                     (f"{image.key}.json", payload)])[0]
            clock.lap("tar")
            rows.append(dataclasses.replace(row, offset=offset))
            per_image.append(clock.spent)
        tar.close()
    reader.close()
    started = time.perf_counter()
    write_index_file(OutputLayout(workdir), "train", 0, rows, {})
    return per_image, time.perf_counter() - started


def profile_phases(images: list[SourceImage], resize: str, repeats: int, workdir: str) -> dict:
    """ms per image of each phase of the project's per-image work: each image's best of `repeats`
    passes, per phase. kernel_other = process_image's time less the decode, resize and encode it
    contains (timed apart right after it, the same steps taken the same way)."""
    os.makedirs(workdir, exist_ok=True)
    passes, parquet = [], []
    for _ in range(repeats):
        per_image, parquet_s = _profile_pass(images, resize, workdir)
        passes.append(per_image)
        parquet.append(parquet_s)
    n = len(images)
    best = {p: sum(_per_image_best([[img[p] for img in run] for run in passes])) for p in PHASES}
    best["parquet"] = min(parquet)
    kernel = sum(_per_image_best([[img["kernel"] for img in run] for run in passes]))
    # The kernel's own overhead, per image, from the same pass (a difference of best times would
    # carry the noise of four measurements): the median over passes.
    other = [statistics.median(run[i]["kernel"] - run[i]["decode"] - run[i]["resize"] - run[i]["encode"]
                               for run in passes) for i in range(len(images))]
    best["kernel_other"] = max(0.0, sum(other))
    ms = {p: round(1000 * best[p] / n, 3) for p in PHASES}
    total = sum(ms.values())
    return {"ms_per_image": ms, "total_ms_per_image": round(total, 3),
            "share": {p: round(ms[p] / total, 3) if total else 0.0 for p in PHASES},
            "process_image_ms": round(1000 * kernel / n, 3), "images": n, "repeats": repeats,
            "notes": _PHASE_NOTES}


# ------------------------------------------------------------------------------------------------
# End to end: the pipeline, and a naive script


@dataclasses.dataclass
class BuildRun:
    name: str
    exit_code: int
    wall_s: float
    cpu_s: float  # user + system, the whole process tree
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


def _run_build(name: str, cmd: list[str], logdir: str, images: Callable[[int], int], corpus: str) -> BuildRun:
    warm_page_cache(corpus)
    load = round(os.getloadavg()[0], 2)
    log = os.path.join(logdir, f"{name}.log")
    run = run_sampled(cmd, log)
    return BuildRun(name, run.exit_code, run.wall_s, run.cpu_s, images(run.exit_code), run.memory, log, load)


def _cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "imagenet-shards")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline.launch"]


def _images_read(out: str) -> int:
    with open(os.path.join(out, "manifest.json")) as f:
        return sum(split["read"] for split in json.load(f)["splits"].values())


def pipeline_build(corpus: str, out: str, resize: str, shard_size: str, logdir: str, name: str) -> BuildRun:
    """`imagenet-shards build` in a subprocess, its process tree's memory sampled."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*_cli(), "build", corpus, "--out", out, "--overwrite", "--no-progress", "--shard-size", shard_size,
           "--resize", resize]
    return _run_build(name, cmd, logdir, lambda code: _images_read(out) if code == 0 else 0, corpus)


def naive_script_build(corpus: str, out: str, resize: str, shard_size: str, logdir: str, name: str,
                       images: int) -> BuildRun:
    """naive_convert in a subprocess (python -m pipeline.bench --naive-script), memory sampled."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.bench", "--naive-script", corpus, out, "--resize", resize,
           "--shard-size", shard_size]
    return _run_build(name, cmd, logdir, lambda code: images if code == 0 else 0, corpus)


class _NaiveShards:
    """Plain tarfile shards, a new one when the current one passes `shard_size` bytes."""

    def __init__(self, out: str, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.tar, self.split, self.count, self.written = None, None, 0, 0

    def add(self, split: str, key: str, jpeg: bytes, label: int) -> None:
        if self.tar is None or split != self.split or self.written >= self.shard_size:
            self.close()
            self.count = 0 if split != self.split else self.count + 1
            self.split, self.written = split, 0
            self.tar = tarfile.open(os.path.join(self.out, f"{split}-{self.count:06d}.tar"), "w")
        for name, payload in ((f"{key}.jpg", jpeg), (f"{key}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            self.tar.addfile(info, io.BytesIO(payload))
            self.written += 512 + len(payload)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _val_labels(devkit: str) -> list[int]:
    with tarfile.open(devkit) as tar:
        member = next(m for m in tar if m.name.endswith("ILSVRC2012_validation_ground_truth.txt"))
        return [int(x) - 1 for x in tar.extractfile(member).read().split()]


def naive_convert(source: str, out: str, resize: str, shard_size: int) -> int:
    """A hand-written converter: one process, tarfile over the archives, full decode, tarfile shards.
    Returns the number of images written."""
    from pipeline.sample import DEVKIT_TAR, TRAIN_TAR, VAL_TAR

    os.makedirs(out, exist_ok=True)
    shards, written = _NaiveShards(out, shard_size), 0
    with tarfile.open(os.path.join(source, TRAIN_TAR)) as outer:
        class_tars = [m for m in outer if m.isfile()]
        labels = {m.name[:-4]: i for i, m in enumerate(sorted(class_tars, key=lambda m: m.name))}
        for class_tar in class_tars:
            with tarfile.open(fileobj=outer.extractfile(class_tar)) as inner:
                for m in inner:
                    jpeg = naive_kernel(inner.extractfile(m).read(), resize)
                    shards.add("train", m.name[:-5], jpeg, labels[class_tar.name[:-4]])
                    written += 1
    truth = _val_labels(os.path.join(source, DEVKIT_TAR))
    with tarfile.open(os.path.join(source, VAL_TAR)) as tar:
        for m in tar:
            key = m.name[:-5]
            jpeg = naive_kernel(tar.extractfile(m).read(), resize)
            shards.add("val", key, jpeg, truth[int(key.rsplit("_", 1)[1]) - 1])
            written += 1
    shards.close()
    return written


# ------------------------------------------------------------------------------------------------
# img2dataset (optional): the same files through a popular downloader, in its own venv

_I2D_RESIZE = {"longer": "keep_ratio_largest", "shorter": "keep_ratio"}


def _img2dataset_venv(root: str, say) -> Optional[str]:
    venv = os.path.join(root, "img2dataset-venv")
    exe = os.path.join(venv, "bin", "img2dataset")
    if os.path.exists(exe):
        return exe
    say(f"installing img2dataset into {venv} (never into the project's venv) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "img2dataset"], check=True,
                       timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        say(f"  img2dataset could not be installed: {e}")
        return None
    return exe if os.path.exists(exe) else None


def img2dataset_run(images: list[SourceImage], name: str, resize: str, root: str, say) -> dict:
    """img2dataset over file:// URLs of `images` (the corpus `name`, extracted to files once):
    {"images", "wall_s", "images_per_s", "memory"} or {"error": ...}."""
    exe = _img2dataset_venv(root, say)
    if exe is None:
        return {"error": "not installable here"}
    work = os.path.join(root, "img2dataset", name)
    files, urls = os.path.join(work, "files"), os.path.join(work, "urls.txt")
    if not os.path.exists(urls):
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(files)
        for image in images:
            with open(os.path.join(files, f"{image.key}.jpg"), "wb") as f:
                f.write(image.data)
        with open(urls + ".tmp", "w") as f:
            f.writelines(f"file://{os.path.abspath(os.path.join(files, i.key))}.jpg\n" for i in images)
        os.replace(urls + ".tmp", urls)
    tag = f"{name}-{resize.replace(':', '')}"
    out = os.path.join(root, "builds", f"img2dataset-{tag}")
    shutil.rmtree(out, ignore_errors=True)
    mode, _, n = resize.partition(":")
    cmd = [exe, "--url_list", urls, "--input_format", "txt", "--output_folder", out, "--output_format",
           "webdataset", "--image_size", n, "--resize_mode", _I2D_RESIZE[mode], "--resize_only_if_bigger", "True",
           "--encode_quality", str(QUALITY), "--processes_count", str(cpu_count()), "--thread_count", "4",
           "--number_sample_per_shard", "1000", "--enable_wandb", "False", "--distributor", "multiprocessing"]
    log = os.path.join(root, "logs", f"img2dataset-{tag}.log")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # no update check over the network
    warm_page_cache(files)  # as for every timed run
    try:
        run = run_sampled(cmd, log, timeout=1800, env=env)
    except OSError as e:
        return {"error": str(e)}
    done = _img2dataset_successes(out)
    if run.exit_code != 0 or not done:
        return {"error": f"exit {run.exit_code}, see {log}", "wall_s": round(run.wall_s, 3)}
    return {"images": done, "wall_s": round(run.wall_s, 3), "cpu_s": round(run.cpu_s, 3),
            "images_per_s": round(done / run.wall_s, 2), "memory": run.memory.as_dict(), "log": log}


def img2dataset_bench(corpus: str, images: list[SourceImage], startup_corpus: str, resize: str, root: str,
                      say) -> dict:
    """img2dataset end to end, and its steady state (its own start-up measured on the 20-image corpus)."""
    startup = img2dataset_run(load_images(startup_corpus), os.path.basename(startup_corpus), resize, root, say)
    run = img2dataset_run(images, os.path.basename(corpus), resize, root, say)
    if "error" in run or "error" in startup:
        return {**run, "startup": startup}
    steady_s = run["wall_s"] - startup["wall_s"]
    return {**run, "startup_s": startup["wall_s"],
            "steady_state_images_per_s": round(run["images"] / steady_s, 2) if steady_s > 0 else None}


def _img2dataset_successes(out: str) -> int:
    total = 0
    for name in os.listdir(out) if os.path.isdir(out) else ():
        if name.endswith("_stats.json"):
            with open(os.path.join(out, name)) as f:
                total += json.load(f).get("successes", 0)
    return total


# ------------------------------------------------------------------------------------------------
# Reports and targets


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a and b else None


def make_mode_report(resize: str, kernels: dict, profile: dict, pipeline: dict, startup: dict, naive: dict,
                     cores: int, img2dataset: Optional[dict] = None) -> dict:
    """Everything measured for one --resize, with the derived rates and ratios."""
    ref = kernels["reference"]["images_per_s"]
    all_cores = kernels.get("reference_all_cores", {}).get("images_per_s")
    images = pipeline["images"]
    steady_s = pipeline["wall_s"] - startup["wall_s"]
    steady = round(images / steady_s, 2) if steady_s > 0 and images else None
    # The same from CPU time: what `cores` idle cores would give, perfectly balanced. Other users'
    # load slows the wall-clock figure, much less this one.
    cpu_s = pipeline["cpu_s"] - startup["cpu_s"]
    cpu_bound = round(cores * images / cpu_s, 2) if cpu_s > 0 and images else None
    end_to_end = pipeline["images_per_s"] if images else None
    return {
        "resize": resize,
        "kernels": kernels,
        "profile": profile,
        "pipeline": {**pipeline, "steady_state_images_per_s": steady, "startup_s": startup["wall_s"],
                     "steady_state_cpu_ms_per_image": _ms_per_image(cpu_s, images),
                     "cpu_bound_images_per_s": cpu_bound},
        "startup": startup,
        "naive_script": naive,
        "img2dataset": img2dataset,
        "ratios": {
            # the target's ratio: against the reference run on all cores over the same images
            "steady_state_vs_cores_x_reference": _ratio(steady, all_cores),
            # the same against `cores` x the one-core figures (the sample's best per image, best pass)
            "steady_state_vs_cores_x_one_core_reference": _ratio(steady, cores * ref),
            "steady_state_vs_cores_x_one_core_reference_best_pass": _ratio(
                steady, cores * kernels["reference"].get("best_pass_images_per_s", ref)),
            "cpu_bound_vs_cores_x_one_core_reference": _ratio(cpu_bound, cores * ref),
            "project_vs_reference": _ratio(kernels["project"]["images_per_s"], ref),
            "project_vs_naive": _ratio(kernels["project"]["images_per_s"], kernels["naive"]["images_per_s"]),
            "reference_vs_naive": _ratio(ref, kernels["naive"]["images_per_s"]),
            "pipeline_vs_naive_script": _ratio(end_to_end, naive["images_per_s"] if naive["images"] else None),
            "pipeline_vs_img2dataset": _ratio(end_to_end, (img2dataset or {}).get("images_per_s")),
        },
    }


def _target(name: str, value: Optional[float], op: str, threshold: float, note: str = "") -> dict:
    ok = value is not None and (value >= threshold if op == ">=" else value <= threshold if op == "<=" else
                                value < threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "pass": ok, "note": note}


def check_targets(report: dict) -> list[dict]:
    """The targets, PASS/FAIL each (informative)."""
    modes, images = report["modes"], report["corpus"]["images"]
    short = modes.get("shorter:256")
    targets = []
    if short:
        targets.append(_target("steady-state pipeline / (cores x reference), shorter:256",
                               short["ratios"]["steady_state_vs_cores_x_reference"], ">=", 0.8))
    for resize, m in modes.items():
        targets.append(_target(f"project kernel / reference, {resize}", m["ratios"]["project_vs_reference"], ">=", 1.0))
        targets.append(_target(f"project kernel / naive kernel, {resize}", m["ratios"]["project_vs_naive"], ">=", 1.2))
    if report["default_vs_shorter256"]:
        targets.append(_target("default path / shorter:256 path (pipeline steady-state images/s)",
                               report["default_vs_shorter256"]["pipeline_steady_state"], ">=", 1.5))
    for resize, m in modes.items():
        targets.append(_target(f"pipeline / naive script end to end, {resize}",
                               m["ratios"]["pipeline_vs_naive_script"], ">=", 1.7,
                               f"the target is for 12k images; measured at {images}"))
        targets.append(_target(f"largest worker peak RSS (GiB), {resize}",
                               round(m["pipeline"]["memory"]["worker_rss"] / GiB, 3), "<=", 1.0))
        targets.append(_target(f"start-up (s), {resize}", m["startup"]["wall_s"], "<", 5.0))
    scaling = report.get("scaling")
    if scaling:
        sizes = f"{scaling['runs'][0]['images']} and {scaling['runs'][-1]['images']} images"
        targets.append(_target("peak RSS of the process tree projected to ImageNet-1k (GiB)",
                               round(scaling["tree_rss"]["projected_imagenet_1k"] / GiB, 2), "<=", 12.0,
                               f"half this machine's 24 GB; from {sizes}"))
        change = scaling["steady_state_change"]
        targets.append(_target("steady-state time per image, change between the two sizes",
                               abs(change) if change is not None else None, "<=", 0.15, sizes))
    return targets


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model, "cores": cpu_count(), "python": platform.python_version(), "pil": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"), "loadavg": list(os.getloadavg())}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def print_mode(m: dict, cores: int) -> None:
    k, p, s, n = m["kernels"], m["pipeline"], m["startup"], m["naive_script"]
    print(f"\n=== --resize {m['resize']} ===")
    print(f"kernels, one core, {k['reference']['images']} images in memory (each image's best of "
          f"{k['reference']['repeats']}):")
    for name in ("reference", "project", "naive"):
        print(f"  {name:<10} {k[name]['images_per_s']:>9.1f} images/s  {k[name]['ms_per_image']:7.3f} ms/image  "
              f"(best whole pass {k[name].get('best_pass_images_per_s', 0):.1f} images/s, "
              f"median pass {k[name]['median_pass_s']:.2f} s)")
    if "reference_all_cores" in k:
        a = k["reference_all_cores"]
        print(f"  reference on all {a['processes']} cores at once, the build's {a['images']} images, one pass after "
              f"each build: {a['images_per_s']:.1f} images/s (runs: {', '.join(f'{x:.1f}' for x in a['runs_images_per_s'])}; "
              f"per process {', '.join(f'{x:.1f}' for x in a['per_process_images_per_s'])})")
    prof = m["profile"]
    print(f"profile of the project's per-image work ({prof['images']} images, ms/image, share):")
    for phase in PHASES:
        print(f"  {phase:<13}{prof['ms_per_image'][phase]:>8.3f}  {100 * prof['share'][phase]:5.1f}%   "
              f"{prof['notes'][phase]}")
    print(f"  {'total':<13}{prof['total_ms_per_image']:>8.3f}")
    print(f"builds, all {cores} cores:")
    runs = lambda r: f"  (runs: {', '.join(f'{w:.2f}' for w in r['walls_s'])} s)" if r.get("walls_s") else ""  # noqa: E731
    print(f"  start-up (20-image build)      {s['wall_s']:8.2f} s{runs(s)}")
    print(f"  pipeline    {p['images']:>6} images {p['wall_s']:8.2f} s  end to end {p['images_per_s']:8.1f} images/s  "
          f"steady state {p['steady_state_images_per_s'] or 0:8.1f} images/s{runs(p)}")
    print(f"    steady-state CPU {p['steady_state_cpu_ms_per_image']} ms/image (all processes) -> "
          f"{p['cpu_bound_images_per_s']} images/s on {cores} idle cores; start-up CPU {s['cpu_s']:.1f} s; "
          f"machine load at start {p['loadavg_at_start']} (start-up build {s['loadavg_at_start']})")
    print(f"  naive script {n['images']:>5} images {n['wall_s']:8.2f} s  end to end {n['images_per_s']:8.1f} images/s"
          f"{runs(n)}")
    i2d = m.get("img2dataset")
    if i2d and "error" in i2d:
        print(f"  img2dataset  failed: {i2d['error']}")
    elif i2d:
        print(f"  img2dataset {i2d['images']:>6} images {i2d['wall_s']:8.2f} s  end to end {i2d['images_per_s']:8.1f} "
              f"images/s  steady state {i2d['steady_state_images_per_s'] or 0:8.1f} images/s "
              f"(its start-up {i2d['startup_s']:.2f} s)")
    for run in (p, n):
        mem = run["memory"]
        print(f"  peak RSS {run['name']:<28} tree {_mib(mem['tree_rss']):>10} ({mem['tree_processes']} processes)  "
              f"largest worker {_mib(mem['worker_rss']):>9}  driver {_mib(mem['root_rss']):>9}")
    r = m["ratios"]
    print("ratios:")
    print(f"  steady-state / (cores x reference)  {r['steady_state_vs_cores_x_reference']}  "
          f"(the reference on all cores over the build's images; against {cores} x the one-core sample: "
          f"{r['steady_state_vs_cores_x_one_core_reference']}, best whole pass "
          f"{r['steady_state_vs_cores_x_one_core_reference_best_pass']}, from CPU time "
          f"{r['cpu_bound_vs_cores_x_one_core_reference']})")
    print(f"  project kernel / reference          {r['project_vs_reference']}")
    print(f"  project kernel / naive kernel       {r['project_vs_naive']}")
    print(f"  reference / naive kernel            {r['reference_vs_naive']}")
    print(f"  pipeline / naive script (e2e)       {r['pipeline_vs_naive_script']}")
    if r["pipeline_vs_img2dataset"]:
        print(f"  pipeline / img2dataset (e2e)        {r['pipeline_vs_img2dataset']}")


def print_targets(targets: list[dict]) -> None:
    print("\ntargets (informative):")
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        note = f"  ({t['note']})" if t["note"] else ""
        print(f"  {verdict}  {t['name']}: {t['value']} {t['op']} {t['threshold']}{note}")


# ------------------------------------------------------------------------------------------------
# The runs


@dataclasses.dataclass
class Settings:
    images: int
    out: str
    resizes: tuple
    kernel_images: int
    repeats: int
    shard_size: str
    seed: int
    img2dataset: bool
    scaling_images: int = 0  # train images of the second, smaller build (0: none)
    build_repeats: int = 1  # each build runs this many times, the fastest counts

    @property
    def corpus_cache(self) -> str:
        return os.path.join(self.out, "corpus")

    @property
    def logdir(self) -> str:
        return os.path.join(self.out, "logs")

    def build_dir(self, name: str) -> str:
        return os.path.join(self.out, "builds", name)


STARTUP_SPEC = CorpusSpec(train=18, val=2, classes=2)  # the 20-image corpus that measures start-up


def one_core_figures(resize: str, s: Settings, images: list[SourceImage]) -> tuple[dict, dict]:
    """The kernels and the profile of the project's per-image work, on one pinned core."""
    print(f"\n[{resize}] kernels on one core ...", flush=True)
    sample = spread_sample(images, s.kernel_images)
    with one_cpu():
        kernels = time_kernels(kernels_for(resize), [i.data for i in sample], s.repeats)
        profile = profile_phases(sample, resize, s.repeats, os.path.join(s.out, "profile", resize.replace(":", "")))
    return kernels, profile


def build_round(resizes: list[str], s: Settings, corpus: str, datas: list[bytes], startup_corpus: str,
                small_corpus: Optional[str]) -> dict:
    """Every timed run once: per mode the start-up build, the build, the reference on all cores
    over the same images right after it, the naive script; then the smaller scaling build. The
    bench runs rounds of these rather than each build several times in a row: this machine has
    slow minutes (10-20% slower), and interleaved they fall on every figure alike instead of on
    whichever build was running (a ratio of two figures taken minutes apart moved by 20%)."""
    runs = {}
    for resize in resizes:
        tag = resize.replace(":", "")
        runs[resize] = {
            "startup": pipeline_build(startup_corpus, s.build_dir(f"startup-{tag}"), resize, s.shard_size,
                                      s.logdir, f"startup-{tag}").as_dict(),
            "pipeline": pipeline_build(corpus, s.build_dir(f"pipeline-{tag}"), resize, s.shard_size, s.logdir,
                                       f"pipeline-{tag}").as_dict(),
            "reference": reference_on_all_cores(datas, resize, cpu_count()),
            "naive": naive_script_build(corpus, s.build_dir(f"naive-{tag}"), resize, s.shard_size, s.logdir,
                                        f"naive-script-{tag}", len(datas)).as_dict(),
        }
    if small_corpus:
        runs["scaling-small"] = pipeline_build(small_corpus, s.build_dir("scaling-small"), DEFAULT_RESIZE,
                                               s.shard_size, s.logdir, "scaling-small").as_dict()
    return runs


def mode_result(resize: str, one_core: tuple[dict, dict], rounds: list[dict], i2d: Optional[dict]) -> dict:
    """A mode's report from its one-core figures and the best of its runs in every round."""
    kernels, profile = one_core
    runs = [r[resize] for r in rounds]
    startup, pipeline, naive = (best_run([r[name] for r in runs]) for name in ("startup", "pipeline", "naive"))
    references = [r["reference"] for r in runs]
    kernels = {**kernels, "reference_all_cores": {**max(references, key=lambda r: r["images_per_s"]),
                                                  "runs_images_per_s": [r["images_per_s"] for r in references]}}
    for run in (startup, pipeline, naive):
        if run["exit_code"] != 0:
            print(f"warning: {run['name']} exited {run['exit_code']}: see {run['log']}")
    return make_mode_report(resize, kernels, profile, pipeline, startup, naive, cpu_count(), i2d)


def best_run(runs: list[dict]) -> dict:
    """The fastest of a build's runs (as timeit takes the best of its repeats: other users of
    this machine only ever slow a run down), with every run's wall time and the highest peak
    memory of them all."""
    best = min(runs, key=lambda r: (r["exit_code"] != 0, r["wall_s"]))
    peak = max(runs, key=lambda r: r["memory"]["tree_rss"])["memory"]
    return {**best, "walls_s": [r["wall_s"] for r in runs], "memory": peak}


def run_bench(s: Settings) -> dict:
    started = time.perf_counter()
    os.makedirs(s.logdir, exist_ok=True)
    spec = CorpusSpec.for_images(s.images, s.seed)
    corpus, stats = ensure_corpus(spec, s.corpus_cache)
    startup_corpus, _ = ensure_corpus(STARTUP_SPEC, s.corpus_cache)
    scaling = DEFAULT_RESIZE in s.resizes and s.scaling_images and s.scaling_images < s.images
    small_corpus = ensure_corpus(CorpusSpec.for_images(s.scaling_images, s.seed), s.corpus_cache)[0] if scaling else None
    images = load_images(corpus)
    print(f"corpus: {corpus}\n  {stats['images']} images ({spec.train} train in {spec.classes} classes, {spec.val} val), "
          f"mean {stats['mean_bytes'] / 1000:.0f} KB, median {stats['median_bytes'] / 1000:.0f} KB; longer side "
          f"450-520 px {100 * stats['share_longer_450_520']:.0f}%, under 400 {100 * stats['share_small_under_400']:.0f}%, "
          f"over 1000 {100 * stats['share_over_1000']:.1f}%")
    one_core = {resize: one_core_figures(resize, s, images) for resize in s.resizes}
    datas, rounds, count = [i.data for i in images], [], max(1, s.build_repeats)
    for number in range(1, count + 1):
        print(f"\n[round {number}/{count}] every build once"
              f"{f', then {s.scaling_images} images' if scaling else ''} ...", flush=True)
        rounds.append(build_round(list(s.resizes), s, corpus, datas, startup_corpus, small_corpus))
    modes = {}
    for resize in s.resizes:
        i2d = img2dataset_bench(corpus, images, startup_corpus, resize, s.out, print) if s.img2dataset else None
        modes[resize] = mode_result(resize, one_core[resize], rounds, i2d)
    scaling_report = None
    if scaling:
        small = best_run([r["scaling-small"] for r in rounds])
        scaling_report = memory_scaling([small, modes[DEFAULT_RESIZE]["pipeline"]], modes[DEFAULT_RESIZE]["startup"])
    report = make_report(s, {"path": corpus, **stats}, modes, time.perf_counter() - started, scaling_report)
    print_report(report)
    path = _write_report(s.out, "bench.json", report)
    print(f"\nwritten {path} ({report['bench_wall_s']} s)")
    return report


def _write_report(folder: str, name: str, report: dict) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


def make_report(s: Settings, corpus: dict, modes: dict, wall_s: float, scaling: Optional[dict] = None) -> dict:
    """The whole report (what bench.json holds): settings, corpus, every mode, the targets."""
    report = {"machine": machine_info(), "settings": dataclasses.asdict(s), "corpus": corpus, "modes": modes,
              "scaling": scaling, "default_vs_shorter256": None, "targets": None, "bench_wall_s": round(wall_s, 1)}
    if "shorter:256" in modes and DEFAULT_RESIZE in modes:
        default, short = modes[DEFAULT_RESIZE], modes["shorter:256"]
        report["default_vs_shorter256"] = {
            "pipeline_steady_state": _ratio(default["pipeline"]["steady_state_images_per_s"],
                                            short["pipeline"]["steady_state_images_per_s"]),
            "project_kernel": _ratio(default["kernels"]["project"]["images_per_s"],
                                     short["kernels"]["project"]["images_per_s"]),
        }
    report["targets"] = check_targets(report)
    return report


def print_report(report: dict) -> None:
    cores = report["machine"]["cores"]
    for m in report["modes"].values():
        print_mode(m, cores)
    d = report["default_vs_shorter256"]
    if d:
        print(f"\ndefault path / shorter:256 path: pipeline steady state {d['pipeline_steady_state']}, "
              f"project kernel {d['project_kernel']}")
    if report.get("scaling"):
        print_memory_scaling(report["scaling"])
    print_targets(report["targets"])


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def _ms_per_image(seconds: float, images: int) -> Optional[float]:
    return round(1000 * seconds / images, 3) if images else None


def _sized_run(run: dict, startup: dict) -> dict:
    """A build's figures with its steady-state cost per image (its start-up build subtracted)."""
    return {**run, "steady_state_ms_per_image": _ms_per_image(run["wall_s"] - startup["wall_s"], run["images"]),
            "steady_state_cpu_ms_per_image": _ms_per_image(run["cpu_s"] - startup["cpu_s"], run["images"])}


def memory_scaling(runs: list[dict], startup: dict) -> dict:
    """Peak RSS and steady-state time per image against corpus size: the per-sample slope of each
    memory figure (least squares over the runs), projected to ImageNet-1k and -21k, and how much
    the steady-state time per image moves between the smallest and the largest run."""
    runs = sorted((_sized_run(r, startup) for r in runs), key=lambda r: r["images"])
    xs = [r["images"] for r in runs]
    report = {"runs": runs, "startup_s": startup["wall_s"]}
    for what in ("tree_rss", "worker_rss", "root_rss"):
        slope, intercept = _fit_line(xs, [r["memory"][what] for r in runs])
        report[what] = {"bytes_per_sample": round(slope, 1), "intercept_bytes": round(intercept),
                        "projected_imagenet_1k": round(intercept + slope * IMAGENET_1K),
                        "projected_imagenet_21k": round(intercept + slope * IMAGENET_21K)}
    small, large = runs[0]["steady_state_ms_per_image"], runs[-1]["steady_state_ms_per_image"]
    report["size_ratio"] = round(xs[-1] / xs[0], 2)
    report["steady_state_change"] = round(large / small - 1, 3) if small and large else None
    return report


def print_memory_scaling(m: dict) -> None:
    print(f"\nmemory and time against corpus size (start-up {m['startup_s']:.2f} s subtracted):")
    for r in m["runs"]:
        mem = r["memory"]
        print(f"  {r['images']:>7} images  wall {r['wall_s']:7.2f} s  steady state {r['steady_state_ms_per_image']} ms/image "
              f"(CPU {r['steady_state_cpu_ms_per_image']} ms/image, load {r['loadavg_at_start']})  "
              f"peak tree {_mib(mem['tree_rss'])}  largest worker {_mib(mem['worker_rss'])}  driver {_mib(mem['root_rss'])}")
    for what, label in (("tree_rss", "tree"), ("worker_rss", "largest worker"), ("root_rss", "driver")):
        f = m[what]
        print(f"  {label:<15} slope {f['bytes_per_sample']:>10,.0f} bytes/sample -> ImageNet-1k "
              f"{f['projected_imagenet_1k'] / GiB:8.2f} GiB, ImageNet-21k {f['projected_imagenet_21k'] / GiB:8.2f} GiB")
    if m["steady_state_change"] is not None:
        print(f"  steady-state time per image, {m['size_ratio']}x the images: {100 * m['steady_state_change']:+.1f}%")


def run_memory(s: Settings, sizes: list[int]) -> dict:
    """Peak RSS against corpus size (longer:512): the per-sample slope, projected to ImageNet."""
    os.makedirs(s.logdir, exist_ok=True)
    startup_corpus, _ = ensure_corpus(STARTUP_SPEC, s.corpus_cache)
    startup = pipeline_build(startup_corpus, s.build_dir("startup-memory"), DEFAULT_RESIZE, s.shard_size,
                             s.logdir, "startup-memory").as_dict()
    runs = []
    for n in sizes:
        spec = CorpusSpec.for_images(n, s.seed)
        corpus, _ = ensure_corpus(spec, s.corpus_cache)
        print(f"building {spec.images} images ({DEFAULT_RESIZE}) ...", flush=True)
        run = pipeline_build(corpus, s.build_dir(f"memory-{n}"), DEFAULT_RESIZE, s.shard_size, s.logdir,
                             f"memory-{n}")
        if run.exit_code != 0:
            print(f"warning: the build of {n} exited {run.exit_code}: see {run.log}")
        runs.append({**run.as_dict(), "train_images": n})
    report = {"machine": machine_info(), "shard_size": s.shard_size, "resize": DEFAULT_RESIZE,
              "startup": startup, **memory_scaling(runs, startup)}
    print_memory_scaling(report)
    print(f"written {_write_report(s.out, 'bench-memory.json', report)}")
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help=f"train images (default {DEFAULT_IMAGES}; 300 with --quick)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="300 images, 100 kernel images, one pass: a try-out")
    p.add_argument("--resize", action="append", default=None, metavar="SPEC",
                   help=f"resize to measure (repeatable; default {' and '.join(RESIZES)})")
    p.add_argument("--kernel-images", type=int, default=None, help="images timed per kernel (default 600)")
    p.add_argument("--repeats", type=int, default=None, help="passes per kernel, best taken (default 3)")
    p.add_argument("--shard-size", default="16MB", help="the builds' --shard-size (default 16MB)")
    p.add_argument("--build-repeats", type=int, default=None,
                   help="rounds of timed runs, every build once a round; the fastest run counts "
                        "(default 3; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img2dataset", action="store_true",
                   help="also run img2dataset (installed into OUT/img2dataset-venv on first use)")
    p.add_argument("--scaling-images", type=int, default=None,
                   help=f"train images of the smaller build that measures scaling (default {DEFAULT_SCALING_IMAGES}; "
                        "0 with --quick; 0: none)")
    p.add_argument("--memory", action="store_true", help="peak RSS against corpus size, projected to ImageNet")
    p.add_argument("--sizes", default="2400,12000", help="train images of the --memory builds (default 2400,12000)")
    p.add_argument("--naive-script", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # before Beam's import, which warns about optional clients
    resizes = tuple(a.resize or RESIZES)
    if a.naive_script:
        from transforms.sharding import parse_byte_size

        n = naive_convert(*a.naive_script, resizes[0], parse_byte_size(a.shard_size))
        print(f"{n} images")
        return 0
    s = Settings(images=a.images or (300 if a.quick else DEFAULT_IMAGES), out=a.out, resizes=resizes,
                 kernel_images=a.kernel_images or (100 if a.quick else 600), repeats=a.repeats or (1 if a.quick else 3),
                 shard_size=a.shard_size, seed=a.seed, img2dataset=a.img2dataset,
                 scaling_images=a.scaling_images if a.scaling_images is not None else
                 (0 if a.quick else DEFAULT_SCALING_IMAGES),
                 build_repeats=a.build_repeats or (1 if a.quick else 3))
    if a.memory:
        run_memory(s, [int(x) for x in a.sizes.split(",")])
    else:
        run_bench(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
