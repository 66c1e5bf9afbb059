"""Typed records that flow between the stages.

Everything here is small on purpose: Beam's local runner holds whatever crosses a
stage boundary in memory, so image bytes never travel in these records, only where
to find them (archive, offset, size).
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, Optional

__all__ = ["REJECT_REASONS", "ANNOTATION_REJECT_REASONS", "MemberRef", "Reject", "AnnotationReject", "ImageRejected",
           "to_shuffle", "from_shuffle"]


def to_shuffle(record: Any) -> bytes:
    """A value for a GroupByKey, pickled by us. The local runner decodes every grouped value
    into Python objects in the driver and keeps them all until the stage after runs (~1 KB a
    member as objects); as bytes they stay ~100 B. from_shuffle undoes it."""
    return pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)


def from_shuffle(data: bytes) -> Any:
    return pickle.loads(data)

# The closed set of reasons a sample can be rejected for; one Beam counter each.
REJECT_REASONS = (
    "empty",  # zero bytes
    "not_an_image",  # no decoder recognises the bytes (e.g. an HTML error page named .JPEG)
    "truncated",  # the data ends before the image does
    "corrupt",  # recognised, but the data cannot be decoded
    "too_large",  # more pixels than --max-pixels, decided from the header
    "unsupported_format",  # an image format we do not take (e.g. PPM, ICO)
    "not_a_file",  # a tar member that is a link, device or fifo
    "duplicate_key",  # a second member with the same key in the same split
    "unlabeled",  # a member whose class cannot be determined in a labelled split
)


@dataclasses.dataclass(frozen=True, order=True)
class MemberRef:
    """Where one sample's source bytes live: a byte range in an archive."""

    key: str  # dot-free sample key, e.g. "n01440764_10026"
    split: str  # "train" | "val" | "test"
    archive: str  # path or URL of the outermost file holding the bytes
    offset: int  # absolute byte offset of the payload inside `archive`
    size: int  # payload size in bytes
    label: int  # class index, -1 when the split is unlabeled
    wnid: Optional[str]  # WordNet ID of the class, None when unlabeled
    source: str  # readable origin, e.g. "ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG"

    def __reduce__(self):
        # Pickled positionally, without its field names: every member crosses two shuffles, and
        # the local runner holds what crosses one in memory (234 bytes instead of 319 alone).
        return MemberRef, (self.key, self.split, self.archive, self.offset, self.size, self.label, self.wnid,
                           self.source)


@dataclasses.dataclass(frozen=True, order=True)
class Reject:
    """A sample that did not make it into a shard, and why (one row of the rejects table)."""

    key: str
    split: str
    source: str
    reason: str  # one of REJECT_REASONS
    detail: str  # human-readable specifics (the decoder's message, the pixel count, ...)

    def __post_init__(self):
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")


# Why an annotation file was set aside (its image is kept, without boxes).
ANNOTATION_REJECT_REASONS = (
    "empty",  # zero bytes
    "malformed_xml",  # not well-formed XML
    "forbidden_xml",  # a DTD, entity or external reference: refused, never expanded
    "no_size",  # no usable <size>, so boxes cannot be normalised
    "bad_coordinates",  # non-numeric box coordinates
)


@dataclasses.dataclass(frozen=True, order=True)
class AnnotationReject:
    """An annotation file that could not be used (one row of the annotation-rejects table)."""

    key: str
    split: str
    source: str
    reason: str  # one of ANNOTATION_REJECT_REASONS
    detail: str

    def __post_init__(self):
        if self.reason not in ANNOTATION_REJECT_REASONS:
            raise ValueError(f"unknown annotation reject reason {self.reason!r}")


class ImageRejected(Exception):
    """Raised by the image kernel for bytes that cannot become a sample."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
