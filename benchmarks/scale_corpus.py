"""The scale benchmark's corpora: official-layout releases of tiny unique JPEGs (benchmarks/scale.py).

A release of N samples is a train tar of 1,000 per-class tars and a flat val tar of 2% of the
samples, with the devkit, written once under ROOT/corpus-N-.../ and reused afterwards.

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

import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
from typing import Optional

import numpy as np
from PIL import Image

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
from transforms.keys import val_key
from transforms.storage import atomic_write

__all__ = ["GENERATOR_VERSION", "tiny_jpeg", "ScaleCorpus", "ensure_scale_corpus"]

# Bump it when the images or the layout the generator writes change: the cache key includes it.
GENERATOR_VERSION = 1
CLASSES = 1000  # ImageNet-1k's classes: the official layout labels by them
VAL_SHARE = 0.02  # the share of the samples in the flat val tar (at most the devkit's 50,000)

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
