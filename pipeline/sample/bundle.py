"""The files bundled in pipeline/data that every sample release is made from.

They are the real validation ground truth of the ILSVRC2012 devkit (its blacklist is bundled in
transforms/data, where Kaggle's layout reads it), the CC0 and public-domain photos in
pipeline/data/photos (see ATTRIBUTION.md there) and a few small odd files from Pillow's test
suite, which are planted verbatim.
"""
from __future__ import annotations

import functools
import importlib.resources
import io

from PIL import Image

from transforms.release_files import bundled_blacklist_bytes

__all__ = ["PHOTOS", "EDGE_CMYK_YCCK", "EDGE_EXIF_6", "EDGE_TRUNCATED", "EDGE_GRAY", "EDGE_PNG",
           "GROUND_TRUTH_FILE", "BLACKLIST_FILE", "data_bytes", "ground_truth_ids", "blacklisted_val_indices",
           "bundled_photo", "edge_bytes"]

GROUND_TRUTH_FILE = "ILSVRC2012_validation_ground_truth.txt"
BLACKLIST_FILE = "ILSVRC2012_validation_blacklist.txt"

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
EDGE_CMYK_YCCK = "pil_sample_cmyk.jpg"  # a 4-component JPEG with Adobe APP14 transform=2 (YCCK)
EDGE_EXIF_6 = "hopper_orientation_6.jpg"  # a baseline RGB JPEG with EXIF Orientation=6
EDGE_TRUNCATED = "truncated_jpeg.jpg"  # a progressive JPEG that is cut short
EDGE_GRAY = "hopper_gray.jpg"  # a 1-component JPEG
EDGE_PNG = "hopper.png"  # PNG data, planted under a .JPEG name like the real n02105855_2933.JPEG


def data_bytes(*parts: str) -> bytes:
    """The bytes of a file under pipeline/data."""
    return importlib.resources.files("pipeline").joinpath("data", *parts).read_bytes()


@functools.cache
def ground_truth_ids() -> tuple[int, ...]:
    """The ILSVRC2012_ID of validation image i (1-based) at position i - 1."""
    return tuple(int(line) for line in data_bytes(GROUND_TRUTH_FILE).split())


def blacklisted_val_indices() -> set[int]:
    """The indices of the validation images in the devkit's localisation blacklist (bundled with
    transforms, which uses it for Kaggle's layout)."""
    return {int(x) for x in bundled_blacklist_bytes().split()}


@functools.cache
def bundled_photo(name: str) -> Image.Image:
    """One of the PHOTOS, decoded (cached: treat it as read-only)."""
    im = Image.open(io.BytesIO(data_bytes("photos", name)))
    im.load()
    return im


def edge_bytes(name: str) -> bytes:
    """The bytes of one of the odd files (EDGE_*), to plant as they are."""
    return data_bytes("photos", name)
