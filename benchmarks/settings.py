"""The benchmark's settings and its fixed figures: the sizes it runs at and the yardsticks it reports against."""
from __future__ import annotations

import dataclasses
import os

__all__ = ["DEFAULT_IMAGES", "DEFAULT_SCALING_IMAGES", "DEFAULT_OUT", "RESIZES", "DEFAULT_RESIZE", "QUALITY", "GiB",
           "IMAGENET_1K", "IMAGENET_21K", "Settings"]

DEFAULT_IMAGES = 12000  # the size that the end-to-end target is set at
DEFAULT_SCALING_IMAGES = 3000  # the smaller build: 4x fewer
DEFAULT_OUT = "bench-out"
RESIZES = ("shorter:256", "longer:512")  # The second is the build's default.
DEFAULT_RESIZE = "longer:512"
QUALITY = 90
GiB = 1 << 30
IMAGENET_1K = 1_331_167  # 1,281,167 train and 50,000 val
IMAGENET_21K = 14_197_122


@dataclasses.dataclass
class Settings:
    """What one `make bench` run measures, and where it writes."""

    images: int
    out: str
    resizes: tuple
    kernel_images: int
    repeats: int
    shard_size: str
    seed: int
    img2dataset: bool
    scaling_images: int = 0  # the train images of the second, smaller build (0: none)
    build_repeats: int = 1  # Each build runs this many times, and the fastest counts.

    @property
    def corpus_cache(self) -> str:
        return os.path.join(self.out, "corpus")

    @property
    def logdir(self) -> str:
        return os.path.join(self.out, "logs")

    def build_dir(self, name: str) -> str:
        return os.path.join(self.out, "builds", name)
