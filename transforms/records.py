"""The records that flow between the stages: the vocabulary every stage imports, and nothing else.

This module imports no other module of the project. Everything here is small on purpose: Beam's
local runner holds whatever crosses a stage boundary in memory, so image bytes never travel in
these records, only where to find them (archive, offset, size).

Stream shapes, in the order a build makes them (pipeline/build.py wires them):
  MemberRef       one sample's byte range in an archive (IndexArchives, in batches)
  LeftOut         a member of a class that --classes leaves out (counted, never read)
  DamagedArchive  a tar cut off or with a broken header, read as far as it goes (--accept-damaged-archives)
  BoxesRef        one image's boxes, on their way to its shard (ReadAnnotations)
  Reject          a sample or an annotation file set aside, with its stage and reason
  SplitCount      a count of something in one split (members read, left out, orphan annotations)
  ClassCount      a class and a count of its members (a class that --min-per-class drops)
  SplitPlan       a split's sample count and shard count, decided before any image is decoded
  ShardTask       one shard to write: its split and number
  ShardMembers    a shard's task, its members and the annotations that hash to it (GroupIntoShards)
  PieceTask       one piece of a shard (WriteShards cuts shards where the work needs it)
  PieceResult     a processed piece staged in a scratch file, waiting to be assembled
  ShardInfo       a finished shard tar: path, samples, bytes, sha256
  IndexFile       a finished shard's Parquet index and what it holds
  HashEntry       (sha256, key, split, shard_id) of a stored sample, for the duplicate search
  ShardDuplicates how many samples of one shard's index were flagged duplicate_of and near_duplicate_of
  NearDuplicatesFile  near-duplicates.parquet, the pairs that the near-duplicate search found
  RejectsFile     a finished rejects table
  Fact            one of the above, tagged with what it is, on its way to the manifest
"""
from __future__ import annotations

import dataclasses
import pickle
import zlib
from typing import Any, NamedTuple, Optional

__all__ = [
    "SourceError", "REJECT_REASONS", "SAMPLE_REJECT_REASONS", "STAGES", "check_reason", "MemberRef", "LeftOut",
    "DamagedArchive", "BoxesRef", "AnnotationSource", "Reject", "Rejected", "ImageRejected", "AnnotationRejected",
    "SplitCount", "ClassCount", "SplitPlan", "ShardTask", "ShardMembers", "PieceTask", "PieceResult", "ShardInfo",
    "IndexFile", "HashEntry", "DuplicateLink", "ShardDuplicates", "NearDuplicatesFile", "RejectsFile",
    "Fact", "to_shuffle", "from_shuffle"
]


def to_shuffle(record: Any) -> bytes:
    """A value for a GroupByKey, pickled by us and compressed (zlib, level 1). The local runner
    decodes every grouped value into Python objects in the driver and keeps them all until the
    stage after runs (~1 KB a member as objects); pickled they stay ~100 B, and compressed ~25 B
    (a batch's keys and sources repeat their class and archive names), for ~1 us a member.
    from_shuffle undoes it."""
    return zlib.compress(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL), 1)


def from_shuffle(data: bytes) -> Any:
    return pickle.loads(zlib.decompress(data))


class SourceError(Exception):
    """SOURCE, or a file given with an option, cannot be used as it is (exit status 2)."""


# --- rejects: the one closed set of reasons --------------------------------------------------

# The stage that decides a reject -> the reasons it may give. One Beam counter per stage and reason.
REJECT_REASONS: dict[str, tuple[str, ...]] = {
    # IndexArchives, from tar headers and the label tables (no image byte read)
    "index": (
        "not_a_file",  # a tar member that is a link, device or fifo
        "unlabeled",  # a member whose class cannot be determined in a labelled split
        "truncated",  # the archive ends before the member's data does
    ),
    # the image kernel (transforms/image.py), from the bytes
    "image": (
        "empty",  # zero bytes
        "not_an_image",  # no decoder recognises the bytes (e.g. an HTML error page named .JPEG)
        "truncated",  # the data ends before the image does
        "corrupt",  # recognised, but the data cannot be decoded
        "too_large",  # more pixels than --max-pixels, decided from the header
        "unsupported_format",  # an image format we do not take (e.g. PPM, ICO)
    ),
    # WriteShards, when it orders a shard's members
    "shard": (
        "duplicate_key",  # a second member with the same key in the same split
    ),
    # ReadAnnotations: an annotation file set aside (its image is kept, without boxes)
    "annotation": (
        "empty",  # zero bytes
        "malformed_xml",  # not well-formed XML
        "forbidden_xml",  # a DTD, entity or external reference: refused, never expanded
        "no_size",  # no usable <size>, so boxes cannot be normalised
        "bad_coordinates",  # non-numeric box coordinates
    ),
}
STAGES = tuple(REJECT_REASONS)

# The reasons a sample (not an annotation file) can be rejected for: the rejects table's.
SAMPLE_REJECT_REASONS = tuple(dict.fromkeys(r for stage in ("index", "image", "shard")
                                            for r in REJECT_REASONS[stage]))


def check_reason(stage: str, reason: str) -> None:
    """Raise ValueError unless `reason` is one the stage may give."""
    if reason not in REJECT_REASONS.get(stage, ()):
        raise ValueError(f"unknown reject reason {reason!r} for stage {stage!r}")


@dataclasses.dataclass(frozen=True, order=True)
class Reject:
    """A sample, or an annotation file, that did not make it into the dataset, and why (one row of
    a rejects table; annotation files have a table of their own)."""

    key: str
    split: str
    source: str
    reason: str  # one of REJECT_REASONS[stage]
    detail: str  # human-readable specifics (the decoder's message, the pixel count, ...)
    stage: str  # one of STAGES: where it was decided

    def __post_init__(self):
        check_reason(self.stage, self.reason)

    @property
    def is_annotation(self) -> bool:
        return self.stage == "annotation"


class Rejected(Exception):
    """Raised by a pure core for input that cannot be used; the subclass names the stage.
    Picklable: its args are (reason, detail)."""

    stage = ""

    def __init__(self, reason: str, detail: str = ""):
        check_reason(self.stage, reason)
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def reject(self, key: str, split: str, source: str) -> Reject:
        """The Reject of the input this was raised for."""
        return Reject(key, split, source, self.reason, self.detail, self.stage)


class ImageRejected(Rejected):
    """Raised by the image kernel for bytes that cannot become a sample."""

    stage = "image"


class AnnotationRejected(Rejected):
    """Raised by the VOC XML parser for an annotation file that cannot be used."""

    stage = "annotation"


# --- what IndexArchives and ReadAnnotations make -------------------------------------------

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
    # The sample's own class when `label` and `wnid` are its coarse class (--label-level); None otherwise.
    fine_label: Optional[int] = None
    fine_wnid: Optional[str] = None

    @property
    def fine(self) -> tuple[int, Optional[str]]:
        """The sample's own class (label, WNID): the fine class under coarse labels, else label and wnid."""
        if self.fine_wnid is None or self.fine_label is None:
            return self.label, self.wnid
        return self.fine_label, self.fine_wnid

    def __reduce__(self):
        # Pickled positionally, without its field names: every member crosses two shuffles, and
        # the local runner holds what crosses one in memory (234 bytes instead of 319 alone).
        return _member_ref, (self.key, self.split, self.archive, self.offset, self.size, self.label, self.wnid,
                             self.source, self.fine_label, self.fine_wnid)


_MEMBER_REF_FIELDS = tuple(f.name for f in dataclasses.fields(MemberRef))


def _member_ref(*values) -> MemberRef:
    """A MemberRef from its fields' values in order (how it is unpickled), without the frozen
    dataclass's __init__, which sets each field through object.__setattr__ (an unpickle took
    ~2.9 us a member with it, ~2.2 without), and every member is unpickled three or four times in
    a build."""
    ref = object.__new__(MemberRef)
    ref.__dict__.update(zip(_MEMBER_REF_FIELDS, values))
    return ref


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A member of a class the build leaves out on purpose (--classes): counted, not read."""

    split: str
    key: str


@dataclasses.dataclass(frozen=True, order=True)
class DamagedArchive:
    """A tar that ends early or whose headers stop making sense, indexed as far as it goes because
    the build was told to accept it (--accept-damaged-archives): what was skipped is on record."""

    split: str
    source: str  # the tar's readable name, e.g. "ILSVRC2012_img_train.tar/n01440764.tar"
    detail: str  # what is wrong with it
    readable: int  # bytes from its start in which members were located
    size: int  # bytes it has


@dataclasses.dataclass(frozen=True)
class AnnotationSource:
    """An archive, folder or CSV file of bounding-box annotations."""

    url: str
    name: str  # readable, the prefix of rejects' `source`
    kind: str = "voc"  # "voc": Pascal VOC XML files; "kaggle_csv": LOC_*_solution.csv rows


@dataclasses.dataclass(frozen=True)
class BoxesRef:
    """The boxes of one image, on their way to its shard."""

    key: str
    split: str
    boxes: tuple  # ((xmin, ymin, xmax, ymax), ...) normalised to [0, 1]
    names: tuple  # the object name of each box, as written (a WNID or e.g. a breed name)
    dropped: int  # zero-area boxes dropped
    source: str
    from_xml: bool = True  # XML wins over CSV where both give boxes
    in_pixels: bool = False  # Kaggle CSV boxes: pixels of the decoded image, normalised once it is decoded


class SplitCount(NamedTuple):
    """A count of something in one split (members read, members left out, orphan annotations)."""

    split: str
    n: int


class ClassCount(NamedTuple):
    """A class and a count of its members (a class --min-per-class drops, with the members it had)."""

    wnid: str
    n: int


class SplitPlan(NamedTuple):
    """How many samples a split has (rejects not yet known) and how many shards it gets."""

    samples: int
    shards: int


# --- what WriteShards makes ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, order=True)
class ShardTask:
    split: str
    shard_id: int


@dataclasses.dataclass(frozen=True)
class ShardMembers:
    """One shard's members and the boxes of the annotations that hash to it (GroupIntoShards)."""

    task: ShardTask
    members: list  # MemberRef, in no particular order (WriteShards orders them)
    boxes: list  # BoxesRef


@dataclasses.dataclass(frozen=True, order=True)
class PieceTask:
    split: str
    shard_id: int
    piece: int  # 0 .. pieces - 1, in shard order
    pieces: int  # how many the shard has

    @property
    def shard(self) -> ShardTask:
        return ShardTask(self.split, self.shard_id)


@dataclasses.dataclass
class PieceResult:
    task: PieceTask
    path: str  # the piece's scratch file, relative to the manifest
    samples: int
    rejects: list  # Reject: the kernel's, reported with the shard once it is assembled
    shard_digest: str = ""  # the digest of the whole shard's members (transforms/checkpoints.py)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    split: str
    shard_id: int
    path: str  # relative to the manifest
    samples: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class IndexFile:
    split: str
    shard_id: int
    path: str  # relative to the manifest
    rows: int
    duplicates: int
    with_boxes: int = 0  # samples with at least one box
    boxes: int = 0
    label_disagreements: int = 0
    bytes: int = 0  # of the file as written (FlagDuplicates may rewrite it: ShardDuplicates then has the final)
    sha256: str = ""


class HashEntry(NamedTuple):
    """A stored sample's source digest, for the duplicate search."""

    sha256: str
    key: str
    split: str
    shard_id: int


class DuplicateLink(NamedTuple):
    """A sample whose source bytes another key (sorting first) also has."""

    split: str
    shard_id: int
    key: str
    duplicate_of: str


class ShardDuplicates(NamedTuple):
    """How many samples of one shard's index were flagged duplicate_of (and near_duplicate_of), and
    the index file's size and sha256 once rewritten with the flags."""

    split: str
    shard_id: int
    flagged: int
    bytes: int = 0
    sha256: str = ""
    near_flagged: int = 0  # samples given a near_duplicate_of


@dataclasses.dataclass(frozen=True)
class NearDuplicatesFile:
    """near-duplicates.parquet, beside the manifest: the pairs of samples whose perceptual hashes
    are within max_distance bits, and how many there are per pair of splits."""

    path: str  # relative to the manifest
    max_distance: int
    samples: int  # the samples searched: every stored sample
    pairs: int  # the file's rows
    unlisted: int  # pairs within the distance inside big groups of identical hashes, left out of the file
    by_split_pair: dict  # {"train-val": pairs, ...}, every pair of the splits searched, zeros included
    bytes: int = 0
    sha256: str = ""


@dataclasses.dataclass(frozen=True)
class RejectsFile:
    split: str
    path: str
    rows: int
    by_reason: dict
    kind: str = "images"  # "images" | "annotations"


class Fact(NamedTuple):
    """One fact for the manifest: `kind` says which stream it came from (see manifest.py)."""

    kind: str
    value: Any
