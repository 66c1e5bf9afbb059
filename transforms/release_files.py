"""The small files of a release: the devkit's labels and blacklist, Kaggle's CSV, a class list,
and the published MD5 sums of the official archives.

Contract: each reader takes a local path or fsspec URL and returns plain tables; a file that is
not what it should be raises SourceError (exit status 2) that says what was expected.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import importlib.resources
import io
import posixpath
import tarfile
from typing import Callable, Optional

from transforms.keys import WNID, val_key
from transforms.labels import parse_validation_ground_truth
from transforms.records import SourceError
from transforms.storage import locate, open_input

__all__ = ["OFFICIAL_MD5", "GROUND_TRUTH", "BLACKLIST", "read_devkit", "read_devkit_labels", "read_kaggle_val_labels",
           "bundled_blacklist_bytes", "bundled_val_blacklist", "read_class_list", "read_class_entries", "verify_md5"]

# Published MD5 sums of the official archives (the ones torchvision's ImageNet checks).
OFFICIAL_MD5 = {
    "ILSVRC2012_img_train.tar": "1d675b47d978889d74fa0da5fadfb00e",
    "ILSVRC2012_img_val.tar": "29b22e2961454d5413ddabcf34fc5622",
    "ILSVRC2012_devkit_t12.tar.gz": "fa75699e90414af021442c21a62c3abf",
}

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
BLACKLIST = "ILSVRC2012_validation_blacklist.txt"


def _find_members(tar: tarfile.TarFile, basenames) -> dict:
    """{basename: bytes} of the members with those base names, at any depth (one streaming pass)."""
    found = {}
    for info in tar:
        name = posixpath.basename(info.name)
        member = tar.extractfile(info) if info.isreg() and name in basenames else None
        if member is not None:
            found[name] = member.read()
    return found


def read_devkit(devkit_url: str) -> tuple:
    """({val key: wnid}, localisation blacklist keys) from the devkit, members found at any depth."""
    with open_input(devkit_url) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        found = _find_members(tar, {GROUND_TRUTH, BLACKLIST})
    if GROUND_TRUTH not in found:
        raise SourceError(f"{devkit_url}: no {GROUND_TRUTH} inside the devkit")
    try:
        labels = parse_validation_ground_truth(found[GROUND_TRUTH].decode("ascii"))
        blacklist = frozenset(val_key(int(x)) for x in found.get(BLACKLIST, b"").decode("ascii").split())
    except ValueError as e:
        raise SourceError(f"{devkit_url}: {e}") from None
    return labels, blacklist


def bundled_blacklist_bytes() -> bytes:
    """The devkit's localisation blacklist as the project bundles it (transforms/data/, origin in
    SOURCES.md there): the 1-based indices of 1,762 validation images, one per line."""
    return importlib.resources.files("transforms").joinpath("data", BLACKLIST).read_bytes()


@functools.cache
def bundled_val_blacklist() -> frozenset[str]:
    """The val keys of the bundled blacklist: what a layout without the devkit (Kaggle's) uses, since
    its val images are the ILSVRC2012 ones under their own names."""
    return frozenset(val_key(int(x)) for x in bundled_blacklist_bytes().decode("ascii").split())


def read_devkit_labels(devkit_url: str) -> dict[str, str]:
    """{val key: wnid} from the devkit's ground truth."""
    return read_devkit(devkit_url)[0]


def read_kaggle_val_labels(csv_url: str) -> dict[str, str]:
    """{val key: wnid} from LOC_val_solution.csv (the first WNID of each PredictionString)."""
    with open_input(csv_url) as f:
        rows = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"))
        if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
            raise SourceError(f"{csv_url}: expected the columns ImageId,PredictionString")
        labels = {}
        for row in rows:
            words = row["PredictionString"].split()
            if words:
                labels[row["ImageId"]] = words[0]
    return labels


def read_class_list(url: str) -> list:
    """Class names (WNIDs) from a file: one per line, the first word of each line counts
    (so LOC_synset_mapping.txt-style lines work too); blank lines and # comments are skipped."""
    with open_input(url) as f:
        text = f.read().decode("utf-8")
    names = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise SourceError(f"{url}: no class names in it")
    return names


def read_class_entries(value: str) -> list:
    """The entries of --classes: a file that read_class_list reads, or, when no such file exists,
    entries separated by commas (`n02084071+,n01440764`), each a WNID or a WNID and a plus sign."""
    try:
        fs, path, _ = locate(value)
        is_file = fs.isfile(path)
    except (OSError, ValueError):
        is_file = False
    if is_file:
        return read_class_list(value)
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not entries or not all(WNID.fullmatch(e.removesuffix("+")) for e in entries):
        raise SourceError(f"--classes {value!r}: there is no such file, and it is not a list of WNIDs separated "
                          "by commas (n02084071+,n01440764)")
    return entries


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
