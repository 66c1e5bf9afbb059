"""The images of a sample release: variants of the bundled photos, and the bytes of the odd cases.

A variant is a random crop of a bundled photo, resized to an ImageNet-like size. The odd cases
(a decompression bomb, a PNG with garbage compressed data, an HTML error page) are made here too.
Every function is a pure function of its arguments and of the random stream it is given.
"""
from __future__ import annotations

import functools
import io
import random
import struct
import warnings
import zlib
from typing import NamedTuple, Optional

from PIL import Image

from pipeline.sample.bundle import PHOTOS, bundled_photo

__all__ = ["DEFAULT_RESIZE_LONGER", "BOMB_LIMIT_PIXELS", "BOMB_SIZE", "HTML_ERROR_PAGE", "Variant", "EncodedVariant",
           "PhotoMaker", "encode", "bomb_png", "corrupt_png", "photo_reencoded", "header_of"]

# The default resize of the pipeline (longer:512): a baseline RGB JPEG whose longer side is at most this is
# kept byte for byte.
DEFAULT_RESIZE_LONGER = 512
# Pillow's default MAX_IMAGE_PIXELS: the planted bomb declares more pixels than this.
BOMB_LIMIT_PIXELS = 89_478_485
BOMB_SIZE = (10_000, 9_000)  # 90,000,000 pixels

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
_LARGE_EVERY = 15  # One photo in 15 is larger than 512 px on its longer side (so it must be resized).

HTML_ERROR_PAGE = (
    b"<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n<title>404 Not Found</title>\n"
    b"</head><body>\n<h1>Not Found</h1>\n<p>The requested URL /images/%s.JPEG was not found on this server.</p>\n"
    b"<hr>\n<address>Apache/2.2.22 (Ubuntu) Server at www.image-net.org Port 80</address>\n</body></html>\n"
)


class Variant(NamedTuple):
    """A variant of a bundled photo, and the name of the photo it was cut from."""

    image: Image.Image
    source: str


class EncodedVariant(NamedTuple):
    """The encoded bytes of a variant, and the name of the photo it was cut from."""

    data: bytes
    source: str


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    """`im` saved in the format `fmt` with Pillow's `params`."""
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.cache
def bomb_png() -> bytes:
    """A valid 1-bit grayscale PNG of 10000x9000 black pixels: about 11 KB on disk, 90 Mpx declared."""
    width, height = BOMB_SIZE
    row = b"\x00" * (1 + (width + 7) // 8)  # a filter byte 0, then the packed 1-bit pixels
    comp = zlib.compressobj(9)
    idat = comp.compress(row * height) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def corrupt_png(real_png: bytes, rng: random.Random) -> bytes:
    """The header of a real PNG with an IDAT whose zlib data is garbage (the chunk CRCs are correct, so it parses).

    The zlib header is valid and the first deflate block declares the reserved block type 3, so inflating
    fails at once ("invalid block type"), never as a short read.
    """
    assert real_png[12:16] == b"IHDR"
    ihdr = real_png[16:29]
    garbage = bytes([0x78, 0x9C, (rng.randrange(256) & 0xF8) | 0x07]) + rng.randbytes(max(64, len(real_png) // 2))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", garbage) + _png_chunk(b"IEND", b"")


class PhotoMaker:
    """Distinct variants of the bundled photos: a random crop, resized to an ImageNet-like size."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        # The colour photos come round twice as often as the five grayscale textures and scans.
        self.order = ([n for n in PHOTOS if bundled_photo(n).mode == "RGB"] * 2
                      + [n for n in PHOTOS if bundled_photo(n).mode != "RGB"])
        rng.shuffle(self.order)
        self.count = 0
        self._sizes = [s for s, _ in _SIZES]
        self._weights = [w for _, w in _SIZES]

    def size(self, allow_large: bool = True) -> tuple[int, int]:
        """The next (width, height), drawn from the ImageNet-like mix."""
        self.count += 1
        if allow_large and self.count % _LARGE_EVERY == _LARGE_EVERY // 2:
            return self.rng.choice(_LARGE_SIZES)
        return self.rng.choices(self._sizes, self._weights)[0]

    def image(self, size: tuple[int, int], mode: str = "RGB") -> Variant:
        """A variant of the next photo in turn, at `size` and in `mode`."""
        name = self.order[self.count % len(self.order)]
        src = bundled_photo(name)
        sw, sh = src.size
        tw, th = size
        aspect = tw / th
        if sw / sh > aspect:
            cw, ch = sh * aspect, float(sh)
        else:
            cw, ch = float(sw), sw / aspect
        scale = self.rng.uniform(0.45, 1.0) ** 0.5  # a share of the largest crop with the target's aspect
        cw, ch = cw * scale, ch * scale
        x0 = self.rng.uniform(0, sw - cw)
        y0 = self.rng.uniform(0, sh - ch)
        im = src.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if self.rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if im.mode != mode:
            im = im.convert(mode)
        return Variant(im, name)

    def jpeg(self, size: Optional[tuple[int, int]] = None, mode: str = "RGB", **params) -> EncodedVariant:
        """A baseline 4:2:0 JPEG (unless `params` say otherwise) at a quality of 85 to 95."""
        im, name = self.image(size or self.size(), mode)
        params.setdefault("quality", self.rng.randint(85, 95))
        params.setdefault("subsampling", 2)  # 4:2:0
        return EncodedVariant(encode(im, "JPEG", **params), name)


def photo_reencoded(data: bytes) -> bool:
    """Whether the default resize re-encodes these image bytes (rather than keeping them byte for byte)."""
    with Image.open(io.BytesIO(data)) as im:
        return not (im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")
                    and max(im.size) <= DEFAULT_RESIZE_LONGER)


def header_of(data: bytes) -> dict:
    """PIL's format, mode, size and EXIF orientation of the image bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            return {"format": im.format, "mode": im.mode, "width": im.size[0], "height": im.size[1],
                    "orientation": im.getexif().get(0x0112)}
