"""The plan of a sample release: which classes and validation images, which names, and the planted faults.

The classes and validation images are chosen so that the real ground truth applies. Everything random is
drawn by a Planner from independent streams, so that the photos do not depend on the faults.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipeline.sample.archives import Member
from pipeline.sample.bundle import (
    EDGE_CMYK_YCCK,
    EDGE_EXIF_6,
    EDGE_GRAY,
    EDGE_PNG,
    EDGE_TRUNCATED,
    edge_bytes,
    ground_truth_ids,
)
from pipeline.sample.photos import (
    BOMB_SIZE,
    HTML_ERROR_PAGE,
    PhotoMaker,
    bomb_png,
    corrupt_png,
    encode,
    photo_reencoded,
)
from transforms.labels import ilsvrc2012_id_to_wnid

__all__ = ["TRAIN_FAULTS", "REAL_TRAIN_NAMES", "REAL_VAL_CMYK_INDEX", "VAL_FAULTS", "ValSlot", "ClassesAndVal",
           "choose_classes_and_val", "Planner"]

# The planted faults, as (case, variant). The train ones go round-robin over a shuffled class order.
TRAIN_FAULTS = (
    ("cmyk", ""),
    ("cmyk", "ycck"),
    ("png_as_jpeg", ""),
    ("grayscale", ""),
    ("grayscale", "bundled"),
    ("progressive", ""),
    ("exif_rotated", "bundled"),
    ("palette_alpha", ""),
    ("png16", ""),
    ("truncated", ""),
    ("truncated", "bundled"),
    ("empty", ""),
    ("not_an_image", ""),
    ("bomb", ""),
    ("corrupt", ""),
    ("unsupported_format", "ppm"),
    ("duplicate", ""),
    ("symlink", ""),
)
# The real names of such files in ILSVRC2012 (quirks.txt): a planted file takes one when its class is present.
REAL_TRAIN_NAMES = {
    ("png_as_jpeg", ""): ("n02105855_2933",),
    ("cmyk", ""): (
        "n01739381_1309", "n02077923_14822", "n02447366_23489", "n02492035_15739", "n02747177_10752",
        "n03018349_4028", "n03062245_4620", "n03347037_9675", "n03467068_12171", "n03529860_11437",
        "n03544143_17228", "n03633091_5218", "n03710637_5125", "n03961711_5286", "n04033995_2932",
        "n04258138_17003", "n04264628_27969", "n04336792_7448", "n04371774_5854", "n04596742_4225",
        "n07583066_647", "n13037406_4650",
    ),
}
REAL_VAL_CMYK_INDEX = 19877  # ILSVRC2012_val_00019877.JPEG is CMYK.

# The val faults take some of the validation slots (real, labelled indices); "unlabeled" gets an index past
# 50,000 instead.
VAL_FAULTS = (
    ("cmyk", ""),
    ("exif_rotated", ""),
    ("truncated", ""),
    ("unsupported_format", "ico"),
    ("duplicate", ""),
    ("hardlink", ""),
)


@dataclass(frozen=True)
class ValSlot:
    """A validation image of the release: its line in the real ground truth (1-based) and its class."""

    index: int
    wnid: str


class ClassesAndVal(NamedTuple):
    """The train classes (in the order the ground truth first names them) and the validation images."""

    classes: list[str]
    val: list[ValSlot]


def choose_classes_and_val(classes: int, val_images: int) -> ClassesAndVal:
    """The first `classes` distinct WNIDs met walking the real ground truth in order, and the first
    `val_images` lines of that file whose WNID is one of them (so the validation names are sparse, as
    in a real subset)."""
    gt = ground_truth_ids()
    id_to_wnid = ilsvrc2012_id_to_wnid()
    chosen: list[str] = []
    seen: set[str] = set()
    for ilsvrc_id in gt:
        wnid = id_to_wnid[ilsvrc_id]
        if wnid not in seen:
            seen.add(wnid)
            chosen.append(wnid)
            if len(chosen) == classes:
                break
    val: list[ValSlot] = []
    for i, ilsvrc_id in enumerate(gt, start=1):
        if len(val) == val_images:
            break
        wnid = id_to_wnid[ilsvrc_id]
        if wnid in seen:
            val.append(ValSlot(i, wnid))
    if len(val) < val_images:
        raise ValueError(f"the ground truth has only {len(val)} validation images of these {classes} classes")
    return ClassesAndVal(chosen, val)


class Planner:
    """Everything random, drawn from independent streams so that the photos do not depend on the faults."""

    def __init__(self, seed: int):
        self.photos = PhotoMaker(random.Random(f"imagenet-shards/sample/{seed}/photos"))
        self.faults = PhotoMaker(random.Random(f"imagenet-shards/sample/{seed}/faults"))
        self.rng = random.Random(f"imagenet-shards/sample/{seed}/plan")  # names, orders and placements
        self.train_numbers: dict[str, set[int]] = {}

    def train_name(self, wnid: str) -> str:
        """A new member name of the class tar of `wnid` (the numbers vary in width and leave gaps)."""
        used = self.train_numbers.setdefault(wnid, set())
        while True:
            n = int(10 ** self.rng.uniform(1.0, 4.7))  # from 10 to about 50,000
            if n not in used:
                used.add(n)
                return f"{wnid}_{n}.JPEG"

    def photo(self, name: str, key: str, allow_large: bool = True) -> Member:
        """A member holding the next photo variant."""
        data, src = self.photos.jpeg(self.photos.size(allow_large))
        return Member(name, key, "photo", data, reencoded=photo_reencoded(data), note=f"variant of {src}", photo=src)

    def fault(self, case: str, name: str, key: str, variant: str = "") -> Member:
        """The member (its bytes or its link) for one planted case."""
        f = self.faults
        small = lambda: f.size(allow_large=False)  # noqa: E731
        if case == "cmyk" and variant == "ycck":
            return Member(name, key, case, edge_bytes(EDGE_CMYK_YCCK), reencoded=True,
                          note=f"bundled {EDGE_CMYK_YCCK} (Adobe APP14 transform=2, YCCK)")
        if case == "cmyk":
            im, src = f.image(small(), "CMYK")
            return Member(name, key, case, encode(im, "JPEG", quality=f.rng.randint(85, 95)), reencoded=True,
                          note=f"CMYK JPEG written by PIL from {src}")
        if case == "png_as_jpeg":
            return Member(name, key, case, edge_bytes(EDGE_PNG), reencoded=True,
                          note=f"bundled {EDGE_PNG}: PNG data under a .JPEG name")
        if case == "grayscale" and variant == "bundled":
            return Member(name, key, case, edge_bytes(EDGE_GRAY), reencoded=True, note=f"bundled {EDGE_GRAY}")
        if case == "grayscale":
            data, src = f.jpeg(small(), "L")
            return Member(name, key, case, data, reencoded=True, note=f"1-component JPEG from {src}")
        if case == "progressive":
            data, src = f.jpeg(small(), progressive=True)
            return Member(name, key, case, data, reencoded=True, note=f"progressive JPEG from {src}")
        if case == "exif_rotated" and variant == "bundled":
            return Member(name, key, case, edge_bytes(EDGE_EXIF_6), reencoded=True, exif_orientation=6,
                          note=f"bundled {EDGE_EXIF_6}")
        if case == "exif_rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            data, src = f.jpeg(small(), exif=exif.tobytes())
            return Member(name, key, case, data, reencoded=True, exif_orientation=6,
                          note=f"baseline JPEG from {src} with EXIF Orientation=6")
        if case == "palette_alpha":
            im, src = f.image((240, 180) if f.rng.random() < 0.5 else (180, 240))
            pal = im.quantize(64)
            data = encode(pal, "PNG", transparency=f.rng.randrange(64))
            return Member(name, key, case, data, reencoded=True, note=f"palette PNG with tRNS from {src}")
        if case == "png16":
            im, src = f.image((200, 150), "L")
            arr = np.asarray(im, dtype=np.uint16) * 257 + np.uint16(f.rng.randrange(256))
            data = encode(Image.fromarray(arr), "PNG")
            return Member(name, key, case, data, reencoded=True, note=f"16-bit grayscale PNG from {src}")
        if case == "truncated" and variant == "bundled":
            return Member(name, key, case, edge_bytes(EDGE_TRUNCATED), note=f"bundled {EDGE_TRUNCATED}")
        if case == "truncated":
            data, src = f.jpeg(small())
            return Member(name, key, case, data[: len(data) // 2],
                          note=f"first half of a {len(data)}-byte JPEG from {src}")
        if case == "empty":
            return Member(name, key, case, b"", note="zero bytes")
        if case == "not_an_image":
            return Member(name, key, case, HTML_ERROR_PAGE.replace(b"%s", key.encode()),
                          note="an HTML 404 page saved as .JPEG")
        if case == "bomb":
            w, h = BOMB_SIZE
            return Member(name, key, case, bomb_png(), note=f"1-bit PNG declaring {w}x{h} = {w * h:,} pixels")
        if case == "corrupt":
            im, src = f.image((160, 120))
            return Member(name, key, case, corrupt_png(encode(im, "PNG"), f.rng),
                          note=f"PNG header of a crop of {src}, IDAT zlib data garbage (CRCs valid)")
        if case == "unsupported_format" and variant == "ico":
            im, src = f.image((64, 64))
            return Member(name, key, case, encode(im, "ICO", sizes=[(48, 48)]), note=f"ICO icon from {src}")
        if case == "unsupported_format":
            im, src = f.image((160, 120))
            return Member(name, key, case, encode(im, "PPM"), note=f"binary PPM (P6) from {src}")
        raise ValueError(f"unknown planted case {case!r}/{variant!r}")
