"""The naive script: a converter as one would write it by hand, to measure the build against.

It runs in one process: tarfile over the archives, a full decode of every image, tarfile shards.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Optional

from benchmarks.kernels import naive_kernel
from pipeline.sample import DEVKIT_TAR, TRAIN_TAR, VAL_TAR, read_member

__all__ = ["naive_convert"]


class _NaiveShards:
    """Plain tarfile shards, with a new one when the current one passes `shard_size` bytes."""

    def __init__(self, out: str, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.tar: Optional[tarfile.TarFile] = None
        self.split: Optional[str] = None
        self.count, self.written = 0, 0

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
        return [int(x) - 1 for x in read_member(tar, member).split()]


def naive_convert(source: str, out: str, resize: str, shard_size: int) -> int:
    """Convert the release under `source` to shards under `out` the hand-written way; return the
    number of images written."""
    os.makedirs(out, exist_ok=True)
    shards, written = _NaiveShards(out, shard_size), 0
    with tarfile.open(os.path.join(source, TRAIN_TAR)) as outer:
        class_tars = [m for m in outer if m.isfile()]
        labels = {m.name[:-4]: i for i, m in enumerate(sorted(class_tars, key=lambda m: m.name))}
        for class_tar in class_tars:
            with tarfile.open(fileobj=outer.extractfile(class_tar)) as inner:
                for m in inner:
                    jpeg = naive_kernel(read_member(inner, m), resize)
                    shards.add("train", m.name[:-5], jpeg, labels[class_tar.name[:-4]])
                    written += 1
    truth = _val_labels(os.path.join(source, DEVKIT_TAR))
    with tarfile.open(os.path.join(source, VAL_TAR)) as tar:
        for m in tar:
            key = m.name[:-5]
            jpeg = naive_kernel(read_member(tar, m), resize)
            shards.add("val", key, jpeg, truth[int(key.rsplit("_", 1)[1]) - 1])
            written += 1
    shards.close()
    return written
