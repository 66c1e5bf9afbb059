"""make_sample_release: a miniature ILSVRC2012 release written to disk, with what each member must become.

The train split is written one class tar at a time, so that a large min_size never holds the whole split
in memory. The validation and test splits follow, then the devkit, the expectations and (unless told
otherwise) the bounding-box archives. With near_duplicates=True, the planted near-duplicates of
pipeline/sample/near_copies.py are placed among them.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from dataclasses import dataclass, field, replace
from typing import IO, Optional, Union

from pipeline.sample.annotations import plant_annotations
from pipeline.sample.archives import (
    DEVKIT_TAR,
    TEST_TAR,
    TRAIN_TAR,
    VAL_TAR,
    Member,
    devkit_bytes,
    place_links_after_targets,
    tar_bytes,
    tar_info,
    write_tar,
)
from pipeline.sample.expected import ExpectedSample, SampleRelease, outcome_of
from pipeline.sample.near_copies import NEAR_COPIES, NearCopy, NearDuplicatePlan, PlantedImage, plan_near_duplicates
from pipeline.sample.photos import header_of, photo_reencoded
from pipeline.sample.planner import (
    REAL_TRAIN_NAMES,
    REAL_VAL_CMYK_INDEX,
    TRAIN_FAULTS,
    VAL_FAULTS,
    Planner,
    ValSlot,
    choose_classes_and_val,
)
from transforms.keys import val_key
from transforms.labels import label_of
from transforms.sizes import parse_byte_size
from transforms.storage import atomic_write

__all__ = ["make_sample_release"]

_NUM_VAL_GT = 50_000
_NUM_TEST = 100_000


@dataclass
class _Duplicates:
    """The planted byte duplicates: the photos that may still be copied, and the groups planted so far."""

    pool: list[Member] = field(default_factory=list)  # train photos (the first of each early class)
    used: set[str] = field(default_factory=set)  # keys already copied once (a planted group has 2 members)
    groups: list[set[tuple[str, str]]] = field(default_factory=list)  # (split, key) sets that share bytes


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
    near_duplicates: bool = False,
) -> SampleRelease:
    """Write a miniature ILSVRC2012 release under `dest` (created if missing) and say what it holds.

    classes: the number of train classes (1..1000), the first distinct WNIDs of the real validation ground truth.
    train_per_class: the regular photos per class (the planted faults come on top of these).
    val_images: the validation images with a real ground-truth label (the planted val faults take some of
      these slots; the extra "unlabeled" member comes on top).
    test_images: the test photos (0: no test archive; a stale one in `dest` is removed).
    plant_faults: plant the odd members listed in PLANTED_CASES.
    seed: every random choice; the same arguments give byte-identical archives.
    min_size: None, or the least total bytes of train image data (an int, or a string like "200MB" or "1GiB"):
      extra photos are added round-robin over the classes until it is reached (for benchmarks).
    boxes: write the two bounding-box archives too.
    near_duplicates: plant a photograph and five near-duplicates of it (pipeline/sample/near_copies.py:
      the original in the first train class, copies in the second and in val slots) and seven other
      photographs of one subject in the last class; SampleRelease.near_duplicates and
      .other_photographs say where they are. Needs 2 classes and 3 val images more than the faults'.
    """
    if not 1 <= classes <= 1000:
        raise ValueError("classes must be in 1..1000")
    if train_per_class < 1 or val_images < 0 or test_images < 0:
        raise ValueError("train_per_class must be >= 1, val_images and test_images >= 0")
    if plant_faults and ((classes < 2 and train_per_class < 2) or val_images < len(VAL_FAULTS) + 2):
        raise ValueError(f"plant_faults needs 2 train photos (classes or train_per_class >= 2) and "
                         f"val_images >= {len(VAL_FAULTS) + 2}")
    near_val = sum(1 for _, where in NEAR_COPIES if where == "val")
    if near_duplicates and (classes < 2 or val_images < (len(VAL_FAULTS) + 2 if plant_faults else 0) + near_val):
        raise ValueError(f"near_duplicates needs 2 classes and {near_val} val images besides the faults'")
    min_bytes = parse_byte_size(min_size) if min_size else 0
    dest = os.fspath(dest)
    os.makedirs(dest, exist_ok=True)
    train_wnids, val_slots = choose_classes_and_val(classes, val_images)
    class_list = sorted(train_wnids)
    plan = Planner(seed)
    dups = _Duplicates()
    splits: dict[str, list[Member]] = {}

    fault_at = _place_train_faults(plan, class_list) if plant_faults else {}
    near = plan_near_duplicates(random.Random(f"imagenet-shards/sample/{seed}/near")) if near_duplicates else None
    placed: dict[int, tuple[str, str]] = {}  # id(PlantedImage) -> (split, key) where it was placed
    train_path = os.path.join(dest, TRAIN_TAR)
    with atomic_write(train_path) as f:
        splits["train"] = _write_train(f, plan, class_list, train_per_class, fault_at, min_bytes, dups,
                                       _near_in_train(near, len(class_list)), placed)

    val_members = _val_members(plan, val_slots, plant_faults, dups,
                               [image for image, where in near.copies if where == "val"] if near else [], placed)
    with atomic_write(os.path.join(dest, VAL_TAR)) as f:
        write_tar(f, val_members)
    splits["val"] = [m for m in val_members if m.kind != "dir"]

    test_path = os.path.join(dest, TEST_TAR)
    splits["test"] = []
    if test_images:
        splits["test"] = _test_members(plan, test_images)
        with atomic_write(test_path) as f:
            write_tar(f, splits["test"])
    elif os.path.exists(test_path):
        os.remove(test_path)

    devkit = devkit_bytes(class_list)
    with atomic_write(os.path.join(dest, DEVKIT_TAR)) as f:
        f.write(devkit)

    expected = _expectations(splits, dups.groups)
    archives = {"train": train_path, "val": os.path.join(dest, VAL_TAR), "devkit": os.path.join(dest, DEVKIT_TAR)}
    if test_images:
        archives["test"] = test_path
    release = SampleRelease(root=dest, archives=archives, expected=expected, classes=class_list)
    if near is not None:
        release = replace(release, near_duplicates=tuple(
            NearCopy(placed[id(near.original)], placed[id(image)], image.kind) for image, _ in near.copies),
            other_photographs=tuple(placed[id(image)] for image in near.others))
    return plant_annotations(release, seed, plant_faults) if boxes else release



def _near_in_train(near: Optional[NearDuplicatePlan], classes: int) -> dict[int, list[PlantedImage]]:
    """The class index -> the planted images of its tar: the original in the first class, the train
    copies in the second, the other photographs in the last."""
    if near is None:
        return {}
    at: dict[int, list[PlantedImage]] = {0: [near.original]}
    at.setdefault(1, []).extend(image for image, where in near.copies if where == "train")
    at.setdefault(classes - 1, []).extend(near.others)
    return at


def _planted_member(name: str, image: PlantedImage) -> Member:
    return Member(name, name[:-5], image.case, image.data, reencoded=photo_reencoded(image.data), note=image.note,
                  photo=image.photo)


def _label(wnid: str) -> int:
    """The 1000-class label of an ILSVRC2012 WNID."""
    label = label_of(wnid)
    if label is None:
        raise ValueError(f"{wnid} is not an ILSVRC2012 class")
    return label


def _fingerprint(m: Member) -> None:
    """Set the digest of the member's bytes, and PIL's header of them when the member is to be kept."""
    if m.data is not None:
        m.sha256 = hashlib.sha256(m.data).hexdigest()
        if outcome_of(m.case) == "kept":
            m.header = header_of(m.data)


def _place_train_faults(plan: Planner, class_list: list[str]) -> dict[int, list[tuple[str, str, Optional[str]]]]:
    """The class index -> the (case, variant, fixed key or None) of the train faults planted in its tar."""
    classes = len(class_list)
    order = list(range(classes))
    plan.rng.shuffle(order)
    fault_at: dict[int, list[tuple[str, str, Optional[str]]]] = {}
    for j, fault in enumerate(TRAIN_FAULTS):
        ci, fixed = order[j % classes], None
        real = [k for k in REAL_TRAIN_NAMES.get(fault, ()) if k.split("_")[0] in class_list]
        if real:
            fixed = real[0]
            ci = class_list.index(fixed.split("_")[0])
            plan.train_numbers.setdefault(class_list[ci], set()).add(int(fixed.split("_")[1]))
        elif fault[0] == "duplicate" and ci == 0 and classes > 1:
            ci = order[-1] if order[-1] != 0 else order[-2]  # It needs an earlier class to copy from.
        fault_at.setdefault(ci, []).append((fault[0], fault[1], fixed))
    return fault_at


def _train_photo(plan: Planner, wnid: str) -> Member:
    """A new photo member of the class tar of `wnid`."""
    name = plan.train_name(wnid)
    return plan.photo(name, name[:-5])


def _write_train(outer_file: IO[bytes], plan: Planner, class_list: list[str], train_per_class: int,
                 fault_at: dict, min_bytes: int, dups: _Duplicates, near_at: dict, placed: dict) -> list[Member]:
    """Write the train tar of class tars to `outer_file`; return its members (their bytes dropped, once
    hashed, except for the photos that may still be copied). near_at: _near_in_train's; placed: where
    each planted image goes, filled in."""
    written: list[Member] = []
    running = 0
    with tarfile.open(fileobj=outer_file, mode="w", format=tarfile.GNU_FORMAT) as outer:
        for ci, wnid in enumerate(class_list):
            label = _label(wnid)
            members: list[Member] = []
            for _ in range(train_per_class):
                members.append(_train_photo(plan, wnid))
            for image in near_at.get(ci, ()):
                members.append(_planted_member(plan.train_name(wnid), image))
                placed[id(image)] = ("train", members[-1].key)
            for case, variant, fixed in fault_at.get(ci, []):
                name = f"{fixed}.JPEG" if fixed else plan.train_name(wnid)
                key = name[:-5]
                if case == "duplicate":
                    pool = [p for p in dups.pool if p.wnid != wnid] or [p for p in members if p.case == "photo"]
                    src = plan.rng.choice(pool)
                    dups.used.add(src.key)
                    dups.pool[:] = [p for p in dups.pool if p is not src]
                    members.append(Member(name, key, case, src.data, reencoded=src.reencoded,
                                          note=f"same bytes as train {src.key}"))
                    dups.groups.append({("train", src.key), ("train", key)})
                elif case == "symlink":
                    target = plan.rng.choice([m for m in members if m.case == "photo"])
                    members.append(Member(name, key, case, kind="symlink", linkname=target.name,
                                          note=f"symbolic link to {target.name}"))
                else:
                    members.append(plan.fault(case, name, key, variant))
            running += sum(len(m.data) for m in members if m.data)
            goal = min_bytes * (ci + 1) / len(class_list)
            while running < goal:
                photo = _train_photo(plan, wnid)
                members.append(photo)
                running += len(photo.data or b"")
            for m in members:
                m.wnid, m.label = wnid, label
            if len(dups.pool) < 8:
                dups.pool.extend([m for m in members if m.case == "photo" and m.key not in dups.used][:1])
            plan.rng.shuffle(members)
            members = place_links_after_targets(members)
            inner = tar_bytes(members)
            outer.addfile(tar_info(f"{wnid}.tar", len(inner)), io.BytesIO(inner))
            keep = {id(p) for p in dups.pool}
            for m in members:
                _fingerprint(m)
                if id(m) not in keep:
                    m.data = None  # The member is written: only its digest and header are needed from here on.
            written.extend(members)
    return written


def _val_members(plan: Planner, val_slots: list[ValSlot], plant_faults: bool, dups: _Duplicates,
                 near: list[PlantedImage], placed: dict) -> list[Member]:
    """The members of the val tar in their order: real labelled indices, shuffled, with the val faults
    and the planted near-duplicates `near` (placed: where each goes, filled in)."""
    members: list[Member] = []
    fault_slots: dict[int, tuple[str, str]] = {}
    if plant_faults:
        slots = plan.rng.sample(range(len(val_slots)), len(VAL_FAULTS))
        real = [pos for pos, slot in enumerate(val_slots) if slot.index == REAL_VAL_CMYK_INDEX]
        cmyk_at = VAL_FAULTS.index(("cmyk", ""))
        if real and real[0] not in slots:  # The real CMYK val image is in this subset: plant it there.
            slots[cmyk_at] = real[0]
        elif real:
            at = slots.index(real[0])
            slots[at], slots[cmyk_at] = slots[cmyk_at], slots[at]
        fault_slots = dict(zip(slots, VAL_FAULTS))
    free = [pos for pos in range(len(val_slots)) if pos not in fault_slots]
    near_slots = dict(zip(plan.rng.sample(free, len(near)), near)) if near else {}
    for pos, slot in enumerate(val_slots):
        key = val_key(slot.index)
        name = f"{key}.JPEG"
        case, variant = fault_slots.get(pos, ("photo", ""))
        if pos in near_slots:
            m = _planted_member(name, near_slots[pos])
            placed[id(near_slots[pos])] = ("val", key)
        elif case == "photo":
            m = plan.photo(name, key)
        elif case == "duplicate":
            src = plan.rng.choice(dups.pool)
            dups.used.add(src.key)
            m = Member(name, key, case, src.data, reencoded=src.reencoded,
                       note=f"same bytes as train {src.key} (a cross-split duplicate)")
            dups.groups.append({("train", src.key), ("val", key)})
        elif case == "hardlink":
            m = Member(name, key, case, kind="hardlink", note="hard link to another val member")
        else:
            m = plan.fault(case, name, key, variant)
        m.wnid, m.label = slot.wnid, _label(slot.wnid)
        members.append(m)
    for m in members:
        if m.kind == "hardlink":
            target = plan.rng.choice([t for t in members if t.case == "photo"])
            m.linkname = target.name
            m.note = f"hard link to {target.name}"
    if plant_faults:
        key = val_key(_NUM_VAL_GT + plan.rng.randint(1, 999))
        m = plan.photo(f"{key}.JPEG", key, allow_large=False)
        m.case, m.reencoded, m.note = "unlabeled", None, f"{m.note}; index past the 50,000 of the ground truth"
        members.append(m)
    plan.rng.shuffle(members)
    if plant_faults:
        members.insert(plan.rng.randrange(1, len(members)), Member("extras", "", "", kind="dir"))
    members = place_links_after_targets(members)
    names = [m.name for m in members if m.kind != "dir"]
    if len(names) > 1 and names == sorted(names):  # The real val tar is not sorted; never be so by chance.
        members.append(members.pop(0))
    return members


def _test_members(plan: Planner, test_images: int) -> list[Member]:
    """The members of the test tar in their order: sparse indices, shuffled, unlabelled."""
    members = []
    for index in sorted(plan.rng.sample(range(1, _NUM_TEST + 1), test_images)):
        name = f"ILSVRC2012_test_{index:08d}.JPEG"
        members.append(plan.photo(name, name[:-5]))
    plan.rng.shuffle(members)
    return members


def _expectations(splits: dict[str, list[Member]],
                  planted_groups: list[set[tuple[str, str]]]) -> dict[str, dict[str, ExpectedSample]]:
    """The split -> key -> ExpectedSample of the written members; checks that the only byte duplicates
    are the planted ones."""
    sha_keys: dict[str, list[tuple[str, str]]] = {}  # sha256 -> [(split, key)]
    for split, members in splits.items():
        for m in members:
            if split != "train":
                _fingerprint(m)
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

    expected: dict[str, dict[str, ExpectedSample]] = {"train": {}, "val": {}, "test": {}}
    for split, members in splits.items():
        archive = {"train": TRAIN_TAR, "val": VAL_TAR, "test": TEST_TAR}[split]
        for m in members:
            if m.key in expected[split]:
                raise AssertionError(f"two members with key {m.key} in {split}")
            outcome = outcome_of(m.case)
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
                photo=m.photo,
            )
    return expected
