"""Labels: the ILSVRC2012 class table, the devkit's validation labels, and the Labeler.

Conventions (the torchvision / TFDS / timm ones):
- `label` is the index of the WNID in the sorted list of the 1,000 ILSVRC2012 WNIDs
  (LOC_synset_mapping.txt is that list, in order).
- The devkit's ILSVRC2012_validation_ground_truth.txt holds ILSVRC2012_IDs (1..1000,
  meta.mat order), NOT sorted indices: line i labels ILSVRC2012_val_%08d % i, and the
  ID maps to a WNID through the fixed table map_clsloc.txt. Both tables ship beside this
  module (transforms/data/, with their origin in SOURCES.md there).

The Labeler turns a member's class (from its per-class tar or folder, or from a key table) into
a label, or says why it has none.
"""
from __future__ import annotations

import array
import collections.abc
import dataclasses
import functools
import importlib.resources
import re
from typing import Optional, Union

from transforms.keys import val_key

__all__ = [
    "ClassInfo",
    "KeyTable",
    "Labeler",
    "Labelled",
    "LeftOutClass",
    "NoLabel",
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
    return importlib.resources.files("transforms").joinpath("data", name).read_text(encoding="utf-8")


@functools.cache
def imagenet_classes() -> tuple[ClassInfo, ...]:
    """The 1,000 ILSVRC2012 classes, label = position in WNID order."""
    rows = []
    for line in _data_text("LOC_synset_mapping.txt").splitlines():
        if line.strip():
            wnid, _, name = line.partition(" ")
            rows.append((wnid, name.strip()))
    wnids = [w for w, _ in rows]
    if wnids != sorted(wnids) or len(set(wnids)) != 1000:
        raise RuntimeError("transforms/data/LOC_synset_mapping.txt is not the sorted list of 1000 WNIDs")
    return tuple(ClassInfo(i, w, n) for i, (w, n) in enumerate(rows))


@functools.cache
def _label_by_wnid() -> dict[str, int]:
    return {c.wnid: c.label for c in imagenet_classes()}


def label_of(wnid: str) -> int | None:
    """The 1000-class label of a WNID, None when it is not an ILSVRC2012 class."""
    return _label_by_wnid().get(wnid)


@functools.cache
def ilsvrc2012_id_to_wnid() -> dict[int, str]:
    """ILSVRC2012_ID (1..1000, as in the devkit) -> WNID, from map_clsloc.txt."""
    table = {}
    for line in _data_text("map_clsloc.txt").splitlines():
        if line.strip():
            wnid, ilsvrc_id, _name = line.split(maxsplit=2)
            table[int(ilsvrc_id)] = wnid
    return table


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


# --- a compact {key: class} table ------------------------------------------------------

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


class KeyTable(collections.abc.Mapping):
    """{key: class} for the splits labelled by a table (the devkit's 50,000 val labels, Kaggle's CSV).

    It travels inside the DoFns that label members, and Beam pickles every DoFn with bz2 at
    level 9, in the driver and again in each worker: as a plain dict the val table is a 1.5 MB
    pickle that costs ~0.1 s to write and as much to read, several times over, at every build's
    start. When the keys are one prefix and consecutive zero-padded numbers
    (ILSVRC2012_val_00000001..00050000) the table is held as an array of class positions, indexed
    by the key's number: a 0.1 MB pickle that needs no unpacking. Other tables stay a dict.
    """

    def __init__(self, mapping: collections.abc.Mapping):
        self._dict = None
        self._range = _as_range(mapping)  # (prefix, width, first, classes, positions) or None
        if self._range is None:
            self._dict = dict(mapping)

    def __getitem__(self, key):
        if self._dict is not None:
            return self._dict[key]
        prefix, width, first, classes, positions = self._range
        number = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else ""
        if len(number) != width or not (number.isascii() and number.isdigit()):
            raise KeyError(key)
        if not 0 <= int(number) - first < len(positions):
            raise KeyError(key)
        return classes[positions[int(number) - first]]

    def __iter__(self):
        if self._dict is not None:
            return iter(self._dict)
        prefix, width, first, _, positions = self._range
        return (f"{prefix}{first + i:0{width}d}" for i in range(len(positions)))

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else len(self._range[4])

    def __repr__(self) -> str:
        return f"KeyTable({len(self)} keys)"


def _as_range(mapping: collections.abc.Mapping):
    """(prefix, width, first, classes, positions) when the sorted keys are prefix + consecutive
    numbers of one width, else None. positions[i] is the index in `classes` of key i's class."""
    if not mapping:
        return None
    keys = sorted(mapping)
    match = _NUMBERED.match(keys[0])
    if not match:
        return None
    prefix, width, first = match.group(1), len(match.group(2)), int(match.group(2))
    if any(k != f"{prefix}{first + i:0{width}d}" for i, k in enumerate(keys)):
        return None
    classes = tuple(sorted(set(mapping.values())))
    position = {c: i for i, c in enumerate(classes)}
    typecode = "H" if len(classes) <= 0xFFFF else "I"
    return prefix, width, first, classes, array.array(typecode, (position[mapping[k]] for k in keys))


# --- the Labeler ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Labelled:
    """A member with a class of the build: its label and class name (a WNID for ImageNet).

    Under coarse labels (--label-level), `label` and `name` are the coarse class, and `fine_label`
    and `fine_name` are the member's own class; otherwise the latter two are None.
    """

    label: int
    name: Optional[str]  # None in unlabelled splits (test), whose label is -1
    fine_label: Optional[int] = None
    fine_name: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class LeftOutClass:
    """A member of a class the build leaves out on purpose (--classes)."""

    name: str


@dataclasses.dataclass(frozen=True)
class NoLabel:
    """A member of a labelled split whose class cannot be determined, and why."""

    why: str


Classification = Union[Labelled, LeftOutClass, NoLabel]


@dataclasses.dataclass(frozen=True)
class Labeler:
    """Turns a member's class (from its per-class tar or folder, or from a key table) into a label.

    class_index: {class name (a WNID for ImageNet): label}. key_classes: {split: {key: class}}
    for splits labelled by a table (the devkit's val ground truth, Kaggle's CSV).
    labelled_splits: splits whose samples must have a class (not "test").
    coarse: {class name: (coarse label, coarse WNID)} when the samples take the label of a coarse
    class (--label-level); their own class is then their fine one.
    """

    class_index: dict
    key_classes: dict
    labelled_splits: frozenset
    left_out: frozenset = frozenset()  # classes of the dataset this build leaves out (--classes)
    coarse: dict = dataclasses.field(default_factory=dict)

    def classify(self, split: str, key: str, class_hint: Optional[str]) -> Classification:
        """What the member's class means for this build (class_hint: the class of its per-class
        tar or folder, None when a key table says)."""
        if split not in self.labelled_splits:
            return Labelled(-1, None)
        name = class_hint if class_hint is not None else self.key_classes.get(split, {}).get(key)
        if name is None:
            return NoLabel("no label for this key in the ground truth")
        if name in self.left_out:
            return LeftOutClass(name)
        label = self.class_index.get(name)
        if label is None:
            return NoLabel(f"{name} is not one of the build's classes")
        if self.coarse:
            coarse_label, coarse_name = self.coarse[name]
            return Labelled(coarse_label, coarse_name, label, name)
        return Labelled(label, name)
