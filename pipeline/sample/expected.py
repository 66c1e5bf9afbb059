"""What a sample release holds, and what a correct converter must make of each of its members."""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclasses_field
from typing import Optional

from pipeline.sample.near_copies import NEAR_DUPLICATE_CASES

__all__ = ["ExpectedSample", "SampleRelease", "PLANTED_CASES", "outcome_of"]


@dataclass(frozen=True)
class ExpectedSample:
    """What a correct converter must do with one planted member.

    The first nine fields are the contract; the ones after them describe the source bytes (which is useful
    to compare against an index row) and are None where they do not apply.
    """

    key: str
    split: str
    wnid: Optional[str]  # None for the test split (and for an unlabeled member)
    label: int  # the index of wnid in the sorted 1000 ILSVRC2012 WNIDs; -1 for test (and unlabeled)
    outcome: str  # "kept" or a reject reason from transforms.records.SAMPLE_REJECT_REASONS
    case: str  # what was planted ("photo", "cmyk", "png_as_jpeg", ...; see PLANTED_CASES)
    duplicate_of: Optional[str]  # the key that sorts first among all keys with the same bytes (never itself)
    reencoded: Optional[bool]  # False: kept byte for byte under the default resize; None for rejects
    exif_orientation: Optional[int]  # the EXIF Orientation tag of the source when it has one (not 1)
    source: str = ""  # e.g. "ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG"
    sha256: Optional[str] = None  # of the member's bytes; None for links
    orig_format: Optional[str] = None  # PIL's format of the bytes ("JPEG", "PNG"), for kept samples only
    orig_mode: Optional[str] = None  # PIL's mode ("RGB", "L", "CMYK", "P", "I;16"), for kept samples only
    orig_width: Optional[int] = None  # for kept samples only
    orig_height: Optional[int] = None  # for kept samples only
    note: str = ""  # where the bytes came from, for humans
    boxes: tuple = ()  # the expected normalised [xmin, ymin, xmax, ymax] boxes, joined from the XML
    box_names: tuple = ()  # the object name of each expected box
    loc_blacklisted: bool = False  # val: the image is in the devkit's localisation blacklist
    label_disagrees: bool = False  # the XML's WNID differs from the label
    photo: str = ""  # the bundled photo a photo or a planted near-duplicate is made from ("" for the others)


@dataclass(frozen=True)
class SampleRelease:
    """A release written to disk: where its archives are, and what each of its members must become."""

    root: str  # the folder that holds the archives
    archives: dict[str, str]  # role -> path: "train", "val", "devkit", and "test" when it was written
    expected: dict[str, dict[str, ExpectedSample]]  # split -> key -> ExpectedSample ("train", "val", "test")
    classes: list[str]  # the WNIDs used in train, sorted
    annotation_rejects: dict = dataclasses_field(default_factory=dict)  # (split, key) -> reason
    orphan_annotations: int = 0  # the number of XML files without an image
    # near_duplicates=True: NearCopy(original, copy, kind) of each planted copy, with (split, key) of both
    near_duplicates: tuple = ()
    # near_duplicates=True: (split, key) of the other photographs of one subject: no two may be paired
    other_photographs: tuple = ()


# The case -> (outcome, reencoded) of everything make_sample_release can plant.
PLANTED_CASES = {
    "photo": ("kept", None),  # re-encoded when its longer side is over 512 px
    "duplicate": ("kept", None),  # as the photo it copies
    "cmyk": ("kept", True),
    "png_as_jpeg": ("kept", True),
    "grayscale": ("kept", True),
    "progressive": ("kept", True),
    "exif_rotated": ("kept", True),
    "palette_alpha": ("kept", True),
    "png16": ("kept", True),
    "truncated": ("truncated", None),
    "empty": ("empty", None),
    "not_an_image": ("not_an_image", None),
    "bomb": ("too_large", None),
    "corrupt": ("corrupt", None),
    "unsupported_format": ("unsupported_format", None),
    "symlink": ("not_a_file", None),
    "hardlink": ("not_a_file", None),
    "unlabeled": ("unlabeled", None),
}


def outcome_of(case: str) -> str:
    """The outcome ("kept" or a reject reason) that a planted case must have (the planted
    near-duplicates' cases included: pipeline/sample/near_copies.py)."""
    return (PLANTED_CASES.get(case) or NEAR_DUPLICATE_CASES[case])[0]
