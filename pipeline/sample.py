"""Miniature ILSVRC2012 releases in the official layout: the demo's input and the tests' fixtures.

`make_sample_release(dest)` writes, under `dest`:

- ``ILSVRC2012_img_train.tar``: a tar of per-class tars ``<wnid>.tar`` (sorted), each holding flat
  ``<wnid>_<n>.JPEG`` members in a shuffled order (``n`` is not fixed width and not consecutive);
- ``ILSVRC2012_img_val.tar``: flat ``ILSVRC2012_val_%08d.JPEG`` members in a shuffled (not sorted) order;
- ``ILSVRC2012_devkit_t12.tar.gz``: ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (the
  real 50,000-line file), ``.../data/ILSVRC2012_validation_blacklist.txt`` and a short ``readme.txt``;
- ``ILSVRC2012_img_test_v10102019.tar`` (only when ``test_images > 0``): flat ``ILSVRC2012_test_%08d.JPEG``.

The classes and validation images are chosen so that the REAL ground truth applies: the train classes are
the first ``classes`` distinct WNIDs met walking the real ground truth in order, and the validation images
are the first indices of that file whose WNID is one of them (so validation names are sparse, as in a real
subset). Images are distinct variants (a random crop, resized to an ImageNet-like size) of the CC0 /
public-domain photos bundled in ``pipeline/data/photos`` (see ATTRIBUTION.md there).

With ``plant_faults=True`` the release also holds the oddities a converter must survive (CMYK and PNG data
named .JPEG, as in the real train tar; truncated, empty and non-image files; a decompression bomb; links; byte
duplicates; ...). Each member's expected fate is in ``SampleRelease.expected``.

The output is a pure function of the arguments (and of the Pillow/libjpeg build): two calls with the same
seed write byte-identical archives (fixed tar mtimes, owners and order; fixed gzip header).
"""
from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import importlib.resources
import io
import os
import posixpath
import random
import re
import struct
import sys
import tarfile
import time
import warnings
import zlib
from dataclasses import dataclass, replace
from dataclasses import field as dataclasses_field
from typing import Callable, Optional, Union

from PIL import Image

from transforms.labels import ilsvrc2012_id_to_wnid, imagenet_classes

__all__ = [
    "ExpectedSample",
    "SampleRelease",
    "make_sample_release",
    "export_layout",
    "TRAIN_TAR",
    "VAL_TAR",
    "DEVKIT_TAR",
    "TEST_TAR",
    "DEVKIT_GT_MEMBER",
    "DEVKIT_BLACKLIST_MEMBER",
    "PHOTOS",
    "PLANTED_CASES",
]

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
TEST_TAR = "ILSVRC2012_img_test_v10102019.tar"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
DEVKIT_GT_MEMBER = f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_BLACKLIST_MEMBER = f"{DEVKIT_DIR}/data/ILSVRC2012_validation_blacklist.txt"
DEVKIT_README_MEMBER = f"{DEVKIT_DIR}/readme.txt"

# The photos every image is derived from (CC0 / public domain; pipeline/data/photos/ATTRIBUTION.md).
PHOTOS = (
    "skimage_rocket.jpg",
    "skimage_hubble_deep_field.jpg",
    "skimage_retina.jpg",
    "skimage_astronaut.jpg",
    "skimage_chelsea.jpg",
    "skimage_coffee.jpg",
    "skimage_camera.jpg",  # grayscale
    "skimage_coins.jpg",  # grayscale
    "skimage_brick.jpg",  # grayscale
    "skimage_grass.jpg",  # grayscale
    "skimage_gravel.jpg",  # grayscale
    "lomiri16_seeding_by_Clements_Engelhardt.jpg",
    "matplotlib_grace_hopper.jpg",
)
# Small odd files from Pillow's test suite (MIT-CMU), planted verbatim.
EDGE_CMYK_YCCK = "pil_sample_cmyk.jpg"  # 4-component JPEG, Adobe APP14 transform=2 (YCCK)
EDGE_EXIF_6 = "hopper_orientation_6.jpg"  # baseline RGB JPEG with EXIF Orientation=6
EDGE_TRUNCATED = "truncated_jpeg.jpg"  # progressive JPEG cut short
EDGE_GRAY = "hopper_gray.jpg"  # 1-component JPEG
EDGE_PNG = "hopper.png"  # PNG data; planted under a .JPEG name, like n02105855_2933.JPEG

# The default resize of the pipeline (longer:512): a baseline RGB JPEG whose longer side is at most this is
# kept byte for byte.
DEFAULT_RESIZE_LONGER = 512
# Pillow's default MAX_IMAGE_PIXELS: the planted bomb declares more pixels than this.
BOMB_LIMIT_PIXELS = 89_478_485
BOMB_SIZE = (10_000, 9_000)  # 90,000,000 pixels

_MTIME = 1_336_003_200  # 2012-05-03T00:00:00Z, every tar member and the gzip header
_UID = _GID = 1000
_UNAME = _GNAME = "ilsvrc"
_NUM_VAL_GT = 50_000
_NUM_TEST = 100_000

# ImageNet-like sizes (width, height) and their weights; most fit in 512 px, so most photos are kept as is.
_SIZES = (
    ((500, 375), 30),
    ((500, 333), 20),
    ((375, 500), 15),
    ((333, 500), 8),
    ((500, 400), 5),
    ((500, 500), 4),
    ((400, 300), 4),
    ((160, 120), 4),
    ((240, 180), 3),
    ((300, 500), 3),
)
_LARGE_SIZES = ((800, 600), (1024, 768), (600, 800), (640, 480))
_LARGE_EVERY = 15  # one photo in 15 is larger than 512 px on its longer side (so it must be resized)

_HTML_ERROR_PAGE = (
    b"<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n<title>404 Not Found</title>\n"
    b"</head><body>\n<h1>Not Found</h1>\n<p>The requested URL /images/%s.JPEG was not found on this server.</p>\n"
    b"<hr>\n<address>Apache/2.2.22 (Ubuntu) Server at www.image-net.org Port 80</address>\n</body></html>\n"
)


@dataclass(frozen=True)
class ExpectedSample:
    """What a correct converter must do with one planted member.

    The first nine fields are the contract; the ones after them describe the source bytes (useful to
    compare against an index row) and are None where they do not apply.
    """

    key: str
    split: str
    wnid: Optional[str]  # None for the test split (and for an unlabeled member)
    label: int  # index of wnid in the sorted 1000 ILSVRC2012 WNIDs; -1 for test (and unlabeled)
    outcome: str  # "kept" or a reject reason from transforms.records.REJECT_REASONS
    case: str  # what was planted ("photo", "cmyk", "png_as_jpeg", ...; see PLANTED_CASES)
    duplicate_of: Optional[str]  # the key sorting first among all keys with the same bytes (never itself)
    reencoded: Optional[bool]  # False: kept byte for byte under the default resize; None for rejects
    exif_orientation: Optional[int]  # EXIF Orientation tag of the source when it has one (not 1)
    source: str = ""  # e.g. "ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG"
    sha256: Optional[str] = None  # of the member's bytes; None for links
    orig_format: Optional[str] = None  # PIL's format of the bytes ("JPEG", "PNG"), kept samples only
    orig_mode: Optional[str] = None  # PIL's mode ("RGB", "L", "CMYK", "P", "I;16"), kept samples only
    orig_width: Optional[int] = None  # kept samples only
    orig_height: Optional[int] = None  # kept samples only
    note: str = ""  # where the bytes came from, for humans
    boxes: tuple = ()  # expected normalised [xmin, ymin, xmax, ymax] boxes joined from the XML
    box_names: tuple = ()  # the object name of each expected box
    loc_blacklisted: bool = False  # val: in the devkit's localisation blacklist
    label_disagrees: bool = False  # the XML's WNID differs from the label


@dataclass(frozen=True)
class SampleRelease:
    root: str  # the folder holding the archives
    archives: dict[str, str]  # role -> path: "train", "val", "devkit", and "test" when written
    expected: dict[str, dict[str, ExpectedSample]]  # split -> key -> ExpectedSample ("train", "val", "test")
    classes: list[str]  # the WNIDs used in train, sorted
    annotation_rejects: dict = dataclasses_field(default_factory=dict)  # (split, key) -> reason
    orphan_annotations: int = 0  # XML files without an image


# case -> (outcome, reencoded) for everything make_sample_release can plant.
PLANTED_CASES = {
    "photo": ("kept", None),  # reencoded: longer side > 512
    "duplicate": ("kept", None),  # as the photo it copies
    "cmyk": ("kept", True),
    "png_as_jpeg": ("kept", True),
    "grayscale": ("kept", True),
    "progressive": ("kept", True),
    "exif_rotated": ("kept", True),
    "palette_alpha": ("kept", True),
    "png16": ("kept", True),
    "truncated": ("truncated", None),
    "empty": ("empty", None),
    "not_an_image": ("not_an_image", None),
    "bomb": ("too_large", None),
    "corrupt": ("corrupt", None),
    "unsupported_format": ("unsupported_format", None),
    "symlink": ("not_a_file", None),
    "hardlink": ("not_a_file", None),
    "unlabeled": ("unlabeled", None),
}


# ----------------------------------------------------------------------------------------------------------
# Bundled tables and photos


def _data_bytes(*parts: str) -> bytes:
    return importlib.resources.files("pipeline").joinpath("data", *parts).read_bytes()


@functools.lru_cache(maxsize=None)
def _ground_truth_ids() -> tuple[int, ...]:
    """ILSVRC2012_ID of val image i (1-based) at position i - 1."""
    return tuple(int(line) for line in _data_bytes("ILSVRC2012_validation_ground_truth.txt").split())


def _id_to_wnid() -> dict[int, str]:
    return ilsvrc2012_id_to_wnid()


def _label_of_wnid() -> dict[str, int]:
    return {c.wnid: c.label for c in imagenet_classes()}


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    im = Image.open(io.BytesIO(_data_bytes("photos", name)))
    im.load()
    return im


def _edge_bytes(name: str) -> bytes:
    return _data_bytes("photos", name)


# ----------------------------------------------------------------------------------------------------------
# Image makers


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=None)
def _bomb_png() -> bytes:
    """A valid 1-bit grayscale PNG of 10000x9000 black pixels: ~11 KB on disk, 90 Mpx declared."""
    width, height = BOMB_SIZE
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed 1-bit pixels
    comp = zlib.compressobj(9)
    idat = comp.compress(row * height) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _corrupt_png(real_png: bytes, rng: random.Random) -> bytes:
    """The header of a real PNG with an IDAT whose zlib data is garbage (chunk CRCs correct, so it parses).

    The zlib header is valid and the first deflate block declares the reserved block type 3, so inflating
    fails at once ("invalid block type"), never as a short read.
    """
    assert real_png[12:16] == b"IHDR"
    ihdr = real_png[16:29]
    garbage = bytes([0x78, 0x9C, (rng.randrange(256) & 0xF8) | 0x07]) + rng.randbytes(max(64, len(real_png) // 2))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", garbage) + _png_chunk(b"IEND", b"")


class _PhotoMaker:
    """Distinct variants of the bundled photos: a random crop, resized to an ImageNet-like size."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        # Colour photos come round twice as often as the five grayscale textures and scans.
        self.order = [n for n in PHOTOS if _photo(n).mode == "RGB"] * 2 + [n for n in PHOTOS if _photo(n).mode != "RGB"]
        rng.shuffle(self.order)
        self.count = 0
        self._sizes = [s for s, _ in _SIZES]
        self._weights = [w for _, w in _SIZES]

    def size(self, allow_large: bool = True) -> tuple[int, int]:
        self.count += 1
        if allow_large and self.count % _LARGE_EVERY == _LARGE_EVERY // 2:
            return self.rng.choice(_LARGE_SIZES)
        return self.rng.choices(self._sizes, self._weights)[0]

    def image(self, size: tuple[int, int], mode: str = "RGB") -> tuple[Image.Image, str]:
        name = self.order[self.count % len(self.order)]
        src = _photo(name)
        sw, sh = src.size
        tw, th = size
        aspect = tw / th
        if sw / sh > aspect:
            cw, ch = sh * aspect, float(sh)
        else:
            cw, ch = float(sw), sw / aspect
        scale = self.rng.uniform(0.45, 1.0) ** 0.5  # of the largest crop with the target's aspect
        cw, ch = cw * scale, ch * scale
        x0 = self.rng.uniform(0, sw - cw)
        y0 = self.rng.uniform(0, sh - ch)
        im = src.resize(size, Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if self.rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if im.mode != mode:
            im = im.convert(mode)
        return im, name

    def jpeg(self, size: Optional[tuple[int, int]] = None, mode: str = "RGB", **params) -> tuple[bytes, str]:
        """A baseline 4:2:0 JPEG (unless params say otherwise) at quality 85-95."""
        im, name = self.image(size or self.size(), mode)
        params.setdefault("quality", self.rng.randint(85, 95))
        params.setdefault("subsampling", 2)  # 4:2:0
        return _encode(im, "JPEG", **params), name


# ----------------------------------------------------------------------------------------------------------
# Planned members


@dataclass
class _Member:
    name: str  # member name inside its tar
    key: str
    case: str
    data: Optional[bytes] = None  # None for links and directories
    kind: str = "file"  # "file" | "symlink" | "hardlink" | "dir"
    linkname: str = ""
    wnid: Optional[str] = None
    label: int = -1
    exif_orientation: Optional[int] = None
    reencoded: Optional[bool] = None
    note: str = ""
    sha256: Optional[str] = None  # of data, set by _fingerprint
    header: Optional[dict] = None  # PIL's format/mode/size, for members expected to be kept

    def fingerprint(self) -> None:
        if self.data is not None:
            self.sha256 = hashlib.sha256(self.data).hexdigest()
            if _outcome(self.case) == "kept":
                self.header = _header_of(self.data)


def _outcome(case: str) -> str:
    return PLANTED_CASES[case][0]


def _photo_reencoded(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return not (im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")
                    and max(im.size) <= DEFAULT_RESIZE_LONGER)


def _tarinfo(name: str, size: int = 0, kind: str = "file", linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.uid, info.gid, info.uname, info.gname = _UID, _GID, _UNAME, _GNAME
    info.mode = 0o755 if kind == "dir" else 0o644
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE}[kind]
    info.linkname = linkname
    return info


def _write_tar(fileobj, members: list[_Member]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            if m.kind == "file":
                tar.addfile(_tarinfo(m.name, len(m.data)), io.BytesIO(m.data))
            else:
                tar.addfile(_tarinfo(m.name, 0, m.kind, m.linkname))


def _tar_bytes(members: list[_Member]) -> bytes:
    buf = io.BytesIO()
    _write_tar(buf, members)
    return buf.getvalue()


def _place_links_after_targets(members: list[_Member]) -> list[_Member]:
    """Move each link right after the member it points to (a hard link must follow its target)."""
    links = [m for m in members if m.kind in ("symlink", "hardlink")]
    out = [m for m in members if m.kind not in ("symlink", "hardlink")]
    for link in links:
        at = next(i for i, m in enumerate(out) if m.name == link.linkname)
        out.insert(at + 1, link)
    return out


def _parse_size(value: Union[int, str, None]) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*", str(value))
    if not m:
        raise ValueError(f"min_size: cannot read {value!r} (use bytes, or e.g. '200MB', '1GiB')")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(number * base ** {"": 0, "K": 1, "M": 2, "G": 3}[unit])


class _Planner:
    """Everything random, drawn from independent streams so the photos do not depend on the faults."""

    def __init__(self, seed: int):
        self.photos = _PhotoMaker(random.Random(f"imagenet-shards/sample/{seed}/photos"))
        self.faults = _PhotoMaker(random.Random(f"imagenet-shards/sample/{seed}/faults"))
        self.rng = random.Random(f"imagenet-shards/sample/{seed}/plan")  # names, orders, placements
        self.train_numbers: dict[str, set[int]] = {}

    def train_name(self, wnid: str) -> str:
        used = self.train_numbers.setdefault(wnid, set())
        while True:
            n = int(10 ** self.rng.uniform(1.0, 4.7))  # 10 .. ~50,000: widths vary, gaps everywhere
            if n not in used:
                used.add(n)
                return f"{wnid}_{n}.JPEG"

    def photo(self, name: str, key: str, allow_large: bool = True) -> _Member:
        data, src = self.photos.jpeg(self.photos.size(allow_large))
        return _Member(name, key, "photo", data, reencoded=_photo_reencoded(data), note=f"variant of {src}")

    def fault(self, case: str, name: str, key: str, variant: str = "") -> _Member:
        """The bytes (or link) for one planted case."""
        f = self.faults
        small = lambda: f.size(allow_large=False)  # noqa: E731
        if case == "cmyk" and variant == "ycck":
            return _Member(name, key, case, _edge_bytes(EDGE_CMYK_YCCK), reencoded=True,
                           note=f"bundled {EDGE_CMYK_YCCK} (Adobe APP14 transform=2, YCCK)")
        if case == "cmyk":
            im, src = f.image(small(), "CMYK")
            return _Member(name, key, case, _encode(im, "JPEG", quality=f.rng.randint(85, 95)), reencoded=True,
                           note=f"CMYK JPEG written by PIL from {src}")
        if case == "png_as_jpeg":
            return _Member(name, key, case, _edge_bytes(EDGE_PNG), reencoded=True,
                           note=f"bundled {EDGE_PNG}: PNG data under a .JPEG name")
        if case == "grayscale" and variant == "bundled":
            return _Member(name, key, case, _edge_bytes(EDGE_GRAY), reencoded=True, note=f"bundled {EDGE_GRAY}")
        if case == "grayscale":
            data, src = f.jpeg(small(), "L")
            return _Member(name, key, case, data, reencoded=True, note=f"1-component JPEG from {src}")
        if case == "progressive":
            data, src = f.jpeg(small(), progressive=True)
            return _Member(name, key, case, data, reencoded=True, note=f"progressive JPEG from {src}")
        if case == "exif_rotated" and variant == "bundled":
            return _Member(name, key, case, _edge_bytes(EDGE_EXIF_6), reencoded=True, exif_orientation=6,
                           note=f"bundled {EDGE_EXIF_6}")
        if case == "exif_rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            data, src = f.jpeg(small(), exif=exif.tobytes())
            return _Member(name, key, case, data, reencoded=True, exif_orientation=6,
                           note=f"baseline JPEG from {src} with EXIF Orientation=6")
        if case == "palette_alpha":
            im, src = f.image((240, 180) if f.rng.random() < 0.5 else (180, 240))
            pal = im.quantize(64)
            data = _encode(pal, "PNG", transparency=f.rng.randrange(64))
            return _Member(name, key, case, data, reencoded=True, note=f"palette PNG with tRNS from {src}")
        if case == "png16":
            import numpy as np

            im, src = f.image((200, 150), "L")
            arr = np.asarray(im, dtype=np.uint16) * 257 + np.uint16(f.rng.randrange(256))
            data = _encode(Image.fromarray(arr), "PNG")
            return _Member(name, key, case, data, reencoded=True, note=f"16-bit grayscale PNG from {src}")
        if case == "truncated" and variant == "bundled":
            return _Member(name, key, case, _edge_bytes(EDGE_TRUNCATED), note=f"bundled {EDGE_TRUNCATED}")
        if case == "truncated":
            data, src = f.jpeg(small())
            return _Member(name, key, case, data[: len(data) // 2],
                           note=f"first half of a {len(data)}-byte JPEG from {src}")
        if case == "empty":
            return _Member(name, key, case, b"", note="zero bytes")
        if case == "not_an_image":
            return _Member(name, key, case, _HTML_ERROR_PAGE.replace(b"%s", key.encode()),
                           note="an HTML 404 page saved as .JPEG")
        if case == "bomb":
            w, h = BOMB_SIZE
            return _Member(name, key, case, _bomb_png(), note=f"1-bit PNG declaring {w}x{h} = {w * h:,} pixels")
        if case == "corrupt":
            im, src = f.image((160, 120))
            return _Member(name, key, case, _corrupt_png(_encode(im, "PNG"), f.rng),
                           note=f"PNG header of a crop of {src}, IDAT zlib data garbage (CRCs valid)")
        if case == "unsupported_format" and variant == "ico":
            im, src = f.image((64, 64))
            return _Member(name, key, case, _encode(im, "ICO", sizes=[(48, 48)]), note=f"ICO icon from {src}")
        if case == "unsupported_format":
            im, src = f.image((160, 120))
            return _Member(name, key, case, _encode(im, "PPM"), note=f"binary PPM (P6) from {src}")
        raise ValueError(f"unknown planted case {case!r}/{variant!r}")


# Planted faults: (case, variant). Train ones go round-robin over a shuffled class order.
_TRAIN_FAULTS = (
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
# Real names of such files in ILSVRC2012 (quirks.txt): used for the planted file when its class is present.
_REAL_TRAIN_NAMES = {
    ("png_as_jpeg", ""): ("n02105855_2933",),
    ("cmyk", ""): (
        "n01739381_1309", "n02077923_14822", "n02447366_23489", "n02492035_15739", "n02747177_10752",
        "n03018349_4028", "n03062245_4620", "n03347037_9675", "n03467068_12171", "n03529860_11437",
        "n03544143_17228", "n03633091_5218", "n03710637_5125", "n03961711_5286", "n04033995_2932",
        "n04258138_17003", "n04264628_27969", "n04336792_7448", "n04371774_5854", "n04596742_4225",
        "n07583066_647", "n13037406_4650",
    ),
}
_REAL_VAL_CMYK_INDEX = 19877  # ILSVRC2012_val_00019877.JPEG is CMYK

# Val ones take some of the validation slots (real, labelled indices); "unlabeled" gets an index past 50,000.
_VAL_FAULTS = (
    ("cmyk", ""),
    ("exif_rotated", ""),
    ("truncated", ""),
    ("unsupported_format", "ico"),
    ("duplicate", ""),
    ("hardlink", ""),
)


def _choose_classes_and_val(classes: int, val_images: int) -> tuple[list[str], list[tuple[int, str]]]:
    gt = _ground_truth_ids()
    id_to_wnid = _id_to_wnid()
    chosen: list[str] = []
    seen: set[str] = set()
    for ilsvrc_id in gt:
        wnid = id_to_wnid[ilsvrc_id]
        if wnid not in seen:
            seen.add(wnid)
            chosen.append(wnid)
            if len(chosen) == classes:
                break
    val: list[tuple[int, str]] = []
    for i, ilsvrc_id in enumerate(gt, start=1):
        if len(val) == val_images:
            break
        wnid = id_to_wnid[ilsvrc_id]
        if wnid in seen:
            val.append((i, wnid))
    if len(val) < val_images:
        raise ValueError(f"the ground truth has only {len(val)} validation images of these {classes} classes")
    return chosen, val


def _atomic_write(path: str, write: Callable) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _devkit_bytes(classes: list[str]) -> bytes:
    readme = (
        "ILSVRC2012 development kit (miniature, generated by imagenet-shards' pipeline/sample.py)\n"
        "\n"
        "data/ILSVRC2012_validation_ground_truth.txt is the real file: 50,000 lines, line i holds the\n"
        "ILSVRC2012_ID (1..1000, meta.mat order) of ILSVRC2012_val_%08d.JPEG % i.\n"
        "data/ILSVRC2012_validation_blacklist.txt is the real list of 1,762 validation images with\n"
        "unsatisfactory boxes (localization only). meta.mat and the evaluation code are not included;\n"
        "ILSVRC2012_ID -> WNID is the fixed table map_clsloc.txt.\n"
        "\n"
        f"The images of this miniature release cover {len(classes)} classes: {' '.join(classes)}\n"
    ).encode("utf-8")
    members = [
        _Member(f"{DEVKIT_DIR}", "", "", kind="dir"),
        _Member(f"{DEVKIT_DIR}/data", "", "", kind="dir"),
        _Member(DEVKIT_README_MEMBER, "", "", readme),
        _Member(DEVKIT_GT_MEMBER, "", "", _data_bytes("ILSVRC2012_validation_ground_truth.txt")),
        _Member(DEVKIT_BLACKLIST_MEMBER, "", "", _data_bytes("ILSVRC2012_validation_blacklist.txt")),
    ]
    raw = _tar_bytes(members)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="ILSVRC2012_devkit_t12.tar", mode="wb", fileobj=buf, compresslevel=9,
                       mtime=_MTIME) as gz:
        gz.write(raw)
    return buf.getvalue()


def make_sample_release(
    dest,
    *,
    classes: int = 8,
    train_per_class: int = 6,
    val_images: int = 24,
    test_images: int = 4,
    plant_faults: bool = True,
    seed: int = 0,
    min_size: Union[int, str, None] = None,
    boxes: bool = True,
) -> SampleRelease:
    """Write a miniature ILSVRC2012 release under `dest` (created if missing) and say what it holds.

    classes: number of train classes (1..1000), the first distinct WNIDs of the real validation ground truth.
    train_per_class: regular photos per class (planted faults come on top of these).
    val_images: validation images with a real ground-truth label (planted val faults take some of these
      slots; the extra "unlabeled" member comes on top).
    test_images: test photos (0: no test archive; a stale one in `dest` is removed).
    plant_faults: plant the odd members listed in PLANTED_CASES.
    seed: every random choice; the same arguments give byte-identical archives.
    min_size: None, or the least total bytes of train image data (an int, or a string like "200MB", "1GiB"):
      extra photos are added round-robin over the classes until it is reached (for benchmarks).
    """
    if not 1 <= classes <= 1000:
        raise ValueError("classes must be in 1..1000")
    if train_per_class < 1 or val_images < 0 or test_images < 0:
        raise ValueError("train_per_class must be >= 1, val_images and test_images >= 0")
    if plant_faults and ((classes < 2 and train_per_class < 2) or val_images < len(_VAL_FAULTS) + 2):
        raise ValueError(f"plant_faults needs 2 train photos (classes or train_per_class >= 2) and "
                         f"val_images >= {len(_VAL_FAULTS) + 2}")
    min_bytes = _parse_size(min_size)
    dest = os.fspath(dest)
    os.makedirs(dest, exist_ok=True)
    label_of = _label_of_wnid()
    train_wnids, val_slots = _choose_classes_and_val(classes, val_images)
    class_list = sorted(train_wnids)
    plan = _Planner(seed)

    splits: dict[str, list[_Member]] = {"train": [], "val": [], "test": []}
    sha_keys: dict[str, list[tuple[str, str]]] = {}  # sha256 -> [(split, key)]
    planted_groups: list[set[tuple[str, str]]] = []  # (split, key) sets planted to share bytes

    # ---- train: one class tar at a time, so a large min_size never holds the whole split in memory
    fault_at: dict[int, list[tuple[str, str, Optional[str]]]] = {}  # class -> (case, variant, fixed key)
    if plant_faults:
        order = list(range(classes))
        plan.rng.shuffle(order)
        for j, fault in enumerate(_TRAIN_FAULTS):
            ci, fixed = order[j % classes], None
            real = [k for k in _REAL_TRAIN_NAMES.get(fault, ()) if k.split("_")[0] in class_list]
            if real:
                fixed = real[0]
                ci = class_list.index(fixed.split("_")[0])
                plan.train_numbers.setdefault(class_list[ci], set()).add(int(fixed.split("_")[1]))
            elif fault[0] == "duplicate" and ci == 0 and classes > 1:
                ci = order[-1] if order[-1] != 0 else order[-2]  # needs an earlier class to copy from
            fault_at.setdefault(ci, []).append((fault[0], fault[1], fixed))
    dup_pool: list[_Member] = []  # train photos (first of each of the first classes) that may be copied
    used_sources: set[str] = set()  # keys already copied once (each planted duplicate group has 2 members)
    train_path = os.path.join(dest, TRAIN_TAR)
    running = 0

    def write_train(outer_file) -> None:
        nonlocal running
        with tarfile.open(fileobj=outer_file, mode="w", format=tarfile.GNU_FORMAT) as outer:
            for ci, wnid in enumerate(class_list):
                label = label_of[wnid]
                members: list[_Member] = []

                def add_photo() -> _Member:
                    name = plan.train_name(wnid)
                    m = plan.photo(name, name[:-5])
                    members.append(m)
                    return m

                for _ in range(train_per_class):
                    add_photo()
                for case, variant, fixed in fault_at.get(ci, []):
                    name = f"{fixed}.JPEG" if fixed else plan.train_name(wnid)
                    key = name[:-5]
                    if case == "duplicate":
                        pool = [p for p in dup_pool if p.wnid != wnid] or [p for p in members if p.case == "photo"]
                        src = plan.rng.choice(pool)
                        used_sources.add(src.key)
                        dup_pool[:] = [p for p in dup_pool if p is not src]
                        members.append(_Member(name, key, case, src.data, reencoded=src.reencoded,
                                               note=f"same bytes as train {src.key}"))
                        planted_groups.append({("train", src.key), ("train", key)})
                    elif case == "symlink":
                        target = plan.rng.choice([m for m in members if m.case == "photo"])
                        members.append(_Member(name, key, case, kind="symlink", linkname=target.name,
                                               note=f"symbolic link to {target.name}"))
                    else:
                        members.append(plan.fault(case, name, key, variant))
                running += sum(len(m.data) for m in members if m.data)
                goal = min_bytes * (ci + 1) / classes
                while running < goal:
                    running += len(add_photo().data)
                for m in members:
                    m.wnid, m.label = wnid, label
                if len(dup_pool) < 8:
                    dup_pool.extend([m for m in members if m.case == "photo" and m.key not in used_sources][:1])
                plan.rng.shuffle(members)
                members = _place_links_after_targets(members)
                inner = _tar_bytes(members)
                outer.addfile(_tarinfo(f"{wnid}.tar", len(inner)), io.BytesIO(inner))
                keep = {id(p) for p in dup_pool}
                for m in members:
                    m.fingerprint()
                    if id(m) not in keep:
                        m.data = None  # written; only hashes and headers are needed from here on
                splits["train"].extend(members)

    _atomic_write(train_path, write_train)

    # ---- val: real labelled indices, shuffled member order
    val_members: list[_Member] = []
    fault_slots: dict[int, tuple[str, str]] = {}
    if plant_faults:
        slots = plan.rng.sample(range(len(val_slots)), len(_VAL_FAULTS))
        real = [pos for pos, (index, _w) in enumerate(val_slots) if index == _REAL_VAL_CMYK_INDEX]
        if real and real[0] not in slots:  # the real CMYK val image is in this subset: plant there
            slots[_VAL_FAULTS.index(("cmyk", ""))] = real[0]
        elif real:
            at = slots.index(real[0])
            cmyk_at = _VAL_FAULTS.index(("cmyk", ""))
            slots[at], slots[cmyk_at] = slots[cmyk_at], slots[at]
        fault_slots = dict(zip(slots, _VAL_FAULTS))
    for pos, (index, wnid) in enumerate(val_slots):
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        key = name[:-5]
        case, variant = fault_slots.get(pos, ("photo", ""))
        if case == "photo":
            m = plan.photo(name, key)
        elif case == "duplicate":
            src = plan.rng.choice(dup_pool)
            used_sources.add(src.key)
            m = _Member(name, key, case, src.data, reencoded=src.reencoded,
                        note=f"same bytes as train {src.key} (a cross-split duplicate)")
            planted_groups.append({("train", src.key), ("val", key)})
        elif case == "hardlink":
            m = _Member(name, key, case, kind="hardlink", note="hard link to another val member")
        else:
            m = plan.fault(case, name, key, variant)
        m.wnid, m.label = wnid, label_of[wnid]
        val_members.append(m)
    for m in val_members:
        if m.kind == "hardlink":
            target = plan.rng.choice([t for t in val_members if t.case == "photo"])
            m.linkname = target.name
            m.note = f"hard link to {target.name}"
    if plant_faults:
        index = _NUM_VAL_GT + plan.rng.randint(1, 999)
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        m = plan.photo(name, name[:-5], allow_large=False)
        m.case, m.reencoded, m.note = "unlabeled", None, f"{m.note}; index past the 50,000 of the ground truth"
        val_members.append(m)
    plan.rng.shuffle(val_members)
    if plant_faults:
        val_members.insert(plan.rng.randrange(1, len(val_members)), _Member("extras", "", "", kind="dir"))
    val_members = _place_links_after_targets(val_members)
    names = [m.name for m in val_members if m.kind != "dir"]
    if len(names) > 1 and names == sorted(names):  # the real val tar is not sorted; never be by chance
        val_members.append(val_members.pop(0))
    _atomic_write(os.path.join(dest, VAL_TAR), lambda f: _write_tar(f, val_members))
    splits["val"] = [m for m in val_members if m.kind != "dir"]

    # ---- test: sparse indices, shuffled, unlabelled
    test_path = os.path.join(dest, TEST_TAR)
    if test_images:
        indices = sorted(plan.rng.sample(range(1, _NUM_TEST + 1), test_images))
        test_members = []
        for index in indices:
            name = f"ILSVRC2012_test_{index:08d}.JPEG"
            test_members.append(plan.photo(name, name[:-5]))
        plan.rng.shuffle(test_members)
        _atomic_write(test_path, lambda f: _write_tar(f, test_members))
        splits["test"] = test_members
    elif os.path.exists(test_path):
        os.remove(test_path)

    # ---- devkit
    devkit = _devkit_bytes(class_list)
    _atomic_write(os.path.join(dest, DEVKIT_TAR), lambda f: f.write(devkit))

    # ---- expectations
    expected: dict[str, dict[str, ExpectedSample]] = {"train": {}, "val": {}, "test": {}}
    for split, members in splits.items():
        for m in members:
            if split != "train":
                m.fingerprint()
            if m.sha256 is not None:
                sha_keys.setdefault(m.sha256, []).append((split, m.key))

    groups = [set(v) for v in sha_keys.values() if len(v) > 1]
    if sorted(map(sorted, groups)) != sorted(map(sorted, planted_groups)):
        raise AssertionError(f"unplanned byte duplicates among the generated members: {groups}")
    first_of: dict[tuple[str, str], Optional[str]] = {}
    for group in groups:
        first = min(key for _split, key in group)
        for split, key in group:
            first_of[(split, key)] = None if key == first else first

    for split, members in splits.items():
        archive = {"train": TRAIN_TAR, "val": VAL_TAR, "test": TEST_TAR}[split]
        for m in members:
            if m.key in expected[split]:
                raise AssertionError(f"two members with key {m.key} in {split}")
            outcome = _outcome(m.case)
            labelled = split != "test" and m.case != "unlabeled"
            source = f"{archive}/{m.wnid}.tar/{m.name}" if split == "train" else f"{archive}/{m.name}"
            header = m.header or {}
            expected[split][m.key] = ExpectedSample(
                key=m.key,
                split=split,
                wnid=m.wnid if labelled else None,
                label=m.label if labelled else -1,
                outcome=outcome,
                case=m.case,
                duplicate_of=first_of.get((split, m.key)),
                reencoded=m.reencoded if outcome == "kept" else None,
                # The tag as the file carries it (some bundled files carry an explicit 1).
                exif_orientation=header.get("orientation", m.exif_orientation) if outcome == "kept" else None,
                source=source,
                sha256=m.sha256,
                orig_format=header.get("format"),
                orig_mode=header.get("mode"),
                orig_width=header.get("width"),
                orig_height=header.get("height"),
                note=m.note,
            )

    archives = {"train": train_path, "val": os.path.join(dest, VAL_TAR), "devkit": os.path.join(dest, DEVKIT_TAR)}
    if test_images:
        archives["test"] = test_path
    release = SampleRelease(root=dest, archives=archives, expected=expected, classes=class_list)
    return _plant_annotations(release, seed, plant_faults) if boxes else release


# --- bounding-box XML ------------------------------------------------------------------

BBOX_TRAIN = "ILSVRC2012_bbox_train_v2.tar.gz"
BBOX_VAL = "ILSVRC2012_bbox_val_v3.tgz"

_HOSTILE_XML = {
    "billion_laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                       b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                       b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                       b"<annotation><name>&lol3;</name></annotation>", "forbidden_xml"),
    "external_entity": (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                        b"<annotation><filename>&xxe;</filename></annotation>", "forbidden_xml"),
    "malformed": (b"<annotation><size><width>500</width><height>375</height></size><object>", "malformed_xml"),
}


def _voc_xml(folder: str, filename: str, size: tuple, objects: list) -> bytes:
    """A Pascal VOC annotation as ImageNet writes it (tabs, no XML declaration)."""
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
             "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n"
             "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     "\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
                     f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts).encode()


def _expected_box(box: tuple, size: tuple) -> Optional[tuple]:
    """The documented convention: x/W, y/H by <size>, min/max swapped, clipped, zero area dropped."""
    (x0, y0, x1, y1), (w, h) = [float(v) for v in box], size
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    b = (clip(x0 / w), clip(y0 / h), clip(x1 / w), clip(y1 / h))
    return b if b[0] < b[2] and b[1] < b[3] else None


def _gz_tar(path: str, files: list) -> None:
    raw = _tar_bytes([_Member(name, "", "", data) for name, data in files])
    buf = io.BytesIO()
    with gzip.GzipFile(filename=os.path.basename(path).rsplit(".", 1)[0], mode="wb", fileobj=buf, mtime=_MTIME) as gz:
        gz.write(raw)
    _atomic_write(path, lambda f: f.write(buf.getvalue()))


def _plant_annotations(release: SampleRelease, seed: int, plant_faults: bool) -> SampleRelease:
    """Write the two bbox archives for about half the train photos and every val image,
    with the oddities of the real ones planted when plant_faults, and expect their boxes."""
    rng = random.Random(f"boxes-{seed}")
    blacklist = {int(x) for x in _data_bytes("ILSVRC2012_validation_blacklist.txt").split()}
    oddities = {  # planted once each, on the first annotated images of the split
        "train": ["float_coords", "swapped", "outside", "zero_area", "percent_s_filename", "breed_name",
                  "size_differs", "billion_laughs", "external_entity"],
        "val": ["val_disagrees", "malformed"],
    } if plant_faults else {"train": [], "val": []}
    expected = {split: dict(es) for split, es in release.expected.items()}
    files = {"train": [], "val": []}
    annotation_rejects = {}
    for split in ("train", "val"):
        for key, e in sorted(expected[split].items()):
            if split == "val" and e.wnid:
                index = int(key.rsplit("_", 1)[1])
                expected[split][key] = e = replace(e, loc_blacklisted=index in blacklist)
            if e.outcome != "kept" or e.case == "duplicate" or (split == "train" and rng.random() < 0.5):
                continue
            w, h = e.orig_width, e.orig_height
            case = oddities[split].pop(0) if oddities[split] else "plain"
            size, name, filename = (w, h), e.wnid, key
            box = (rng.randint(0, w // 3), rng.randint(0, h // 3), rng.randint(w // 2, w - 1), rng.randint(h // 2, h - 1))
            objects = [(name, box)]
            if case == "float_coords":
                objects = [(name, tuple(f"{v}.0" for v in box))]
            elif case == "swapped":
                objects = [(name, (box[2], box[3], box[0], box[1]))]
            elif case == "outside":
                objects = [(name, (-20, box[1], w + 40, box[3]))]
            elif case == "zero_area":
                objects = [(name, box), (name, (box[0], box[1], box[0], box[3]))]
            elif case == "percent_s_filename":
                filename = "%s"
            elif case == "breed_name":
                objects = [("Scottish_deerhound", box)]
            elif case == "size_differs":
                size = (w * 2, h * 2)  # the annotator saw a larger image: normalise by <size>
                objects = [(name, (box[0] * 2, box[1] * 2, box[2] * 2, box[3] * 2))]
            elif case == "val_disagrees":
                objects = [("n01440764" if e.wnid != "n01440764" else "n01443537", box)]
            member = f"{e.wnid}/{key}.xml" if split == "train" else f"val/{key}.xml"
            if case in _HOSTILE_XML:
                data, reason = _HOSTILE_XML[case]
                annotation_rejects[(split, key)] = reason
            else:
                data = _voc_xml(e.wnid, filename, size, objects)
                kept = [(n, b) for n, b in ((n, _expected_box(b, size)) for n, b in objects) if b]
                expected[split][key] = replace(
                    e, boxes=tuple(b for _, b in kept), box_names=tuple(n for n, _ in kept),
                    label_disagrees=case == "val_disagrees")
            files[split].append((member, data))
    orphans = 0
    if plant_faults:  # an annotation whose image is not in the release
        files["train"].append((f"{release.classes[0]}/{release.classes[0]}_999999999.xml",
                               _voc_xml(release.classes[0], "x", (10, 10), [(release.classes[0], (1, 1, 5, 5))])))
        orphans = 1
    _gz_tar(os.path.join(release.root, BBOX_TRAIN), files["train"])
    _gz_tar(os.path.join(release.root, BBOX_VAL), files["val"])
    archives = {**release.archives, "bbox_train": os.path.join(release.root, BBOX_TRAIN),
                "bbox_val": os.path.join(release.root, BBOX_VAL)}
    return replace(release, archives=archives, expected=expected, annotation_rejects=annotation_rejects,
                   orphan_annotations=orphans)


def _official_members(release: SampleRelease):
    """(split, class WNID or None, member name, bytes) of every regular file of a release's archives."""
    splits = {"train": release.archives["train"], "val": release.archives["val"], "test": release.archives.get("test")}
    for split, path in splits.items():
        if not path:
            continue
        with tarfile.open(path) as outer:
            for info in outer:
                if not info.isreg():
                    continue  # links and directories have no folder form
                data = outer.extractfile(info).read()
                if split == "train":
                    wnid = posixpath.basename(info.name)[: -len(".tar")]
                    with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                        for member in inner:
                            if member.isreg():
                                yield split, wnid, member.name, inner.extractfile(member).read()
                else:
                    yield split, None, info.name, data


def export_layout(release: SampleRelease, dest, layout: str) -> SampleRelease:
    """The same samples in another layout: "kaggle" (ILSVRC/Data/CLS-LOC + ILSVRC/Annotations/CLS-LOC +
    LOC_val_solution.csv) or "imagefolder" (<split>/<wnid>/<file>; the test split flat; the bbox
    archives stay where they are, in `archives`, for --boxes). Links of the official tars have no
    folder form and are left out (with their expectations)."""
    dest = os.fspath(dest)
    if layout.startswith("in21k"):
        return _export_in21k(release, dest, layout)
    if layout not in ("kaggle", "imagefolder"):
        raise ValueError(f"unknown layout {layout!r}")
    expected = {split: {} for split in release.expected}
    by_source = {e.source: e for es in release.expected.values() for e in es.values()}
    csv_rows = []
    for split, wnid, name, data in _official_members(release):
        archive = {"train": TRAIN_TAR, "val": VAL_TAR, "test": TEST_TAR}[split]
        e = by_source[f"{archive}/{wnid}.tar/{name}" if split == "train" else f"{archive}/{name}"]
        if layout == "kaggle":
            relative = f"ILSVRC/Data/CLS-LOC/{split}/" + (f"{wnid}/{name}" if wnid else name)
            if split == "val" and e.wnid:
                if e.boxes or e.outcome != "kept":  # an XML gives its boxes: a different CSV box must lose
                    csv_rows.append(f"{e.key},{e.wnid} 0 0 1 1")
                else:  # no usable XML: the CSV's box counts, normalised by the decoded image's size
                    w, h = e.orig_width, e.orig_height
                    csv_rows.append(f"{e.key},{e.wnid} {w} 2 1 {h // 2}")  # xmin > xmax: swapped
                    e = replace(e, boxes=((1 / w, 2 / h, 1.0, (h // 2) / h),), box_names=(e.wnid,))
        else:
            folder = wnid or (e.wnid if split == "val" else None)
            relative = f"{split}/{folder}/{name}" if folder else f"{split}/{name}"
        path = os.path.join(dest, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        expected[split][e.key] = replace(e, source=relative)
    if layout == "kaggle":  # the annotation XML as files under ILSVRC/Annotations/CLS-LOC/{train/<wnid>,val}/
        for role, prefix in (("bbox_train", "train/"), ("bbox_val", "")):
            if role not in release.archives:
                continue
            with tarfile.open(release.archives[role]) as tar:
                for info in tar:
                    if info.isreg():
                        path = os.path.join(dest, "ILSVRC/Annotations/CLS-LOC", prefix + info.name)
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        with open(path, "wb") as f:
                            f.write(tar.extractfile(info).read())
        with open(os.path.join(dest, "LOC_val_solution.csv"), "w") as f:
            f.write("ImageId,PredictionString\n" + "".join(row + "\n" for row in sorted(csv_rows)))
        with open(os.path.join(dest, "LOC_synset_mapping.txt"), "wb") as f:
            f.write(importlib.resources.files("transforms").joinpath("data", "LOC_synset_mapping.txt").read_bytes())
    # ImageFolder has no place for annotations: pass the original archives with --boxes.
    bbox = {r: p for r, p in release.archives.items() if r.startswith("bbox_")}
    return SampleRelease(dest, bbox, expected, list(release.classes), release.annotation_rejects,
                         release.orphan_annotations)


def _export_in21k(release: SampleRelease, dest: str, layout: str) -> SampleRelease:
    """The train class tars as ImageNet-21k ships them: "in21k_folder" (<wnid>.tar files),
    "in21k_tar" (fall11_whole.tar, a tar of them) or "in21k_gz" (winter21_whole.tar.gz).
    Labels become the index in the sorted WNIDs present; only the train split exists."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(release.archives["train"]) as outer:
        class_tars = [(os.path.basename(i.name), outer.extractfile(i).read()) for i in outer if i.isreg()]
    wnids = sorted(name[: -len(".tar")] for name, _ in class_tars)
    if layout == "in21k_folder":
        for name, data in class_tars:
            with open(os.path.join(dest, name), "wb") as f:
                f.write(data)
        prefix = ""
    else:
        raw = _tar_bytes([_Member(f"winter21_whole/{n}", "", "", d) for n, d in class_tars])
        if layout == "in21k_tar":
            name, payload = "fall11_whole.tar", raw
        else:
            buf = io.BytesIO()
            with gzip.GzipFile(filename="winter21_whole.tar", mode="wb", fileobj=buf, mtime=_MTIME) as gz:
                gz.write(raw)
            name, payload = "winter21_whole.tar.gz", buf.getvalue()
        with open(os.path.join(dest, name), "wb") as f:
            f.write(payload)
        prefix = f"{name}/winter21_whole/" if layout == "in21k_tar" else ""
    expected = {"train": {}}
    for key, e in release.expected["train"].items():  # class tars are copied whole: links and faults stay
        wnid_source = e.source.split("/", 1)[1]  # "<wnid>.tar/<member>"
        expected["train"][key] = replace(e, label=wnids.index(e.wnid) if e.wnid in wnids else e.label,
                                         source=prefix + wnid_source, boxes=(), box_names=(),
                                         label_disagrees=False)
    return SampleRelease(dest, {}, expected, wnids)


def _header_of(data: bytes) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            return {"format": im.format, "mode": im.mode, "width": im.size[0], "height": im.size[1],
                    "orientation": im.getexif().get(0x0112)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("dest")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=6)
    p.add_argument("--val-images", type=int, default=24)
    p.add_argument("--test-images", type=int, default=4)
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", default=None, help="least bytes of train image data, e.g. 200MB")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rel = make_sample_release(a.dest, classes=a.classes, train_per_class=a.train_per_class,
                              val_images=a.val_images, test_images=a.test_images, plant_faults=not a.no_faults,
                              seed=a.seed, min_size=a.min_size)
    took = time.perf_counter() - t0
    for role, path in rel.archives.items():
        print(f"{role:7s} {os.path.getsize(path):>12,d}  {path}")
    counts = {s: len(v) for s, v in rel.expected.items()}
    print(f"{counts} members, {len(rel.classes)} classes, {took:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
