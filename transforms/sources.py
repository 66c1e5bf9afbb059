"""Find the official ILSVRC2012 files in SOURCE and the labels they need.

Contract: discover_official(SOURCE) -> Discovery (which split comes from which archive,
the devkit's validation labels), or a SourceError that says what was expected and what
was found. A missing split is a warning; no split at all is an error.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import posixpath
import tarfile
from typing import Callable, Optional

import fsspec

from transforms.archives import TarSlice
from transforms.labels import parse_validation_ground_truth
from transforms.storage import open_input

__all__ = ["SourceError", "ArchiveSpec", "Discovery", "discover_official", "read_devkit_labels",
           "OFFICIAL_MD5", "verify_md5", "EXPECTED_FILES"]

# Published MD5 sums of the official archives (the ones torchvision's ImageNet checks).
OFFICIAL_MD5 = {
    "ILSVRC2012_img_train.tar": "1d675b47d978889d74fa0da5fadfb00e",
    "ILSVRC2012_img_val.tar": "29b22e2961454d5413ddabcf34fc5622",
    "ILSVRC2012_devkit_t12.tar.gz": "fa75699e90414af021442c21a62c3abf",
}

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
TEST_GLOB = "ILSVRC2012_img_test*.tar"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"

EXPECTED_FILES = (
    f"{TRAIN_TAR} (a tar of 1,000 per-class tars)",
    f"{VAL_TAR} (flat ILSVRC2012_val_%08d.JPEG) with {DEVKIT} (its labels)",
    f"{TEST_GLOB} (optional, unlabeled)",
)


class SourceError(Exception):
    """SOURCE cannot be used as it is (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    split: str
    url: str
    name: str
    size: int
    nested: bool  # a tar of per-class tars (train) rather than a flat tar of images
    labelled: bool  # its samples must carry a class


@dataclasses.dataclass(frozen=True)
class Discovery:
    layout: str
    archives: tuple[ArchiveSpec, ...]
    val_labels: Optional[dict]  # {val key: wnid} from the devkit, None without val
    inputs: tuple[dict, ...]  # [{name, size}] of every file the build reads
    warnings: tuple[str, ...]

    def flat_slices(self) -> list[TarSlice]:
        """The archives that are indexed directly (not tars of tars)."""
        return [TarSlice(a.split, a.url, 0, a.size, a.name) for a in self.archives if not a.nested]


def _listing(source: str) -> dict[str, tuple[str, int]]:
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        raise SourceError(f"SOURCE {source!r} does not exist")
    if not fs.isdir(root):
        raise SourceError(f"SOURCE {source!r} is not a folder: point it at the folder holding the archives")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = {}
    for info in fs.ls(root, detail=True):
        if info.get("type") == "file":
            name = posixpath.basename(info["name"].rstrip("/"))
            path = info["name"] if protocol in ("file", "local") else f"{protocol}://{info['name']}"
            found[name] = (path, int(info.get("size") or 0))
    return found


def discover_official(source: str) -> Discovery:
    found = _listing(source)
    archives, warnings, inputs = [], [], []

    def use(name: str, split: str, nested: bool, labelled: bool) -> None:
        url, size = found[name]
        archives.append(ArchiveSpec(split, url, name, size, nested, labelled))
        inputs.append({"name": name, "size": size})

    if TRAIN_TAR in found:
        use(TRAIN_TAR, "train", nested=True, labelled=True)
    else:
        warnings.append(f"no {TRAIN_TAR} in SOURCE: building without the train split")

    val_labels = None
    if VAL_TAR in found:
        if DEVKIT not in found:
            raise SourceError(
                f"{VAL_TAR} is in SOURCE but {DEVKIT} is not: the validation labels come from the devkit. "
                f"Add it next to the val tar.")
        use(VAL_TAR, "val", nested=False, labelled=True)
        url, size = found[DEVKIT]
        inputs.append({"name": DEVKIT, "size": size})
        val_labels = read_devkit_labels(url)
    else:
        warnings.append(f"no {VAL_TAR} in SOURCE: building without the val split")

    tests = sorted(n for n in found if fnmatch.fnmatch(n, TEST_GLOB))
    for name in tests:
        use(name, "test", nested=False, labelled=False)
    if len(tests) > 1:
        warnings.append(f"several test tars ({', '.join(tests)}): all go into the test split")

    if not archives:
        listing = ", ".join(sorted(found)) or "nothing"
        raise SourceError(
            "no ILSVRC2012 archive found in SOURCE.\n  expected: " + "; ".join(EXPECTED_FILES)
            + f"\n  found: {listing}")
    return Discovery("ilsvrc2012", tuple(archives), val_labels, tuple(inputs), tuple(warnings))


def _find_member(tar: tarfile.TarFile, basename: str) -> Optional[bytes]:
    for info in tar:
        if info.isreg() and posixpath.basename(info.name) == basename:
            f = tar.extractfile(info)
            return f.read() if f else None
    return None


def read_devkit_labels(devkit_url: str) -> dict[str, str]:
    """{val key: wnid} from the devkit's ground truth, found by base name at any depth."""
    with open_input(devkit_url) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        data = _find_member(tar, GROUND_TRUTH)
    if data is None:
        raise SourceError(f"{devkit_url}: no {GROUND_TRUTH} inside the devkit")
    try:
        return parse_validation_ground_truth(data.decode("ascii"))
    except ValueError as e:
        raise SourceError(f"{devkit_url}: {e}") from None


def verify_md5(url: str, expected: str, progress: Optional[Callable[[int], None]] = None) -> Optional[str]:
    """Read the whole file; return None when its MD5 matches, else the actual digest."""
    md5 = hashlib.md5()
    with open_input(url) as f:
        while chunk := f.read(8 << 20):
            md5.update(chunk)
            if progress:
                progress(len(chunk))
    digest = md5.hexdigest()
    return None if digest == expected.lower() else digest
