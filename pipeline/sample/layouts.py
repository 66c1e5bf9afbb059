"""export_layout: the members of a sample release in another layout, with the expectations moved along.

The layouts are Kaggle's (ILSVRC/Data/CLS-LOC with LOC_val_solution.csv), an ImageFolder tree and the
three shapes ImageNet-21k ships in.
"""
from __future__ import annotations

import importlib.resources
import io
import os
import posixpath
import tarfile
from dataclasses import replace
from typing import Iterator, Optional

from pipeline.sample.archives import TEST_TAR, TRAIN_TAR, VAL_TAR, Member, gzip_bytes, read_member, tar_bytes
from pipeline.sample.expected import ExpectedSample, SampleRelease

__all__ = ["LAYOUTS", "export_layout"]

LAYOUTS = ("kaggle", "imagefolder", "in21k_folder", "in21k_tar", "in21k_gz")


def _official_members(release: SampleRelease) -> Iterator[tuple[str, Optional[str], str, bytes]]:
    """The (split, class WNID or None, member name, bytes) of every regular file of a release's archives."""
    splits = {"train": release.archives["train"], "val": release.archives["val"], "test": release.archives.get("test")}
    for split, path in splits.items():
        if not path:
            continue
        with tarfile.open(path) as outer:
            for info in outer:
                if not info.isreg():
                    continue  # Links and directories have no folder form.
                data = read_member(outer, info)
                if split == "train":
                    wnid = posixpath.basename(info.name)[: -len(".tar")]
                    with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                        for member in inner:
                            if member.isreg():
                                yield split, wnid, member.name, read_member(inner, member)
                else:
                    yield split, None, info.name, data


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def export_layout(release: SampleRelease, dest, layout: str) -> SampleRelease:
    """The same samples in another layout, under `dest`.

    "kaggle" writes ILSVRC/Data/CLS-LOC, ILSVRC/Annotations/CLS-LOC and LOC_val_solution.csv;
    "imagefolder" writes <split>/<wnid>/<file> (the test split flat; the bbox archives stay where they
    are, in `archives`, for --boxes); "in21k_folder", "in21k_tar" and "in21k_gz" write the train class
    tars as ImageNet-21k ships them. The links of the official tars have no folder form and are left
    out (with their expectations).
    """
    dest = os.fspath(dest)
    if layout.startswith("in21k"):
        return _export_in21k(release, dest, layout)
    if layout not in ("kaggle", "imagefolder"):
        raise ValueError(f"unknown layout {layout!r}")
    expected: dict[str, dict[str, ExpectedSample]] = {split: {} for split in release.expected}
    by_source = {e.source: e for es in release.expected.values() for e in es.values()}
    csv_rows = []
    for split, wnid, name, data in _official_members(release):
        archive = {"train": TRAIN_TAR, "val": VAL_TAR, "test": TEST_TAR}[split]
        e = by_source[f"{archive}/{wnid}.tar/{name}" if split == "train" else f"{archive}/{name}"]
        if layout == "kaggle":
            relative = f"ILSVRC/Data/CLS-LOC/{split}/" + (f"{wnid}/{name}" if wnid else name)
            if split == "val" and e.wnid:
                if e.boxes or e.outcome != "kept":  # An XML gives its boxes: a different CSV box must lose.
                    csv_rows.append(f"{e.key},{e.wnid} 0 0 1 1")
                else:  # Without a usable XML the CSV's box counts, normalised by the decoded image's size.
                    assert e.orig_width is not None and e.orig_height is not None  # a kept sample has its size
                    w, h = e.orig_width, e.orig_height
                    csv_rows.append(f"{e.key},{e.wnid} {w} 2 1 {h // 2}")  # xmin > xmax: swapped
                    e = replace(e, boxes=((1 / w, 2 / h, 1.0, (h // 2) / h),), box_names=(e.wnid,))
        else:
            folder = wnid or (e.wnid if split == "val" else None)
            relative = f"{split}/{folder}/{name}" if folder else f"{split}/{name}"
        path = os.path.join(dest, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_file(path, data)
        expected[split][e.key] = replace(e, source=relative)
    if layout == "kaggle":
        _write_kaggle_annotations(release, dest, csv_rows)
    # ImageFolder has no place for annotations: pass the original archives with --boxes.
    bbox = {r: p for r, p in release.archives.items() if r.startswith("bbox_")}
    return SampleRelease(dest, bbox, expected, list(release.classes), release.annotation_rejects,
                         release.orphan_annotations)


def _write_kaggle_annotations(release: SampleRelease, dest: str, csv_rows: list[str]) -> None:
    """The annotation XML as files under ILSVRC/Annotations/CLS-LOC/{train/<wnid>,val}/, the CSV of
    the validation boxes and the synset mapping."""
    for role, prefix in (("bbox_train", "train/"), ("bbox_val", "")):
        if role not in release.archives:
            continue
        with tarfile.open(release.archives[role]) as tar:
            for info in tar:
                if info.isreg():
                    path = os.path.join(dest, "ILSVRC/Annotations/CLS-LOC", prefix + info.name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _write_file(path, read_member(tar, info))
    with open(os.path.join(dest, "LOC_val_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\n" + "".join(row + "\n" for row in sorted(csv_rows)))
    _write_file(os.path.join(dest, "LOC_synset_mapping.txt"),
                importlib.resources.files("transforms").joinpath("data", "LOC_synset_mapping.txt").read_bytes())


def _export_in21k(release: SampleRelease, dest: str, layout: str) -> SampleRelease:
    """The train class tars as ImageNet-21k ships them: "in21k_folder" (<wnid>.tar files),
    "in21k_tar" (fall11_whole.tar, a tar of them) or "in21k_gz" (winter21_whole.tar.gz).
    The labels become the index in the sorted WNIDs present; only the train split exists."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(release.archives["train"]) as outer:
        class_tars = [(os.path.basename(i.name), read_member(outer, i)) for i in outer if i.isreg()]
    wnids = sorted(name[: -len(".tar")] for name, _ in class_tars)
    if layout == "in21k_folder":
        for name, data in class_tars:
            _write_file(os.path.join(dest, name), data)
        prefix = ""
    else:
        raw = tar_bytes([Member(f"winter21_whole/{n}", "", "", d) for n, d in class_tars])
        if layout == "in21k_tar":
            name, payload = "fall11_whole.tar", raw
        else:
            name, payload = "winter21_whole.tar.gz", gzip_bytes(raw, "winter21_whole.tar")
        _write_file(os.path.join(dest, name), payload)
        prefix = f"{name}/winter21_whole/" if layout == "in21k_tar" else ""
    expected: dict[str, dict[str, ExpectedSample]] = {"train": {}}
    for key, e in release.expected["train"].items():  # The class tars are copied whole: links and faults stay.
        wnid_source = e.source.split("/", 1)[1]  # "<wnid>.tar/<member>"
        expected["train"][key] = replace(e, label=wnids.index(e.wnid) if e.wnid in wnids else e.label,
                                         source=prefix + wnid_source, boxes=(), box_names=(),
                                         label_disagrees=False)
    return SampleRelease(dest, {}, expected, wnids)
