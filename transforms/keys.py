"""Sample keys, class names and the seeded key hash: how every stage names and places a sample.

This module imports no other module of the project.

- A sample's key is its file's stem made dot-free (WebDataset splits member names at the first
  dot of the basename): `n01440764/n01440764_10026.JPEG` -> `n01440764_10026`.
- An annotation file's key is its stem the same way, so an XML joins the image of the same stem.
- A WNID (WordNet ID) is `n` and eight digits; WNID is the one pattern every stage uses.
- key_hash is a seeded 64-bit hash of a key: it spreads samples over shards, orders them inside
  a shard, and picks the images --val-per-class holds out.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Optional

__all__ = ["WNID", "is_wnid", "readable_name", "sample_key", "annotation_key", "folder_member_key", "split_of_key",
           "val_key", "key_hash", "shard_of"]

# A WordNet noun synset ID as ImageNet writes it: "n" and the synset's 8-digit offset.
WNID = re.compile(r"n\d{8}")

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")

# ILSVRC20xx_val_* and ILSVRC20xx_test_* are how every ImageNet release names its eval images.
_EVAL_KEY = re.compile(r"^ILSVRC20\d\d_(val|test)_")


def is_wnid(name: Optional[str]) -> bool:
    return name is not None and WNID.fullmatch(name) is not None


def readable_name(name: str) -> str:
    """A name as the outputs record it (`source`): the name itself, except that each byte that is
    not UTF-8 (read as a surrogate escape) is written `\\xNN`. JSON and Parquet take only valid
    text, and an archive may hold any bytes as a name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def sample_key(member_name: str) -> str:
    """The sample key of a member: its file stem, made dot-free.

    WebDataset splits a member name at the first dot of its basename, so keys must not
    contain dots; anything but letters, digits, '_' and '-' becomes '_'.
    `n01440764/n01440764_10026.JPEG` -> `n01440764_10026`.
    """
    stem = posixpath.splitext(posixpath.basename(member_name))[0]
    return _UNSAFE_KEY_CHARS.sub("_", stem)


def annotation_key(path: str) -> str:
    """The key of an annotation file: its stem, dot-free, as for images (never the XML's
    <filename>, which is noise in places). `n01440764/n01440764_96.xml` -> `n01440764_96`."""
    return sample_key(path)


def folder_member_key(class_name: Optional[str], relative: str) -> str:
    """The key of a loose file: its dot-free stem (sub-folders below the class included).

    ImageNet file names are unique on their own (n01440764/n01440764_10026.JPEG,
    n01751748/ILSVRC2012_val_00000001.JPEG) and must stay as they are for annotations to
    join by stem; other ImageFolder names often repeat across classes (cat/001.jpg,
    dog/001.jpg), so unless the class is a WNID the key is prefixed by it (dog_001).
    """
    stem = _UNSAFE_KEY_CHARS.sub("_", posixpath.splitext(relative)[0])
    if class_name and not is_wnid(class_name):
        stem = f"{_UNSAFE_KEY_CHARS.sub('_', class_name)}_{stem}"
    return stem


def split_of_key(key: str) -> str:
    """The split an annotation's key belongs to: val or test for ILSVRC eval names, else train."""
    m = _EVAL_KEY.match(key)
    return m.group(1) if m else "train"


def val_key(index: int) -> str:
    """The key of the validation image on line `index` (1-based) of the devkit's ground truth."""
    return f"ILSVRC2012_val_{index:08d}"


def key_hash(key: str, seed: int) -> int:
    """A stable 64-bit hash of (seed, key): the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def shard_of(key: str, seed: int, num_shards: int) -> int:
    return key_hash(key, seed) % num_shards
