"""The ILSVRC2012 class table and the devkit's validation labels.

Conventions (the torchvision / TFDS / timm ones):
- `label` is the index of the WNID in the sorted list of the 1,000 ILSVRC2012 WNIDs
  (LOC_synset_mapping.txt is that list, in order).
- The devkit's ILSVRC2012_validation_ground_truth.txt holds ILSVRC2012_IDs (1..1000,
  meta.mat order), NOT sorted indices: line i labels ILSVRC2012_val_%08d % i, and the
  ID maps to a WNID through the fixed table map_clsloc.txt. Both tables ship with the
  package (pipeline/data/).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources

__all__ = [
    "ClassInfo",
    "imagenet_classes",
    "label_of",
    "ilsvrc2012_id_to_wnid",
    "parse_validation_ground_truth",
    "val_key",
]


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    label: int
    wnid: str
    name: str


def _data_text(name: str) -> str:
    return importlib.resources.files("pipeline").joinpath("data", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[ClassInfo, ...]:
    """The 1,000 ILSVRC2012 classes, label = position in WNID order."""
    rows = []
    for line in _data_text("LOC_synset_mapping.txt").splitlines():
        if line.strip():
            wnid, _, name = line.partition(" ")
            rows.append((wnid, name.strip()))
    wnids = [w for w, _ in rows]
    if wnids != sorted(wnids) or len(set(wnids)) != 1000:
        raise RuntimeError("bundled LOC_synset_mapping.txt is not the sorted list of 1000 WNIDs")
    return tuple(ClassInfo(i, w, n) for i, (w, n) in enumerate(rows))


@functools.lru_cache(maxsize=None)
def _label_by_wnid() -> dict[str, int]:
    return {c.wnid: c.label for c in imagenet_classes()}


def label_of(wnid: str) -> int | None:
    """The 1000-class label of a WNID, None when it is not an ILSVRC2012 class."""
    return _label_by_wnid().get(wnid)


@functools.lru_cache(maxsize=None)
def ilsvrc2012_id_to_wnid() -> dict[int, str]:
    """ILSVRC2012_ID (1..1000, as in the devkit) -> WNID, from map_clsloc.txt."""
    table = {}
    for line in _data_text("map_clsloc.txt").splitlines():
        if line.strip():
            wnid, ilsvrc_id, _name = line.split(maxsplit=2)
            table[int(ilsvrc_id)] = wnid
    return table


def val_key(index: int) -> str:
    """The key of the validation image on line `index` (1-based) of the ground truth."""
    return f"ILSVRC2012_val_{index:08d}"


def parse_validation_ground_truth(text: str) -> dict[str, str]:
    """Parse the devkit's ground truth: {val key: WNID}. Raises ValueError on a bad line."""
    id_to_wnid = ilsvrc2012_id_to_wnid()
    labels = {}
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            wnid = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise ValueError(
                f"validation ground truth line {i}: {line!r} is not an ILSVRC2012_ID (1..1000)"
            ) from None
        labels[val_key(i)] = wnid
    return labels
