"""The image kernel: source bytes -> the JPEG to store, or a reason to reject.

Contract (a pure function of bytes and options; no Beam, no file names, no global state):

    process_image(data: bytes, options: ImageOptions) -> ProcessedImage (the JPEG to store, the facts of
        the source, and the perceptual hash of the stored pixels: transforms/phash.py)
    raises ImageRejected(reason, detail), reason one of:
      empty               zero bytes
      not_an_image        no decoder recognises the bytes (an HTML error page, random data)
      truncated           the data ends before the image does (the whole entropy stream must decode)
      corrupt             recognised, but the header or the data cannot be decoded
      too_large           width * height > options.max_pixels, decided from the header, before decoding
      unsupported_format  recognised, but not one of KEPT_FORMATS (PPM, ICO, TGA, PCX...), or a kept
                          format this PIL build has no decoder for, or a mode with no way to RGB

The format is decided by content (magic bytes), never by a name. Kept formats: JPEG (and MPO, a JPEG
with extra images appended), PNG, GIF (first frame), WebP, BMP, TIFF (first page).

What is stored is always a baseline, 8-bit, 3-component (RGB/YCbCr) JPEG:
  * byte for byte, when options.reencode == "auto" and the source already is exactly that: a baseline
    (SOF0) RGB JPEG that fits the resize limit, has no EXIF orientation other than 1, and whose whole
    entropy stream decodes;
  * re-encoded otherwise: decoded (JPEGs at the smallest libjpeg DCT scale that still covers the target),
    converted to RGB (CMYK/YCCK, grayscale, palette, 16-bit scaled to 8-bit, alpha composited on white),
    resized with Lanczos to ResizeSpec.target_size, encoded at options.quality with 4:2:0 chroma
    subsampling, no EXIF and no ICC profile. The same input always gives the same bytes.
EXIF orientation is reported but never applied: pixels are kept as stored.

Long on purpose: this is one kernel. The format probes, the JPEG checks, the conversions to RGB
and the encoder are its steps, and they are kept together so that the contract above can be
checked against them in one place.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import PIL
from PIL import Image, ImageFile, features

from transforms.phash import phash_of
from transforms.records import ImageRejected

__all__ = [
    "KEPT_FORMATS",
    "ResizeSpec",
    "ImageOptions",
    "ProcessedImage",
    "process_image",
    "codec_versions",
    "check_codecs",
]

# PIL format names we turn into samples. MPO is what PIL calls a JPEG carrying an MP (multi-picture)
# index, as stereo cameras and some phones write: its first image is an ordinary JPEG.
KEPT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})

# Probe order: the common formats first, so a JPEG is identified by the first magic check.
_FIRST_PROBES = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# After libjpeg's DCT scaling the remaining factor is below 2, where pillow-simd's Lanczos costs
# about what bicubic does (0.86 vs 0.54 ms for 600x450 -> 512x384) and keeps closest to a full
# decode + Lanczos (PSNR 46-52 dB on photos; bicubic 1-3 dB lower, bilinear 4-8 dB lower).
_RESAMPLE = Image.Resampling.LANCZOS

# EXIF tag 0x0112: the Orientation the camera recorded (1 = upright, 2..8 = flips/rotations).
_EXIF_ORIENTATION = 0x0112

_WHITE = (255, 255, 255)

_RESIZE_MODES = ("longer", "shorter", "none")


@dataclass(frozen=True)
class ResizeSpec:
    """How to bound the stored image: "longer:N", "shorter:N" or "none". Never upscales."""

    mode: str
    size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in _RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {_RESIZE_MODES}, got {self.mode!r}")
        if self.mode == "none":
            if self.size is not None:
                raise ValueError(f"resize 'none' takes no size, got {self.size!r}")
        elif not isinstance(self.size, int) or not _is_int(self.size) or self.size < 1:
            raise ValueError(f"resize size must be a positive integer, got {self.size!r}")

    @classmethod
    def parse(cls, text: str) -> ResizeSpec:
        """Parse "longer:512", "shorter:256" or "none" (the form __str__ writes)."""
        spec = text.strip()
        if spec == "none":
            return cls("none", None)
        mode, sep, number = spec.partition(":")
        if not sep or mode not in ("longer", "shorter"):
            raise ValueError(f"invalid resize {text!r}: expected 'longer:N', 'shorter:N' or 'none'")
        if not number.isascii() or not number.isdigit() or int(number) < 1:
            raise ValueError(f"invalid resize {text!r}: N must be a positive integer")
        return cls(mode, int(number))

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The stored size for a width x height source: the constrained side becomes exactly N,
        the other side keeps the aspect ratio (rounded half up, at least 1); a source whose
        constrained side is already <= N is returned unchanged."""
        if self.mode == "none":
            return width, height
        n = self.size
        assert n is not None  # every mode but "none" has a size
        side = max(width, height) if self.mode == "longer" else min(width, height)
        if side <= n:
            return width, height
        return _scale_side(width, side, n), _scale_side(height, side, n)

    def __str__(self) -> str:
        return "none" if self.mode == "none" else f"{self.mode}:{self.size}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scale_side(x: int, side: int, n: int) -> int:
    # floor(x * n / side + 0.5), at least 1, in integers so that no float rounding moves a pixel;
    # the constrained side itself comes out as exactly n.
    return n if x == side else max(1, (2 * x * n + side) // (2 * side))


@dataclass(frozen=True)
class ImageOptions:
    """Everything process_image depends on besides the bytes."""

    resize: ResizeSpec = ResizeSpec("longer", 512)
    quality: int = 90  # JPEG quality of re-encoded images, 1..100
    reencode: str = "auto"  # "auto": keep conforming JPEGs byte for byte; "always": never keep
    max_pixels: int = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS
    exif_transpose: bool = False  # apply the EXIF orientation to the pixels (default: pixels as stored)

    def __post_init__(self) -> None:
        if not isinstance(self.resize, ResizeSpec):
            raise TypeError(f"resize must be a ResizeSpec, got {type(self.resize).__name__}")
        if not _is_int(self.quality) or not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be an integer in 1..100, got {self.quality!r}")
        if self.reencode not in ("auto", "always"):
            raise ValueError(f"reencode must be 'auto' or 'always', got {self.reencode!r}")
        if not _is_int(self.max_pixels) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")


@dataclass(frozen=True)
class ProcessedImage:
    """One image ready to store, and what the source was."""

    jpeg: bytes  # baseline, 8-bit, 3-component JPEG
    width: int  # of the stored image
    height: int
    orig_width: int  # of the source as its header says (EXIF orientation not applied)
    orig_height: int
    orig_format: str  # PIL's format name: "JPEG", "PNG", ...
    orig_mode: str  # PIL's mode of the source: "RGB", "L", "CMYK", "P", "I;16", ...
    reencoded: bool  # False: `jpeg` is the source, byte for byte
    exif_orientation: int | None  # the source's EXIF Orientation (1..8), None when absent
    # The perceptual hash of the stored pixels (transforms/phash.py: unsigned, below 2**63): from the
    # 1/8 luma decode that validates a JPEG kept byte for byte, from the final pixels of a re-encoded one.
    phash: int


# EXIF orientation -> the transpose that shows the image upright (as PIL's ImageOps.exif_transpose).
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def codec_versions() -> dict:
    """Versions of the codecs that make the bytes and the hash, for provenance records (the hash
    takes OpenCV's resize weights, so another OpenCV could give other hashes)."""
    return {"pil": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"), "opencv": cv2.__version__}


def check_codecs(expected: dict) -> None:
    """Fail (a worker at start-up) when this process's codecs differ from the build's.

    Shards are byte-identical only for the same PIL and libjpeg-turbo builds, and the
    manifest records the driver's; a worker with stock Pillow would silently differ.
    """
    actual = codec_versions()
    if actual != expected:
        raise RuntimeError(f"this worker's image codecs {actual} differ from the build's {expected}: "
                           "install pillow-simd as the README says (make install)")


def process_image(data: bytes, options: ImageOptions) -> ProcessedImage:
    """Turn source bytes into the JPEG to store; raise ImageRejected when they cannot be one."""
    if not data:
        raise ImageRejected("empty", "0 bytes")
    im = _open(data)
    fmt, orig_mode = im.format, im.mode
    width, height = im.size
    if fmt not in KEPT_FORMATS:
        raise ImageRejected("unsupported_format", f"{fmt} ({im.format_description})")
    if width * height > options.max_pixels:
        raise ImageRejected(
            "too_large", f"{width}x{height} = {width * height} pixels > max_pixels {options.max_pixels}"
        )
    target = options.resize.target_size(width, height)

    box = None  # the source rectangle to resize from, in the decoded image's coordinates
    if fmt in ("JPEG", "MPO"):
        # A JPEG's EXIF block is parsed with its header: no "exif" in info, no orientation.
        orientation = _exif_orientation(im) if "exif" in im.info else None
        if options.reencode == "auto" and _is_storable_as_is(im, data, target, orientation):
            reduced_by = _validate_jpeg(im)
            return ProcessedImage(
                jpeg=data, width=width, height=height, orig_width=width, orig_height=height,
                orig_format=fmt, orig_mode=orig_mode, reencoded=False, exif_orientation=orientation,
                phash=phash_of(im, reduced_by=reduced_by),  # im: the luma that validated it
            )
        if target != im.size:
            # Let libjpeg scale by 1/2, 1/4 or 1/8 in the DCT domain while decoding, as far as
            # the result still covers the target: most of the decoding work is skipped.
            drafted = im.draft(None, target)
            box = drafted[1] if drafted else None
        _load(im)
    else:
        _load(im)
        orientation = _exif_orientation(im)  # after the load: a PNG may put eXIf after its pixels

    pixels = _to_rgb_or_l(im)
    if pixels.size != target:
        pixels = pixels.resize(target, _RESAMPLE, box=box)
    if pixels.mode != "RGB":
        pixels = pixels.convert("RGB")  # grayscale is resized as one channel, expanded last
    if options.exif_transpose and orientation in EXIF_TRANSPOSE:
        pixels = pixels.transpose(EXIF_TRANSPOSE[orientation])  # after the resize: fewer pixels to move
    return ProcessedImage(
        jpeg=_encode_jpeg(pixels, options.quality), width=pixels.width, height=pixels.height,
        orig_width=width, orig_height=height, orig_format=fmt, orig_mode=orig_mode,
        reencoded=True, exif_orientation=orientation, phash=phash_of(pixels),  # the pixels stored
    )


def _is_storable_as_is(
    im: ImageFile.ImageFile, data: bytes, target: tuple[int, int], orientation: int | None
) -> bool:
    """Whether the source already is what we store: a baseline RGB JPEG within the size limit,
    without an orientation readers would apply. (Its data is still to be validated.)"""
    return (
        im.format == "JPEG"  # not MPO: its extra images would be stored too
        and im.mode == "RGB"  # 3 components; PIL refuses other than 8-bit samples at open
        and target == im.size
        and orientation in (None, 1)
        and _jpeg_frame_marker(data) == _SOF0
    )


def _validate_jpeg(im: ImageFile.ImageFile) -> int:
    """Decode at 1/8 scale, luma only: libjpeg still entropy-decodes every block of every component
    in every scan, so data that ends early raises, for about half the cost of a full decode.
    The source bytes are what is stored; these pixels give only the perceptual hash. Returns the
    scale of the decode: 8, except on an image less than 8 pixels wide or high."""
    width, height = im.size
    drafted = im.draft("L", (max(1, width // 8), max(1, height // 8)))
    _load(im)
    return round(width / drafted[1][2]) if drafted else 1


# --------------------------------------------------------------------------------------------------
# Identification


def _open(data: bytes) -> ImageFile.ImageFile:
    """Identify `data` by content and parse its header, like Image.open, but without two things
    Image.open does that do not fit here:
      * its decompression-bomb check reads the global Image.MAX_IMAGE_PIXELS (and warns, or raises
        above twice that); our limit is options.max_pixels, checked by the caller;
      * it reports a recognised file whose header is broken the same way as an unknown file
        (UnidentifiedImageError); here that is `corrupt` or `truncated`, not `not_an_image`.
    """
    Image.init()  # registers every plugin once; a no-op afterwards
    fp = io.BytesIO(data)
    prefix = data[:16]
    recognised: ImageRejected | None = None  # why the first format whose magic matched failed
    magicless = []  # formats with no magic check (TGA...): tried when no magic check succeeded
    for fmt in _probe_order():
        factory, accept = Image.OPEN[fmt]
        if accept is None:
            magicless.append(fmt)
            continue
        try:
            verdict = accept(prefix)
        except Exception:  # noqa: BLE001 - some magic checks unpack more bytes than a tiny file has
            continue
        if isinstance(verdict, str):
            # PIL knows the format but this build lacks its codec (e.g. WebP without libwebp).
            recognised = recognised or ImageRejected("unsupported_format", f"{fmt}: {verdict}")
            continue
        if not verdict:
            continue
        try:
            fp.seek(0)
            return factory(fp, "")
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything on bad headers
            recognised = recognised or _header_failure(fmt, exc, fp, len(data))
    for fmt in magicless:
        factory, _ = Image.OPEN[fmt]
        try:
            fp.seek(0)
            return factory(fp, "")
        except Exception:  # noqa: BLE001 - guessing without magic: failure means "not this one"
            continue
    if recognised is not None:
        raise recognised
    raise ImageRejected("not_an_image", f"no decoder recognises data starting {data[:16]!r}")


def _probe_order():
    return itertools.chain(_FIRST_PROBES, (fmt for fmt in Image.ID if fmt not in _FIRST_PROBES))


def _header_failure(fmt: str, exc: Exception, fp: io.BytesIO, size: int) -> ImageRejected:
    # A header parser that failed after consuming every byte ran out of data.
    reason = "truncated" if fp.tell() >= size else "corrupt"
    return ImageRejected(reason, f"{fmt} header: {type(exc).__name__}: {exc}")


_SOF0 = 0xFFC0  # baseline DCT, Huffman coded
# Start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The JPEG's start-of-frame marker (0xFFC0 baseline, 0xFFC2 progressive, 0xFFC9 arithmetic...),
    None when the segment chain before it is not clean. PIL records only "progressive"; a byte-for-byte
    keep must also exclude arithmetic coding and lossless/hierarchical frames, and headers with junk
    between segments that PIL skips but stricter decoders may not."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _SOF_MARKERS:
            return 0xFF00 | marker
        elif marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


# --------------------------------------------------------------------------------------------------
# Decoding and conversion


def _load(im: ImageFile.ImageFile) -> None:
    """Decode the pixel data (the first frame or page), mapping decoder failures to reasons.
    ImageFile.LOAD_TRUNCATED_IMAGES stays False, so data that ends early raises."""
    try:
        im.load()
    except OSError as exc:
        message = str(exc)
        reason = "truncated" if "truncated" in message.lower() else "corrupt"
        raise ImageRejected(reason, f"{im.format}: {message}") from None
    except Exception as exc:  # noqa: BLE001 - plugins raise SyntaxError, ValueError, EOFError...
        raise ImageRejected("corrupt", f"{im.format}: {type(exc).__name__}: {exc}") from None


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block is as good as none to any reader
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    """The decoded image as "RGB" or "L", the two modes the resizer and the encoder take as is."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_l(im)
    if mode in ("1", "F"):
        return im.convert("L")  # float samples have no canonical range: PIL clips them to 0..255
    if im.has_transparency_data:  # an alpha band, a palette entry or a PNG tRNS colour key
        return _flatten_on_white(im if mode == "RGBA" else _convert(im, "RGBA"))
    if mode in ("RGB", "L"):
        return im
    return _convert(im, "RGB")  # P, CMYK (Adobe-inverted included), YCbCr, LAB, RGBX...


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    # PIL's I;16 -> L conversion clips at 255 (most of the range turns white); scale instead, by
    # keeping the high byte as PIL itself does for 16-bit RGB PNGs. "I" (32-bit) is read as 16-bit.
    samples = np.asarray(im)  # uint16 in either byte order, or int32 for "I"
    if samples.dtype.kind == "i":
        samples = np.clip(samples, 0, 65535)
    return Image.fromarray((samples >> 8).astype(np.uint8))


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    # out = colour * alpha + white * (1 - alpha): what a viewer shows on a white page.
    flat = Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba)
    return flat


def _convert(im: Image.Image, mode: str) -> Image.Image:
    try:
        return im.convert(mode)
    except (ValueError, OSError, ImportError) as exc:  # e.g. LAB without LittleCMS
        raise ImageRejected("unsupported_format", f"mode {im.mode} cannot become {mode}: {exc}") from None


def _encode_jpeg(im: Image.Image, quality: int) -> bytes:
    # Pillow's defaults: baseline (no progressive), no optimize, 4:2:0 subsampling, JFIF header;
    # EXIF and ICC are written only when passed here, so none are.
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
