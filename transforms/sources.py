"""Find what SOURCE holds: its layout, which split comes from where, and the labels.

Contract: discover(SOURCE, layout=None) -> Discovery, or a SourceError that says what was
expected and what was found. Layouts (auto-detected; `--layout` forces one):

- `ilsvrc2012`: the official archives (train tar of class tars, flat val tar + devkit, test tar);
- `kaggle`: the Kaggle copy (ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/, test/} + LOC_*.csv);
- `imagefolder`: SOURCE/<split>/<class>/<image> (labels: sorted class names, or the standard
  1000-class index when the classes are ILSVRC2012 WNIDs).

A missing split is a warning; no split at all is an error.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
import re
import tarfile
from typing import Callable, Optional

from transforms.archives import TarSlice, list_inner_tars
from transforms.classes import ClassFilter, coarse_classes, manifest_classes, select_classes
from transforms.keys import WNID, readable_name
from transforms.labels import ClassInfo, KeyTable, Labeler, imagenet_classes
from transforms.records import AnnotationSource, SourceError
from transforms.release_files import bundled_val_blacklist, read_devkit, read_kaggle_val_labels
from transforms.storage import atomic_write, listed, locate, open_input

__all__ = ["ArchiveSpec", "Discovery", "discover", "detect_layout", "LAYOUTS", "stage_gzipped_tar"]

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
TEST_GLOB = "ILSVRC2012_img_test*.tar"
BBOX_GLOBS = ("ILSVRC2012_bbox_*.tar.gz", "ILSVRC2012_bbox_*.tgz", "ILSVRC2012_bbox_*.tar")
KAGGLE_ANNOTATIONS = "ILSVRC/Annotations/CLS-LOC"
KAGGLE_DATA = "ILSVRC/Data/CLS-LOC"
KAGGLE_VAL_CSV = "LOC_val_solution.csv"
KAGGLE_TRAIN_CSV = "LOC_train_solution.csv"
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}

LAYOUTS = {
    "ilsvrc2012": f"{TRAIN_TAR} (a tar of 1,000 per-class tars), {VAL_TAR} with {DEVKIT} (its labels), "
                  f"optionally {TEST_GLOB}",
    "kaggle": f"{KAGGLE_DATA}/train/<wnid>/*.JPEG, {KAGGLE_DATA}/val/*.JPEG with {KAGGLE_VAL_CSV}, "
              f"optionally {KAGGLE_DATA}/test/",
    "imagefolder": "<split>/<class>/<image> with split folders named train, val (or validation), test",
    "in21k": "ImageNet-21k: per-class tars <wnid>.tar in a folder, or a tar (fall11_whole.tar) or gzipped tar "
             "(winter21_whole.tar.gz) of them",
}
_CLASS_TAR = re.compile(rf"{WNID.pattern}\.tar")  # fullmatch
_WHOLE = re.compile(r".*\.(tar|tar\.gz|tgz)$")


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """One unit to index: a tar or a folder, holding one split's samples."""

    split: str
    url: str
    name: str  # readable name, the prefix of its members' `source`
    size: int  # bytes (0 for folders)
    kind: str  # "nested_tar" (tar of class tars) | "tar" | "class_folders" (folder of class folders) | "folder"
    labelled: bool  # its samples must carry a class
    class_name: Optional[str] = None  # the class of every sample (a per-class tar or folder)


@dataclasses.dataclass(frozen=True)
class Discovery:
    layout: str
    archives: tuple
    classes: tuple  # ClassInfo of the label space
    key_classes: dict  # {split: {key: class}} for splits labelled by a table
    inputs: tuple  # [{name, size}] of the files the build reads (folders: their image count is not listed)
    warnings: tuple
    annotations: tuple = ()  # AnnotationSource of the bounding-box XML
    loc_blacklist: frozenset = frozenset()  # val keys the devkit excludes from localisation
    left_out: frozenset = frozenset()  # classes of the dataset left out by --classes
    needs_staging: Optional[ArchiveSpec] = None  # a gzipped tar of class tars: stage it, then discover again
    holdout_per_class: int = 0  # --val-per-class: train images per class moved to val (by seeded key hash)
    class_matches: tuple = ()  # ((--classes entry, classes it matched), ...)
    coarse: tuple = ()  # ClassInfo of the coarse classes whose labels the samples take (--label-level)
    coarse_of: dict = dataclasses.field(default_factory=dict)  # {class: its coarse class} (--label-level)
    min_per_class: int = 0  # --min-per-class: classes with fewer members are left out
    relabel: bool = False  # --relabel: labels 0..K-1 in sorted order of the classes kept

    def select(self, splits=None, classes=None, relabel: bool = False) -> Discovery:
        """Only these splits and/or classes (e.g. ImageNet-100); a class entry `n02084071+` selects
        every class under that synset. Labels keep their index in the full class list unless
        `relabel` compacts them to 0..K-1 (in sorted class order)."""
        d = self
        if splits:
            unknown = set(splits) - {a.split for a in d.archives}
            if unknown:
                raise SourceError(f"--splits names {', '.join(sorted(unknown))}, which SOURCE does not have "
                                  f"(it has {', '.join(sorted({a.split for a in d.archives}))})")
            d = dataclasses.replace(d, archives=tuple(a for a in d.archives if a.split in splits))
        if classes:
            known = {c.wnid: c for c in d.classes}
            chosen, matches = select_classes(classes, list(known))
            subset = tuple(ClassInfo(i if relabel else known[w].label, w, known[w].name) for i, w in enumerate(chosen))
            d = dataclasses.replace(d, classes=subset, left_out=frozenset(known) - set(chosen), class_matches=matches)
        elif relabel and d.min_per_class:
            d = dataclasses.replace(d, classes=tuple(ClassInfo(i, c.wnid, c.name) for i, c in enumerate(
                sorted(d.classes, key=lambda c: c.wnid))))
        elif relabel:
            raise SourceError("--relabel goes with --classes or --min-per-class")
        return dataclasses.replace(d, relabel=relabel)

    def with_min_per_class(self, n: int) -> Discovery:
        """Leave out the classes with fewer than n members, counted over the splits built (call it before select)."""
        return dataclasses.replace(self, min_per_class=n)

    def with_label_level(self, coarse_wnids, on_several: str = "error") -> Discovery:
        """The samples take the label of their coarse class: the one class of `coarse_wnids` (a list,
        whose order gives the labels) that they are or lie under (call it after select)."""
        coarse, coarse_of = coarse_classes(self.classes, list(coarse_wnids), on_several)
        return dataclasses.replace(self, coarse=coarse, coarse_of=coarse_of)

    def class_filter(self) -> Optional[ClassFilter]:
        """What --min-per-class keeps (None without it)."""
        if not self.min_per_class:
            return None
        return ClassFilter(self.min_per_class, tuple(c.wnid for c in self.classes), self.relabel)

    def manifest_classes(self) -> dict:
        """The manifest's `classes` (and, under coarse labels, `fine_classes`), with their WordNet facts."""
        return manifest_classes(self.classes, self.coarse, self.coarse_of)

    def with_label_map(self, wnids) -> Discovery:
        """Labels from a list (one WNID per line, e.g. a 21k model's order) instead of sorted order;
        classes present but missing from the list become `unlabeled` rejects."""
        return dataclasses.replace(self, classes=_class_infos(wnids))

    def with_holdout(self, per_class: int) -> Discovery:
        if any(a.split == "val" for a in self.archives):
            raise SourceError("--val-per-class: this dataset has a val split already")
        return dataclasses.replace(self, holdout_per_class=per_class)

    def with_boxes(self, urls) -> Discovery:
        """The same, with annotation sources given by the user (--boxes) added."""
        extra = tuple(AnnotationSource(u, posixpath.basename(u.rstrip("/"))) for u in urls)
        return dataclasses.replace(self, annotations=self.annotations + extra)

    def labeler(self) -> Labeler:
        labelled = {a.split for a in self.archives if a.labelled} | ({"val"} if self.holdout_per_class else set())
        tables = {split: KeyTable(keys) for split, keys in self.key_classes.items()}  # compact in pickles
        coarse_label = {c.wnid: c.label for c in self.coarse}
        coarse = {fine: (coarse_label[c], c) for fine, c in self.coarse_of.items()}
        return Labeler({c.wnid: c.label for c in self.classes}, tables, frozenset(labelled), self.left_out, coarse)


def _fs(source: str):
    fs, root, url = locate(source)
    return fs, root.rstrip("/"), url


def _entries(fs, path: str) -> dict:
    """{name: info} of a folder's direct entries (sizes asked for where an http(s) listing has none)."""
    return {posixpath.basename(i["name"].rstrip("/")): i for i in listed(fs, fs.ls(path, detail=True))}


def discover(source: str, layout: Optional[str] = None) -> Discovery:
    fs, root, _ = _fs(source)
    if not fs.exists(root):
        raise SourceError(f"SOURCE {source!r} does not exist")
    if not fs.isdir(root):
        raise SourceError(f"SOURCE {source!r} is not a folder: point it at the folder holding the dataset")
    if layout is None:
        layout = detect_layout(source)
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    return {"ilsvrc2012": _discover_ilsvrc2012, "kaggle": _discover_kaggle,
            "imagefolder": _discover_imagefolder, "in21k": _discover_in21k}[layout](source)


def detect_layout(source: str) -> str:
    fs, root, _ = _fs(source)
    names = _entries(fs, root)
    if TRAIN_TAR in names or VAL_TAR in names or any(fnmatch.fnmatch(n, TEST_GLOB) for n in names):
        return "ilsvrc2012"
    if fs.isdir(f"{root}/{KAGGLE_DATA}"):
        return "kaggle"
    if any(n.lower() in SPLIT_NAMES and names[n]["type"] == "directory" for n in names):
        return "imagefolder"
    if any(_CLASS_TAR.fullmatch(n) for n in names) or any("whole" in n and _WHOLE.match(n) for n in names):
        return "in21k"
    found = ", ".join(sorted(names)[:20]) or "nothing"
    expected = "\n".join(f"  {name}: {what}" for name, what in LAYOUTS.items())
    raise SourceError(f"SOURCE {source!r} is in no layout this tool knows.\nfound: {found}\n"
                      f"expected one of:\n{expected}")


def _standard_classes() -> tuple:
    return imagenet_classes()


def _no_split_error(source: str, layout: str, found) -> SourceError:
    return SourceError(f"no {layout} split found in SOURCE {source!r}.\n  expected: {LAYOUTS[layout]}"
                       f"\n  found: {', '.join(sorted(found)) or 'nothing'}")


# --- the official archives ----------------------------------------------------------

def _discover_ilsvrc2012(source: str) -> Discovery:
    fs, root, url = _fs(source)
    found = {n: (url(i["name"]), int(i.get("size") or 0)) for n, i in _entries(fs, root).items() if i["type"] == "file"}
    archives: list[ArchiveSpec] = []
    warnings: list[str] = []
    inputs: list[dict] = []
    key_classes: dict[str, dict[str, str]] = {}
    blacklist: frozenset[str] = frozenset()

    def use(name: str, split: str, kind: str, labelled: bool) -> None:
        path, size = found[name]
        if size == 0:  # an interrupted download or a placeholder: nothing to build from
            raise SourceError(f"{name} in SOURCE is empty (0 bytes): download it again, or move it away to build "
                              "without its split")
        archives.append(ArchiveSpec(split, path, name, size, kind, labelled))
        inputs.append({"name": name, "size": size})

    if TRAIN_TAR in found:
        use(TRAIN_TAR, "train", "nested_tar", labelled=True)
    else:
        warnings.append(f"no {TRAIN_TAR} in SOURCE: building without the train split")
    if VAL_TAR in found:
        if DEVKIT not in found:
            raise SourceError(f"{VAL_TAR} is in SOURCE but {DEVKIT} is not: the validation labels come from "
                              "the devkit. Add it next to the val tar.")
        use(VAL_TAR, "val", "tar", labelled=True)
        path, size = found[DEVKIT]
        inputs.append({"name": DEVKIT, "size": size})
        key_classes["val"], blacklist = read_devkit(path)
    else:
        warnings.append(f"no {VAL_TAR} in SOURCE: building without the val split")
    tests = sorted(n for n in found if fnmatch.fnmatch(n, TEST_GLOB))
    for name in tests:
        use(name, "test", "tar", labelled=False)
    if len(tests) > 1:
        warnings.append(f"several test tars ({', '.join(tests)}): all go into the test split")
    if not archives:
        raise _no_split_error(source, "ilsvrc2012", found)
    boxes = sorted(n for n in found if any(fnmatch.fnmatch(n, g) for g in BBOX_GLOBS))
    inputs += [{"name": n, "size": found[n][1]} for n in boxes]
    return Discovery("ilsvrc2012", tuple(archives), _standard_classes(), key_classes, tuple(inputs), tuple(warnings),
                     tuple(AnnotationSource(found[n][0], n) for n in boxes), blacklist)


# --- Kaggle -------------------------------------------------------------------------

def _discover_kaggle(source: str) -> Discovery:
    fs, root, url = _fs(source)
    data = f"{root}/{KAGGLE_DATA}"
    present = _entries(fs, data) if fs.isdir(data) else {}
    archives, warnings, key_classes = [], [], {}
    # Kaggle has no devkit, but its val images are ILSVRC2012's under their own names: the bundled
    # blacklist says which of them the devkit excludes from localisation.
    blacklist: frozenset[str] = frozenset()
    if "train" in present:
        archives.append(ArchiveSpec("train", url(f"{data}/train"), f"{KAGGLE_DATA}/train", 0, "class_folders", True))
    else:
        warnings.append(f"no {KAGGLE_DATA}/train: building without the train split")
    if "val" in present:
        csv_path = f"{root}/{KAGGLE_VAL_CSV}"
        if not fs.exists(csv_path):
            raise SourceError(f"{KAGGLE_DATA}/val is in SOURCE but {KAGGLE_VAL_CSV} is not: it holds the val labels")
        key_classes["val"] = read_kaggle_val_labels(url(csv_path))
        blacklist = bundled_val_blacklist()
        archives.append(ArchiveSpec("val", url(f"{data}/val"), f"{KAGGLE_DATA}/val", 0, "folder", True))
    else:
        warnings.append(f"no {KAGGLE_DATA}/val: building without the val split")
    if "test" in present:
        archives.append(ArchiveSpec("test", url(f"{data}/test"), f"{KAGGLE_DATA}/test", 0, "folder", False))
    if not archives:
        raise _no_split_error(source, "kaggle", present)
    inputs = tuple({"name": a.name, "size": 0} for a in archives)
    annotations: list[AnnotationSource] = []
    if fs.isdir(f"{root}/{KAGGLE_ANNOTATIONS}"):
        annotations.append(AnnotationSource(url(f"{root}/{KAGGLE_ANNOTATIONS}"), KAGGLE_ANNOTATIONS))
    for name in (KAGGLE_TRAIN_CSV, KAGGLE_VAL_CSV):  # boxes too; where an XML gives them as well, the XML wins
        if fs.exists(f"{root}/{name}"):
            annotations.append(AnnotationSource(url(f"{root}/{name}"), name, "kaggle_csv"))
    return Discovery("kaggle", tuple(archives), _standard_classes(), key_classes, inputs, tuple(warnings),
                     tuple(annotations), blacklist)


# --- ImageFolder --------------------------------------------------------------------

def _discover_imagefolder(source: str) -> Discovery:
    fs, root, url = _fs(source)
    entries = _entries(fs, root)
    splits: dict[str, str] = {}  # split -> folder name
    for name, info in sorted(entries.items()):
        split = SPLIT_NAMES.get(name.lower())
        if split and info["type"] == "directory":
            if split in splits:
                raise SourceError(f"both {splits[split]}/ and {name}/ would be the {split} split")
            splits[split] = name
    if not splits:
        raise _no_split_error(source, "imagefolder", entries)
    archives, warnings = [], []
    class_names: set[str] = set()
    for split, folder in sorted(splits.items()):
        sub = _entries(fs, f"{root}/{folder}")
        dirs = sorted(n for n, i in sub.items() if i["type"] == "directory" and not n.startswith("."))
        loose = [n for n, i in sub.items() if i["type"] == "file" and not n.startswith(".")]
        if dirs:
            class_names.update(readable_name(d) for d in dirs)  # as the FolderSlices name them
            archives.append(ArchiveSpec(split, url(f"{root}/{folder}"), folder, 0, "class_folders", True))
            if loose:
                warnings.append(f"{folder}/ has {len(loose)} files outside class folders: rejected as unlabeled")
        elif loose and split == "test":
            archives.append(ArchiveSpec(split, url(f"{root}/{folder}"), folder, 0, "folder", False))
        else:
            warnings.append(f"{folder}/ holds no class folders: skipped")
    if not archives:
        raise _no_split_error(source, "imagefolder", entries)
    standard = {c.wnid for c in imagenet_classes()}
    if class_names <= standard:
        classes = _standard_classes()
    else:
        classes = tuple(ClassInfo(i, name, name) for i, name in enumerate(sorted(class_names)))
    inputs = tuple({"name": a.name, "size": 0} for a in archives)
    return Discovery("imagefolder", tuple(archives), classes, {}, inputs, tuple(warnings))


# --- ImageNet-21k -------------------------------------------------------------------

def _class_infos(wnids) -> tuple:
    names = {c.wnid: c.name for c in imagenet_classes()}
    return tuple(ClassInfo(i, w, names.get(w, "")) for i, w in enumerate(wnids))


def _discover_in21k(source: str) -> Discovery:
    """Per-class tars in SOURCE, or one tar / gzipped tar of them (train only: 21k has no val;
    --val-per-class holds some out). Labels: index in the sorted WNIDs present (or --label-map)."""
    fs, root, url = _fs(source)
    entries = {n: i for n, i in _entries(fs, root).items() if i["type"] == "file"}
    class_tars = sorted(n for n in entries if _CLASS_TAR.fullmatch(n))
    if class_tars:
        archives = tuple(ArchiveSpec("train", url(entries[n]["name"]), n, int(entries[n]["size"]), "tar", True,
                                     n[: -len(".tar")]) for n in class_tars)
        inputs = tuple({"name": n, "size": int(entries[n]["size"])} for n in class_tars)
        return Discovery("in21k", archives, _class_infos(a.class_name for a in archives), {}, inputs, ())
    wholes = sorted(n for n in entries if _WHOLE.match(n))
    if len(wholes) != 1:
        raise _no_split_error(source, "in21k", entries)
    name = wholes[0]
    spec = ArchiveSpec("train", url(entries[name]["name"]), name, int(entries[name]["size"]),
                       "nested_tar", True)
    inputs = ({"name": name, "size": spec.size},)
    if not name.endswith(".tar"):  # gzip: not seekable, stage its class tars first
        return Discovery("in21k", (), (), {}, inputs, (), needs_staging=spec)
    # the class list only: a damaged tar fails the build (or is accepted) when IndexArchives reads it
    inner = list_inner_tars("train", spec.url, name, accept_damaged=True)
    wnids = sorted(t.wnid for t in inner if isinstance(t, TarSlice) and t.wnid)
    return Discovery("in21k", (spec,), _class_infos(wnids), {}, inputs, ())


def stage_gzipped_tar(spec: ArchiveSpec, staging_url: str, progress: Optional[Callable[[int], None]] = None) -> None:
    """One sequential pass over a gzipped tar of class tars: each <wnid>.tar is written whole to
    staging (a temporary area of the output, never memory) so the build can read it by ranges."""
    with open_input(spec.url) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for info in tar:
            name = posixpath.basename(info.name)
            if not (info.isreg() and _CLASS_TAR.fullmatch(name)):
                continue
            src = tar.extractfile(info)
            if src is None:
                continue
            with atomic_write(f"{staging_url.rstrip('/')}/{name}") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            if progress:
                progress(info.size)
