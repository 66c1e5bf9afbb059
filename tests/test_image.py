"""Tests for transforms/image.py, the image kernel.

Every input is generated here with PIL/numpy (no committed binaries); the Pillow edge-case files
in /work/shared/jpeg_edgecases are used only where present.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms.image import (
    KEPT_FORMATS,
    ImageOptions,
    ProcessedImage,
    ResizeSpec,
    codec_versions,
    process_image,
)
from transforms.records import REJECT_REASONS, ImageRejected

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "pipeline" / "data" / "photos"  # bundled photos and Pillow edge cases
EDGECASE_DIRS = (PHOTOS, REPO / "tests" / "data" / "jpeg_edgecases")
DEFAULT = ImageOptions()


# --------------------------------------------------------------------------------------------------
# Helpers


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: random structure at a few scales, most energy in the coarse ones
    (as in photographs), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    total = np.zeros((height, width, 3), np.float64)
    for period, weight in ((96, 0.7), (24, 0.25), (4, 0.05)):  # pixels per random cell
        cells = (max(2, height // period), max(2, width // period), 3)
        layer = Image.fromarray(rng.uniform(0, 255, cells).astype(np.uint8))
        total += weight * np.asarray(layer.resize((width, height), Image.Resampling.BICUBIC), np.float64)
    return Image.fromarray(np.clip(total, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(width: int = 64, height: int = 48, **params) -> bytes:
    params.setdefault("quality", 90)
    return encode(photo(width, height), "JPEG", **params)


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def sof_marker(data: bytes) -> int:
    """The start-of-frame marker of a JPEG (0xFFC0 = baseline), by walking its segments."""
    assert data[:2] == b"\xff\xd8"
    pos = 2
    while True:
        assert data[pos] == 0xFF, f"junk at {pos}"
        marker = 0xFF00 | data[pos + 1]
        if 0xFFC0 <= marker <= 0xFFCF and marker not in (0xFFC4, 0xFFC8, 0xFFCC):
            return marker
        assert marker != 0xFFDA, "scan before frame"
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def check_stored(result: ProcessedImage) -> Image.Image:
    """The output contract: a baseline, 8-bit, 3-component JPEG of the stated size, without EXIF
    orientation (nor any EXIF/ICC when re-encoded). Returns it decoded."""
    out = decode(result.jpeg)
    assert out.format == "JPEG"
    assert out.mode == "RGB" and out.layers == 3 and out.bits == 8
    assert "progressive" not in out.info and "progression" not in out.info
    assert sof_marker(result.jpeg) == 0xFFC0
    assert out.size == (result.width, result.height)
    if result.reencoded:
        assert "exif" not in out.info and "icc_profile" not in out.info
        assert out.getexif().get(0x0112) is None
    else:
        assert result.exif_orientation in (None, 1)
    return out


def reject_reason(data: bytes, options: ImageOptions = DEFAULT) -> str:
    with pytest.raises(ImageRejected) as info:
        process_image(data, options)
    assert info.value.reason in REJECT_REASONS["image"]
    assert isinstance(info.value.detail, str) and info.value.detail
    return info.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int) -> bytes:
    """PNG signature and IHDR for an 8-bit grayscale image."""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims another size (the entropy data is left as it was)."""
    pos = data.index(b"\xff\xc0")
    return data[: pos + 5] + struct.pack(">HH", height, width) + data[pos + 9 :]


@pytest.fixture
def edgecase():
    def load(name: str) -> bytes:
        (path,) = [d / name for d in EDGECASE_DIRS if (d / name).exists()]
        return path.read_bytes()

    return load


# --------------------------------------------------------------------------------------------------
# ResizeSpec and ImageOptions


@pytest.mark.parametrize(
    "text, mode, size",
    [
        ("longer:512", "longer", 512),
        ("shorter:256", "shorter", 256),
        ("none", "none", None),
        ("longer:1", "longer", 1),
    ],
)
def test_resize_spec_parse_and_str(text, mode, size):
    spec = ResizeSpec.parse(text)
    assert (spec.mode, spec.size) == (mode, size)
    assert str(spec) == text
    assert ResizeSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    ["", "longer", "longer:", "longer:0", "longer:-5", "longer:abc", "longer:1.5",
     "wider:512", "none:5", "512", ":512"],
)
def test_resize_spec_parse_errors(text):
    with pytest.raises(ValueError, match="resize"):
        ResizeSpec.parse(text)


@pytest.mark.parametrize(
    "mode, size", [("longer", 0), ("shorter", None), ("none", 5), ("wider", 5), ("longer", True)]
)
def test_resize_spec_constructor_validates(mode, size):
    with pytest.raises(ValueError):
        ResizeSpec(mode, size)


@pytest.mark.parametrize(
    "spec, source, expected",
    [
        ("longer:512", (1200, 900), (512, 384)),
        ("longer:512", (900, 1200), (384, 512)),
        ("longer:512", (1000, 1000), (512, 512)),
        ("longer:512", (513, 100), (512, 100)),  # 99.8 rounds to 100
        ("longer:512", (512, 300), (512, 300)),  # already fits: unchanged
        ("longer:512", (500, 375), (500, 375)),  # never upscale
        ("longer:10", (20, 15), (10, 8)),  # 7.5 rounds half up
        ("longer:100", (1000, 1), (100, 1)),  # 0.1 -> at least 1 pixel
        ("longer:100", (1, 1000), (1, 100)),
        ("longer:1", (7, 3), (1, 1)),
        ("shorter:256", (1200, 900), (341, 256)),
        ("shorter:256", (900, 1200), (256, 341)),
        ("shorter:256", (1000, 1000), (256, 256)),
        ("shorter:256", (256, 4000), (256, 4000)),  # already fits: unchanged
        ("shorter:256", (300, 10000), (256, 8533)),
        ("shorter:3", (4, 6), (3, 5)),  # 4.5 rounds half up
        ("none", (5000, 3), (5000, 3)),
    ],
)
def test_target_size(spec, source, expected):
    assert ResizeSpec.parse(spec).target_size(*source) == expected


@pytest.mark.parametrize("mode", ["longer", "shorter"])
def test_target_size_formula(mode):
    """Exhaustively against the formula in exact arithmetic: the constrained side becomes N, the
    other floor(x * N / side + 1/2), at least 1; nothing grows."""
    for n in (1, 2, 7, 64):
        spec = ResizeSpec(mode, n)
        for width in range(1, 150, 3):
            for height in range(1, 150, 7):
                side = max(width, height) if mode == "longer" else min(width, height)
                got = spec.target_size(width, height)
                if side <= n:
                    assert got == (width, height)
                    continue
                want = tuple(
                    n if x == side else max(1, math.floor(Fraction(x * n, side) + Fraction(1, 2)))
                    for x in (width, height)
                )
                assert got == want, (width, height, n)
                assert got[0] <= width and got[1] <= height


@pytest.mark.parametrize(
    "kwargs",
    [{"quality": 0}, {"quality": 101}, {"quality": 90.0}, {"reencode": "never"}, {"max_pixels": 0}],
)
def test_image_options_validation(kwargs):
    with pytest.raises(ValueError):
        ImageOptions(**kwargs)


def test_image_options_resize_must_be_a_spec():
    with pytest.raises(TypeError):
        ImageOptions(resize="longer:512")


def test_image_options_defaults():
    assert DEFAULT == ImageOptions(ResizeSpec("longer", 512), 90, "auto", Image.MAX_IMAGE_PIXELS)


# --------------------------------------------------------------------------------------------------
# Rejects


def _png_broken_zlib() -> bytes:
    # Chunk CRCs are right; the compressed stream is not.
    return png_header(8, 8) + png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64) + png_chunk(b"IEND", b"")


def _png_bad_header_crc() -> bytes:
    data = bytearray(encode(photo(16, 16), "PNG"))
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


REJECTS = {
    "empty": (lambda: b"", "empty"),
    "html page": (lambda: b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n",
                  "not_an_image"),
    "plain text": (lambda: b"this is not an image, just some text\n" * 4, "not_an_image"),
    "baseline jpeg cut in half": (lambda: _half(jpeg(200, 150)), "truncated"),
    "progressive jpeg cut in half": (lambda: _half(jpeg(200, 150, progressive=True)), "truncated"),
    "jpeg without its last bytes": (lambda: jpeg(200, 150)[:-64], "truncated"),
    "jpeg cut inside its header": (lambda: jpeg(200, 150)[:100], "truncated"),
    "jpeg with junk for a header": (lambda: b"\xff\xd8\xff" + b"\x12" * 300, "corrupt"),
    "png cut in half": (lambda: _half(encode(photo(64, 64), "PNG")), "truncated"),
    "png with broken zlib data": (_png_broken_zlib, "corrupt"),
    "png with a bad header crc": (_png_bad_header_crc, "corrupt"),
    "gif cut in half": (lambda: _half(encode(photo(64, 64), "GIF")), "truncated"),
    "png header declaring 20000x20000": (
        lambda: png_header(20000, 20000) + png_chunk(b"IEND", b""), "too_large"),
    "jpeg header declaring 65000x65000": (lambda: with_jpeg_size(jpeg(32, 32), 65000, 65000), "too_large"),
    "ppm": (lambda: encode(photo(16, 16), "PPM"), "unsupported_format"),
    "ico": (lambda: encode(photo(32, 32), "ICO"), "unsupported_format"),
    "tga": (lambda: encode(photo(16, 16), "TGA"), "unsupported_format"),
    "pcx": (lambda: encode(photo(16, 16), "PCX"), "unsupported_format"),
}


@pytest.mark.parametrize("make, reason", REJECTS.values(), ids=REJECTS.keys())
def test_rejects(make, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning among others
        assert reject_reason(make()) == reason


@pytest.mark.parametrize("max_pixels, rejected", [(64 * 48 - 1, True), (64 * 48, False), (1, True)])
def test_too_large_uses_max_pixels(max_pixels, rejected):
    data = jpeg(64, 48)
    options = ImageOptions(max_pixels=max_pixels)
    if rejected:
        assert reject_reason(data, options) == "too_large"
    else:
        check_stored(process_image(data, options))


def test_pil_global_pixel_limit_is_not_used(monkeypatch):
    """Only options.max_pixels counts: PIL's own decompression-bomb limit neither warns nor raises."""
    sources = [jpeg(64, 64), encode(photo(64, 64), "PNG")]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 is over twice this
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = [process_image(data, DEFAULT) for data in sources]
    monkeypatch.undo()  # check_stored decodes with Image.open, which does use the global
    for result in results:
        check_stored(result)


def test_pillow_truncated_fixture(edgecase):
    assert reject_reason(edgecase("truncated_jpeg.jpg")) == "truncated"


def test_truncation_caught_at_any_cut():
    """The byte-for-byte path validates cheaply (1/8-scale decode): it must still see every cut."""
    for data in (jpeg(160, 120), jpeg(160, 120, progressive=True)):
        for cut in range(len(data) // 10, len(data) - 1, len(data) // 10):
            assert reject_reason(data[:cut], ImageOptions(resize=ResizeSpec("none"))) == "truncated", cut


# --------------------------------------------------------------------------------------------------
# Byte-for-byte keeps and re-encodes


def test_baseline_rgb_jpeg_is_kept_byte_for_byte():
    data = jpeg(64, 48)
    result = process_image(data, DEFAULT)
    assert result.jpeg == data
    assert not result.reencoded
    assert (result.width, result.height, result.orig_width, result.orig_height) == (64, 48, 64, 48)
    assert (result.orig_format, result.orig_mode, result.exif_orientation) == ("JPEG", "RGB", None)
    check_stored(result)


def test_jpeg_with_orientation_1_is_kept():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = jpeg(64, 48, exif=exif.tobytes())
    result = process_image(data, DEFAULT)
    assert result.jpeg == data and result.exif_orientation == 1


def test_progressive_jpeg_is_reencoded_as_baseline():
    data = jpeg(64, 48, progressive=True)
    result = process_image(data, DEFAULT)
    assert result.reencoded and result.jpeg != data
    out = check_stored(result)
    assert out.size == (64, 48)
    assert psnr(out, decode(data)) > 30


def test_exif_orientation_6_is_reported_not_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(64, 48, exif=exif.tobytes())
    result = process_image(data, DEFAULT)
    assert result.reencoded and result.exif_orientation == 6
    out = check_stored(result)  # carries no orientation
    assert out.size == (64, 48) == (result.orig_width, result.orig_height)  # pixels as stored
    assert psnr(out, decode(data)) > 30


def test_reencode_always():
    data = jpeg(64, 48)
    result = process_image(data, ImageOptions(reencode="always"))
    assert result.reencoded and result.jpeg != data
    assert psnr(check_stored(result), decode(data)) > 30


def test_jpeg_over_the_limit_is_resized():
    result = process_image(jpeg(640, 480), ImageOptions(resize=ResizeSpec("longer", 100)))
    assert result.reencoded and (result.width, result.height) == (100, 75)
    check_stored(result)


def test_reencoded_output_drops_icc_profile():
    data = jpeg(64, 48, progressive=True, icc_profile=b"not really a profile" * 10)
    assert "icc_profile" in decode(data).info
    check_stored(process_image(data, DEFAULT))


@pytest.mark.parametrize(
    "spec, source, expected",
    [
        ("longer:64", (120, 90), (64, 48)),
        ("longer:64", (90, 120), (48, 64)),
        ("shorter:30", (120, 90), (40, 30)),
        ("shorter:30", (90, 120), (30, 40)),
        ("none", (120, 90), (120, 90)),
        ("longer:200", (120, 90), (120, 90)),
        ("longer:16", (1000, 3), (16, 1)),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_dimensions(spec, source, expected, fmt):
    data = encode(photo(*source), fmt)
    result = process_image(data, ImageOptions(resize=ResizeSpec.parse(spec)))
    assert (result.width, result.height) == expected
    assert (result.orig_width, result.orig_height) == source
    assert result.reencoded == (fmt != "JPEG" or expected != source)
    check_stored(result)


@pytest.mark.parametrize(
    "source, fmt, spec",
    [
        ((800, 600), "JPEG", "longer:256"),  # libjpeg decodes at 1/2
        ((800, 600), "JPEG", "longer:96"),  # ... at 1/8
        ((600, 800), "JPEG", "shorter:100"),  # ... at 1/4
        ((301, 199), "JPEG", "longer:100"),  # odd sizes: DCT scaling rounds up
        ((800, 600), "PNG", "longer:256"),
    ],
)
def test_resized_pixels_close_to_full_decode_lanczos(source, fmt, spec):
    data = encode(photo(*source, seed=3), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    # Quality 95 so that the comparison is about the resize more than the output's JPEG loss.
    result = process_image(data, ImageOptions(resize=ResizeSpec.parse(spec), quality=95))
    reference = decode(data).convert("RGB").resize((result.width, result.height), Image.Resampling.LANCZOS)
    assert psnr(check_stored(result), reference) > 30


@pytest.mark.parametrize("spec", ["longer:512", "longer:224", "shorter:160"])
def test_real_photo_close_to_full_decode_lanczos(spec):
    path = PHOTOS / "skimage_rocket.jpg"  # 640x427 baseline
    data = path.read_bytes()
    result = process_image(data, ImageOptions(resize=ResizeSpec.parse(spec)))
    reference = decode(data).resize((result.width, result.height), Image.Resampling.LANCZOS)
    assert psnr(check_stored(result), reference) > 30


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(jpeg(300, 200), id="jpeg-resized"),
        pytest.param(jpeg(64, 48, progressive=True), id="jpeg-progressive"),
        pytest.param(encode(photo(300, 200).convert("RGBA"), "PNG"), id="png-rgba"),
    ],
)
def test_deterministic(data):
    options = ImageOptions(resize=ResizeSpec("longer", 100))
    first = process_image(data, options)
    assert first.reencoded
    assert process_image(data, options) == first


# --------------------------------------------------------------------------------------------------
# Formats and modes, decided by content


def _center(result: ProcessedImage) -> tuple[int, ...]:
    out = check_stored(result)
    return out.getpixel((out.width // 2, out.height // 2))


def _close(pixel, expected, tolerance=6):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def test_png_data_is_identified_by_content():
    """Like n02105855_2933.JPEG: PNG bytes under a JPEG name; names are never looked at."""
    source = photo(64, 48)
    result = process_image(encode(source, "PNG"), DEFAULT)
    assert (result.orig_format, result.orig_mode, result.reencoded) == ("PNG", "RGB", True)
    assert psnr(check_stored(result), source) > 30


def test_cmyk_jpeg_colours():
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red
    result = process_image(data, DEFAULT)
    assert (result.orig_format, result.orig_mode, result.reencoded) == ("JPEG", "CMYK", True)
    assert _close(_center(result), (255, 0, 0))


def test_adobe_cmyk_fixture(edgecase):
    cmyk, rgb = edgecase("pil_sample_cmyk.jpg"), edgecase("pil_sample_rgb.jpg")
    result = process_image(cmyk, DEFAULT)
    assert result.orig_mode == "CMYK" and result.reencoded
    # PIL's naive CMYK -> RGB (no colour management) against the same picture saved as RGB.
    assert psnr(check_stored(result), decode(rgb)) > 15


def test_grayscale_jpeg():
    data = encode(photo(64, 48).convert("L"), "JPEG")
    result = process_image(data, ImageOptions(resize=ResizeSpec("longer", 32)))
    assert (result.orig_mode, result.reencoded, result.width, result.height) == ("L", True, 32, 24)
    red, green, blue = (np.asarray(band, np.int16) for band in check_stored(result).split())
    assert np.abs(red - green).max() <= 2 and np.abs(green - blue).max() <= 2


def test_palette_png_with_transparency():
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 255, 0, 128, 0] + [0] * 762)  # 0: blue (transparent), 1: green
    im.paste(1, (0, 0, 32, 16))
    result = process_image(encode(im, "PNG", transparency=0), DEFAULT)
    assert (result.orig_format, result.orig_mode) == ("PNG", "P")
    out = check_stored(result)
    assert _close(out.getpixel((16, 4)), (0, 128, 0))
    assert _close(out.getpixel((16, 28)), (255, 255, 255))  # transparent -> white, not blue


def test_rgba_png_composited_on_white():
    im = Image.new("RGBA", (48, 16), (0, 0, 0, 0))  # transparent black
    im.paste((255, 0, 0, 255), (0, 0, 16, 16))  # opaque red
    im.paste((0, 0, 255, 128), (32, 0, 48, 16))  # half-transparent blue
    result = process_image(encode(im, "PNG"), DEFAULT)
    assert result.orig_mode == "RGBA"
    out = check_stored(result)
    assert _close(out.getpixel((4, 8)), (255, 0, 0))
    assert _close(out.getpixel((24, 8)), (255, 255, 255))
    assert _close(out.getpixel((44, 8)), (127, 127, 255))


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped():
    samples = np.zeros((16, 64), np.uint16)
    for i, value in enumerate((0, 4096, 32768, 65535)):
        samples[:, 16 * i : 16 * (i + 1)] = value
    result = process_image(encode(Image.fromarray(samples), "PNG"), DEFAULT)
    assert result.orig_mode.startswith("I;16")
    out = np.asarray(check_stored(result).convert("L"), np.int16)
    for i, expected in enumerate((0, 16, 128, 255)):
        assert abs(int(out[8, 16 * i + 8]) - expected) <= 2, (i, out[8, 16 * i + 8])


def test_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 3
    result = process_image(data, DEFAULT)
    assert result.orig_format == "GIF"
    assert _close(_center(result), (255, 0, 0))


def test_tiff_first_page():
    pages = [Image.new("RGB", (32, 32), colour) for colour in ((0, 255, 0), (255, 0, 0))]
    result = process_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), DEFAULT)
    assert result.orig_format == "TIFF"
    assert _close(_center(result), (0, 255, 0))


def _source_in_mode(mode: str) -> Image.Image:
    gray = photo(40, 30).convert("L")
    if mode in ("I;16", "I"):  # 16-bit samples, the full range used
        samples = np.asarray(gray, np.uint32) * 257
        return Image.fromarray(samples.astype(np.uint16 if mode == "I;16" else np.int32))
    if mode == "F":
        return gray.convert("F")
    return photo(40, 30).convert(mode)


@pytest.mark.parametrize(
    "fmt, mode",
    [
        ("BMP", "RGB"),
        ("BMP", "L"),
        ("BMP", "P"),
        ("TIFF", "RGB"),
        ("TIFF", "CMYK"),
        ("TIFF", "1"),
        ("TIFF", "LA"),
        ("TIFF", "RGBA"),
        ("TIFF", "I;16"),
        ("TIFF", "I"),
        ("TIFF", "F"),
        ("PNG", "LA"),
        ("PNG", "1"),
        ("PNG", "L"),
        ("GIF", "L"),
        ("WEBP", "RGB"),  # tests/test_install.py proves the WebP codec is built in
    ],
)
def test_kept_formats_and_modes(fmt, mode):
    im = _source_in_mode(mode)
    data = encode(im, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    result = process_image(data, DEFAULT)
    assert result.orig_format == fmt and result.reencoded
    assert (result.width, result.height) == (40, 30)
    out = check_stored(result)
    if mode in ("I;16", "I", "F", "L", "LA"):  # all carry the same gray picture, opaque
        assert psnr(out.convert("L"), photo(40, 30).convert("L")) > 30


def test_mpo_first_image_reencoded():
    """MPO (a JPEG with more images after it): the first one is stored, never the whole file."""
    first, second = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    result = process_image(encode(first, "MPO", save_all=True, append_images=[second]), DEFAULT)
    assert (result.orig_format, result.reencoded) == ("MPO", True)
    assert _close(_center(result), (255, 0, 0))


def test_pillow_edgecase_files(edgecase):
    for name, kept in [("hopper.jpg", True), ("hopper_gray.jpg", False), ("hopper_orientation_6.jpg", False),
                       ("hopper.png", False), ("junk_jpeg_header.jpg", False), ("icc-after-SOF.jpg", False)]:
        result = process_image(edgecase(name), DEFAULT)
        assert result.reencoded != kept, name
        check_stored(result)


def test_codec_versions():
    versions = codec_versions()
    assert set(versions) == {"pil", "libjpeg_turbo", "opencv"}  # OpenCV's resize weights make the hash
    assert versions["libjpeg_turbo"] and versions["opencv"]


def test_kept_formats():
    assert {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} <= KEPT_FORMATS
