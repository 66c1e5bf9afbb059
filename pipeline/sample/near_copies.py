"""Planted near-duplicates: a photograph and copies of it changed the way a dataset's copies are, and
other photographs of one subject, which are not near-duplicates.

`plan_near_duplicates(rng)` makes the images (bytes) of one plant; make_sample_release places them
(`near_duplicates=True`): the original and the "other photographs" in train classes, the copies in
the val split and in another train class, as NEAR_COPIES says.

  * The original: a bundled photograph (one of NEAR_COPY_PHOTOS), whole, scaled to a longer side
    of 500 like most of ImageNet's images, a baseline JPEG at quality 90 (kept byte for byte).
  * Its copies: re-encoded at quality 60, resized by 10% (0.9 of each side), cropped by 5% (2.5%
    off each side), brightened by 20%, and saved as PNG (which the build re-encodes).
  * Other photographs of one subject: the left and the right 60% of another photograph of a
    scene, its top and bottom 60% (other framings of one scene), and three grey textures (bricks,
    grass, gravel: the same kind of subject). No two of them may be paired.

tests/test_near_duplicates_core.py measures the hash on these changes for every bundled photo:
NEAR_COPY_PHOTOS are the photographs whose every copy is within the default distance (8).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageEnhance

from pipeline.sample.bundle import bundled_photo
from pipeline.sample.photos import encode

__all__ = ["NEAR_COPY_PHOTOS", "SCENE_PHOTOS", "TEXTURE_PHOTOS", "NEAR_COPIES", "NEAR_DUPLICATE_CASES", "PlantedImage",
           "NearDuplicatePlan", "NearCopy", "original_photo", "plan_near_duplicates"]

# Photographs (not textures) whose every copy below is within distance 8 of the original.
NEAR_COPY_PHOTOS = ("skimage_chelsea.jpg", "skimage_astronaut.jpg", "matplotlib_grace_hopper.jpg",
                    "skimage_rocket.jpg", "skimage_camera.jpg", "lomiri16_seeding_by_Clements_Engelhardt.jpg")
# Photographs of a scene whose framings (left and right, top and bottom 60%) are other photographs.
SCENE_PHOTOS = ("skimage_coffee.jpg", "skimage_hubble_deep_field.jpg", "skimage_retina.jpg")
TEXTURE_PHOTOS = ("skimage_brick.jpg", "skimage_grass.jpg", "skimage_gravel.jpg")
# Each copy, and where it goes: "val", or "train" (a train class other than the original's).
NEAR_COPIES = (("reencoded", "val"), ("resized", "train"), ("cropped", "val"), ("brightened", "train"),
               ("png", "val"))
# The cases of the planted images, with their (outcome, reencoded) as in PLANTED_CASES.
NEAR_DUPLICATE_CASES = {"near_original": ("kept", None), "near_copy": ("kept", None),
                        "other_photograph": ("kept", None)}

_LONGER = 500
_QUALITY = 90


@dataclass(frozen=True)
class PlantedImage:
    """One image of the plant: its bytes, its case and what it is."""

    data: bytes
    case: str  # one of NEAR_DUPLICATE_CASES
    kind: str  # "original", a copy's kind ("reencoded", ...), or the other photograph's ("left", "brick", ...)
    photo: str  # the bundled photo it is made from
    note: str


@dataclass(frozen=True)
class NearDuplicatePlan:
    """The images of one plant, not yet placed."""

    original: PlantedImage
    copies: tuple  # (PlantedImage, where: "val" or "train"), in NEAR_COPIES' order
    others: tuple  # PlantedImage: other photographs of one subject, none a near-duplicate of another


@dataclass(frozen=True)
class NearCopy:
    """A planted pair, placed: the original and one of its copies, as (split, key)."""

    original: tuple
    copy: tuple
    kind: str


def original_photo(name: str) -> Image.Image:
    """A bundled photo as RGB, scaled to a longer side of 500 like most of ImageNet's images."""
    im = bundled_photo(name).convert("RGB")
    scale = _LONGER / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return im


def _copy(im: Image.Image, kind: str) -> tuple[Image.Image, str, dict]:
    """The copy of `kind`: its pixels, the format and Pillow's parameters it is saved with."""
    w, h = im.size
    if kind == "reencoded":
        return im, "JPEG", {"quality": 60}
    if kind == "resized":
        return im.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.LANCZOS), "JPEG", {"quality": _QUALITY}
    if kind == "cropped":
        dx, dy = round(w * 0.025), round(h * 0.025)
        return im.crop((dx, dy, w - dx, h - dy)), "JPEG", {"quality": _QUALITY}
    if kind == "brightened":
        return ImageEnhance.Brightness(im).enhance(1.2), "JPEG", {"quality": _QUALITY}
    if kind == "png":
        return im, "PNG", {}
    raise ValueError(f"unknown copy {kind!r}")


def _framings(name: str) -> list[PlantedImage]:
    """Other photographs of one scene: its left and right 60%, its top and bottom 60%."""
    im = original_photo(name)
    w, h = im.size
    boxes = {"left": (0, 0, int(w * 0.6), h), "right": (w - int(w * 0.6), 0, w, h),
             "top": (0, 0, w, int(h * 0.6)), "bottom": (0, h - int(h * 0.6), w, h)}
    return [PlantedImage(encode(im.crop(box), "JPEG", quality=_QUALITY), "other_photograph", kind, name,
                         f"the {kind} 60% of {name} (another photograph of one scene)")
            for kind, box in boxes.items()]


def plan_near_duplicates(rng: random.Random, photo: Optional[str] = None) -> NearDuplicatePlan:
    """The images of one plant: `photo` (one of NEAR_COPY_PHOTOS; drawn by `rng` when None) and
    its copies, the framings of a scene photo and the textures."""
    name = photo or rng.choice(NEAR_COPY_PHOTOS)
    im = original_photo(name)
    original = PlantedImage(encode(im, "JPEG", quality=_QUALITY), "near_original", "original", name,
                            f"{name} whole, the original of planted near-duplicates")
    copies = []
    for kind, where in NEAR_COPIES:
        pixels, fmt, params = _copy(im, kind)
        copies.append((PlantedImage(encode(pixels, fmt, **params), "near_copy", kind, name,
                                    f"{name} {kind} (a planted near-duplicate)"), where))
    others = _framings(rng.choice(SCENE_PHOTOS))
    for texture in TEXTURE_PHOTOS:
        others.append(PlantedImage(encode(original_photo(texture), "JPEG", quality=_QUALITY), "other_photograph",
                                   texture.split("_")[-1].split(".")[0], texture,
                                   f"{texture} whole (the same kind of subject as the other textures)"))
    return NearDuplicatePlan(original, tuple(copies), tuple(others))
