"""A profile of the project's per-image work, phase by phase, so that the next optimisation is obvious.

The phases are the read, the decode, the resize, the perceptual hash, the encode, the kernel's own
checks, sha256, the index row's JSON, the tar writing and the Parquet writing, each taken as
write_shard takes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import statistics
import time

from PIL import Image

from benchmarks.corpus import SourceImage
from benchmarks.kernels import encode_jpeg, per_image_best
from benchmarks.settings import QUALITY
from transforms.image import ImageOptions, ProcessedImage, ResizeSpec, process_image
from transforms.index import write_index_file
from transforms.layout import OutputLayout
from transforms.phash import phash_of, to_int64
from transforms.schema import IndexRow
from transforms.shard_writer import ShardTarWriter, sample_json
from transforms.storage import ArchiveReader

__all__ = ["PHASES", "profile_phases"]

PHASES = ("read", "decode", "resize", "phash", "encode", "kernel_other", "sha256", "json", "tar", "parquet")
_PHASE_NOTES = {
    "read": "ranged read of the member from its archive (ArchiveReader, page cache)",
    "decode": "header + DCT-scaled decode (re-encoded images) or the 1/8 luma validation decode (kept ones)",
    "resize": "Lanczos from the drafted image to the target",
    "phash": "the perceptual hash: of the 1/8 luma (kept images) or of the stored pixels (re-encoded ones)",
    "encode": "JPEG q90",
    "kernel_other": "process_image minus decode/resize/phash/encode: probing, EXIF, checks",
    "sha256": "sha256 of the source bytes",
    "json": "the sample's index row and its .json (IndexRow -> JSON)",
    "tar": "three tar members (.jpg, .cls, .json) to the shard file, with the shard's running sha256",
    "parquet": "the shard's index rows to Parquet (zstd), per row",
}


class _Clock:
    """The time spent per phase on one image."""

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
    """The project's decode, resize and encode steps for one image, as transforms/image.py takes them."""
    im: Image.Image = Image.open(io.BytesIO(data))
    if not reencoded:  # The image is kept byte for byte: it is only validated, by a 1/8-scale luma decode.
        im.draft("L", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
        clock.lap("decode")
        phash_of(im, reduced_by=8)
        clock.lap("phash")
        return
    drafted = im.draft(None, target) if target != im.size else None
    im.load()
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    clock.lap("decode")
    if im.size != target:
        im = im.resize(target, Image.Resampling.LANCZOS, box=drafted[1] if drafted else None)
    clock.lap("resize")
    phash_of(im)
    clock.lap("phash")
    encode_jpeg(im)
    clock.lap("encode")


def _index_row(image: SourceImage, processed: ProcessedImage, sha256: str, shard: str, offset: int) -> IndexRow:
    return IndexRow(
        key=image.key, split="train", shard=shard, offset=offset, size=len(processed.jpeg), label=0,
        wnid="n01440764", width=processed.width, height=processed.height, orig_width=processed.orig_width,
        orig_height=processed.orig_height, orig_format=processed.orig_format, orig_mode=processed.orig_mode,
        reencoded=processed.reencoded, sha256=sha256, duplicate_of=None,
        exif_orientation=processed.exif_orientation, boxes=(), source=f"{image.archive}/{image.key}.JPEG",
        phash=to_int64(processed.phash))


def _profile_pass(images: list[SourceImage], resize: str, workdir: str) -> tuple[list[dict], float]:
    """One pass over `images`, as write_shard does it: each image's seconds per phase (with
    "kernel" = process_image itself), and the seconds of writing the pass's Parquet index."""
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
            payload = sample_json(row)
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
    """The ms per image of each phase of the project's per-image work: each image's best of `repeats`
    passes, per phase. kernel_other = process_image's time less the decode, resize, hash and encode
    it contains (timed apart right after it, the same steps taken the same way)."""
    os.makedirs(workdir, exist_ok=True)
    passes, parquet = [], []
    for _ in range(repeats):
        per_image, parquet_s = _profile_pass(images, resize, workdir)
        passes.append(per_image)
        parquet.append(parquet_s)
    n = len(images)
    best = {p: sum(per_image_best([[img[p] for img in run] for run in passes])) for p in PHASES}
    best["parquet"] = min(parquet)
    kernel = sum(per_image_best([[img["kernel"] for img in run] for run in passes]))
    # The kernel's own overhead per image, from the same pass (a difference of best times would
    # carry the noise of four measurements): the median over the passes.
    other = [statistics.median(run[i]["kernel"] - run[i]["decode"] - run[i]["resize"] - run[i]["phash"]
                               - run[i]["encode"] for run in passes) for i in range(len(images))]
    best["kernel_other"] = max(0.0, sum(other))
    ms = {p: round(1000 * best[p] / n, 3) for p in PHASES}
    total = sum(ms.values())
    kernel_ms = 1000 * kernel / n
    return {"ms_per_image": ms, "total_ms_per_image": round(total, 3),
            "share": {p: round(ms[p] / total, 3) if total else 0.0 for p in PHASES},
            "process_image_ms": round(kernel_ms, 3), "images": n, "repeats": repeats,
            # Issue 15's yardstick: the perceptual hash against the per-image kernel time (target under 2%).
            "phash_share_of_kernel": round(1000 * best["phash"] / n / kernel_ms, 4) if kernel_ms else 0.0,
            "notes": _PHASE_NOTES}
