"""A 64-bit perceptual hash of an image's pixels: a DCT hash of an OpenCV thumbnail.

Contract (a pure function of the pixels; no file, no global state):

    phash_of(pixels, reduced_by=1) -> int, 0 <= value < 2**63
      pixels: a PIL Image (any mode; the image kernel has "L" or "RGB") or a numpy array of
              uint8, H x W (grey) or H x W x 3 (RGB, in PIL's channel order);
      reduced_by: 1 for the image at its full size; 2, 4 or 8 for pixels that are already that
              much smaller, such as the reduced decode of a JPEG (libjpeg's 1/8 scale is an 8 x 8
              box average of the luma, which is exactly what step 1 makes).

The hash is defined on the image, not on the path that decoded it:
  1. The image is reduced by 8: PIL's Image.reduce averages 8 x 8 blocks (what is left of 8 after
     `reduced_by`). PIL works in place, so a big image is never copied into numpy.
  2. The pixels become grey: the ITU-R 601 luma (PIL's "L"), the same Y that a JPEG stores.
  3. OpenCV's INTER_AREA resize (an area average) makes a 32 x 32 thumbnail, in floating point.
  4. The 8 x 8 lowest frequencies of the thumbnail's 2-D DCT-II (orthonormal, what cv2.dct gives
     in the top-left corner) are kept. The DC term (the mean brightness) is left out: 63
     coefficients remain.
     Steps 3 and 4 are both linear, one axis at a time, so they are done together as two small
     matrix products, P_h @ grey @ P_w.T, where each P is the DCT's 8 lowest rows times
     OpenCV's resize weights for that side (read off by resizing an identity matrix with
     cv2.resize, and cached by length). That costs about 4 microseconds, against about 11 for
     cv2.resize and cv2.dct one after the other; the result is the same to 1e-9.
  5. Each coefficient becomes one bit: 1 when it is above the median of the 63. A coefficient
     must exceed the median by _TIE, which is below what one pixel level changes but far above
     the rounding noise, so that exact ties (a flat image, a symmetric one) always give 0 bits
     rather than bits of noise. A flat image of any colour hashes to 0.

Because step 1 comes first, a JPEG kept byte for byte (hashed from its 1/8 decode) and the same
image re-encoded or saved as PNG (hashed from its full pixels) go through the same geometry and
come out within a bit or two of each other.

Bit layout: bit 63 (the DC term's place) is always 0, so every hash fits a signed int64 as it is.
Bits 62 to 0 hold the coefficients (u, v) of the 8 x 8 block in row-major order (u the vertical
frequency), leaving out (0, 0): the coefficient at index i = 8u + v (1 <= i <= 63) is bit 63 - i.
Nearly every hash has exactly 31 bits set (the coefficients above the median), so the Hamming
distance between two hashes is nearly always even.

Why a DCT hash and not a difference (gradient) hash: on the bundled photos, each re-encoded,
resized by 10%, cropped by 5%, brightened and saved as PNG (tests/test_near_duplicates_core.py),
both find the same share of the variants within distance 8 (61 of 65), but the DCT hash keeps
different photographs much further apart: over the 2,808 pairs of files of different photos,
the closest are at 18 (1% below 22) with the DCT hash, and at 12 (1% below 13) with a difference
hash of a 9 x 8 thumbnail of the same luma. A difference hash compares neighbouring cells, so a
texture or a small shift flips many of its bits; the DCT hash keeps the coarse layout of the
image. Done as above, it costs no more than the difference hash's resize.

What it costs: the kernel hashes right after a decode, when little of the hash's code (the
interpreter's, numpy's, OpenBLAS's) is left in the CPU's caches, so each call costs about twice
what it costs in a loop: counted under callgrind, the hash of a kept JPEG is 1.7% of its
kernel's instructions but a third of its instruction-cache misses (python -m
benchmarks.near_duplicates_bench times both and counts them). So phash_of makes few calls:
the pixels come out of PIL in one call of its raw encoder (Image.tobytes wraps that call in about
two microseconds of Python) and numpy reads them where they are; the two products are
ndarray.dot, which takes the uint8 pixels as float64 itself; the DC term is set to -inf rather
than sliced off (it then sorts first and is never above the threshold); and the 64 comparisons
become the hash through bytes.translate and int(..., 2), cheaper than numpy's packbits or a dot
product with the bits' weights. Every float is the one that the steps above make, computed the
same way (the same two BLAS products, the same comparisons), so the hashes are the same to the bit.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from PIL import Image

__all__ = ["PHASH_BITS", "THUMBNAIL_SIZE", "REDUCTION", "phash_of", "luma", "thumbnail", "dct_block", "hamming",
           "to_int64", "from_int64"]

PHASH_BITS = 64
THUMBNAIL_SIZE = 32  # the side of the grey thumbnail whose DCT is taken
REDUCTION = 8  # step 1's box average: the same as libjpeg's 1/8 scale
_BLOCK = 8  # the side of the block of lowest frequencies that the hash keeps
_MEDIAN_RANK = (_BLOCK * _BLOCK - 1) // 2  # the median of 63 values is the 32nd smallest (index 31)

# OpenCV's resize weights are single precision, so a flat image's AC coefficients come out at up
# to about 1e-4 instead of 0; one pixel level of the thumbnail moves a coefficient by up to 1/16.
# A tie is anything closer than this to the median.
_TIE = 1e-2

# Rows u = 0..7 of the orthonormal DCT-II matrix of size 32: coefficients = D @ thumbnail @ D.T.
_DCT_ROWS = np.array([[math.cos(math.pi * (2 * x + 1) * u / (2 * THUMBNAIL_SIZE))
                       * math.sqrt((1 if u == 0 else 2) / THUMBNAIL_SIZE)
                       for x in range(THUMBNAIL_SIZE)] for u in range(_BLOCK)])

# The comparisons of the 64 coefficients (DC first) as bytes 0 and 1 -> the digits of the hash in base 2.
_BINARY_DIGITS = bytes.maketrans(b"\x00\x01", b"01")

# PIL's raw encoder, which Image.tobytes runs (with mode and raw mode "L" for an "L" image).
_RAW_ENCODER = Image.core.raw_encoder
_ENCODER_DONE = 1  # the encoder's errcode once every row is out (libImaging's IMAGING_CODEC_END)

_UINT64_MASK = (1 << 64) - 1
_INT64_LIMIT = 1 << 63


def phash_of(pixels, reduced_by: int = 1) -> int:
    """The 64-bit DCT hash of the pixels (a PIL Image, or a uint8 numpy array: H x W or H x W x 3);
    `reduced_by` says how much smaller than the image the pixels already are (1, 2, 4 or 8)."""
    if reduced_by == REDUCTION and isinstance(pixels, Image.Image) and pixels.mode == "L":
        # The image kernel's JPEG kept byte for byte: its 1/8 luma decode is already steps 1 and 2.
        # _grey_array written out for the image the kernel has (decoded, not empty): a call less.
        width, height = pixels.size
        if width and height and not getattr(pixels, "tile", None):
            encoder = _RAW_ENCODER("L", "L")
            encoder.setimage(pixels.im)
            _, status, data = encoder.encode(width * height)
            grey = np.ndarray((height, width), np.uint8, data if status == _ENCODER_DONE else pixels.tobytes())
        else:
            grey = _grey_array(pixels)
    else:
        grey = luma(pixels, reduced_by)
        height, width = grey.shape
    # dct_block written out, in as few calls as it takes (see "What it costs" above).
    rows, columns_t = _projections(height, width)
    block = rows.dot(grey).dot(columns_t).ravel()  # dot takes the uint8 pixels as float64 itself
    block[0] = -math.inf  # the DC term, left out: it sorts first and is never above the median
    ordered = block.copy()
    ordered.sort()
    # ordered[0] is the DC term, so the median of the 63 others (index 31 among them) is ordered[32].
    # Coefficient i (DC 0, then 1..63) is the i-th digit of the hash in base 2: bit 63 - i.
    above = block > ordered.item(_MEDIAN_RANK + 1) + _TIE
    return int(above.tobytes().translate(_BINARY_DIGITS), 2)


def luma(pixels, reduced_by: int = 1) -> np.ndarray:
    """The image reduced by 8, as grey (luma) uint8, H x W: steps 1 and 2 of the module docstring."""
    if reduced_by not in (1, 2, 4, 8):
        raise ValueError(f"reduced_by must be 1, 2, 4 or 8, got {reduced_by!r}")
    image = _as_pil_image(pixels)
    if image.mode not in ("L", "RGB"):
        image = image.convert("L")  # Image.reduce takes neither "P" nor "1"
    factor = REDUCTION // reduced_by
    if factor > 1:
        image = image.reduce(factor)  # on RGB: reducing first is cheaper than converting first
    if image.mode != "L":
        image = image.convert("L")
    return _grey_array(image)


def _grey_array(image: Image.Image) -> np.ndarray:
    """The pixels of an "L" image as a uint8 array, H x W: what image.tobytes() holds, read by one
    call of PIL's raw encoder (tobytes is that call in about two microseconds of Python: the
    image's load, the encoder's lookup, a loop over chunks of 64 KB)."""
    if getattr(image, "tile", None):  # an image file not decoded yet (only ImageFile has tiles)
        image.load()
    width, height = image.size
    data = b""
    if width and height:
        encoder = _RAW_ENCODER("L", "L")
        encoder.setimage(image.im)
        _, status, data = encoder.encode(width * height)  # room for every row: one call
        if status != _ENCODER_DONE:  # never seen; the encoder must not be called again once done
            data = image.tobytes()
    return np.ndarray((height, width), np.uint8, data)  # over the bytes, not a copy (read-only)


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The 32 x 32 thumbnail of step 3 (float64): OpenCV's INTER_AREA resize, one axis at a time.
    It is cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA) in floating point whenever
    both sides shrink (or both grow); OpenCV itself changes method when one grows and the other
    shrinks, which one axis at a time does not."""
    return _area_rows(grey.shape[0]) @ grey.astype(np.float64) @ _area_rows(grey.shape[1]).T


def dct_block(grey: np.ndarray) -> np.ndarray:
    """The top-left 8 x 8 block of the orthonormal 2-D DCT-II of thumbnail(grey), as
    cv2.dct(thumbnail(grey))[:8, :8] gives it, computed as P_h @ grey @ P_w.T, where P is the
    DCT's 8 rows times OpenCV's resize weights: two small products instead of a resize and a
    whole 32 x 32 transform."""
    rows, columns_t = _projections(*grey.shape)
    return rows.dot(grey).dot(columns_t)  # as phash_of computes it (dot takes uint8 as float64)


def _area_rows(length: int) -> np.ndarray:
    """32 x length: OpenCV's INTER_AREA weights that resize `length` samples to 32 (read off by
    resizing the identity matrix, so they are OpenCV's to the last bit)."""
    return cv2.resize(np.eye(length, dtype=np.float64), (length, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)


# One entry a side length: 8 x length float64, 4 KB for the sides up to 64 that the default
# resize gives after step 1.
@functools.lru_cache(maxsize=1024)
def _projection(length: int) -> np.ndarray:
    """8 x length: the DCT's lowest 8 rows applied to the resize weights."""
    return np.ascontiguousarray(_DCT_ROWS @ _area_rows(length))


# One entry an image size (height, width): P_h, and P_w transposed and contiguous, looked up at once.
@functools.lru_cache(maxsize=4096)
def _projections(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return _projection(height), np.ascontiguousarray(_projection(width).T)


def _as_pil_image(pixels) -> Image.Image:
    """A PIL Image of the pixels. An array becomes one, so that an array and the image it came
    from take the same path and get the same hash."""
    if isinstance(pixels, Image.Image):
        return pixels
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a PIL Image or a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"a pixel array must be uint8, got {pixels.dtype}")
    if pixels.size == 0 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"a pixel array must be H x W or H x W x 3 and not empty, got shape {pixels.shape}")
    return Image.fromarray(np.ascontiguousarray(pixels))


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


def to_int64(phash: int) -> int:
    """The hash as a signed int64 (two's complement), for a Parquet int64 column. Hashes that
    phash_of makes are below 2**63 and come out unchanged; any unsigned 64-bit value is taken."""
    if not 0 <= phash <= _UINT64_MASK:
        raise ValueError(f"a 64-bit hash must be in 0..2**64-1, got {phash}")
    return phash - (1 << 64) if phash >= _INT64_LIMIT else phash


def from_int64(value: int) -> int:
    """The unsigned 64-bit hash that to_int64 turned into `value`."""
    if not -_INT64_LIMIT <= value < _INT64_LIMIT:
        raise ValueError(f"an int64 must be in -2**63..2**63-1, got {value}")
    return value & _UINT64_MASK
