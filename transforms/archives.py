"""Index tar archives in place: tar headers in, MemberRefs out (no image bytes read).

Contract:
  TarSlice (a tar file, or a tar stored inside an outer tar)
    -> MemberRef for each regular file member (key, absolute byte range, label)
    -> Reject for members that cannot become samples:
         not_a_file  (links, devices, fifos),
         unlabeled   (a labelled split whose member has no known class),
         truncated   (the archive ends before the member's data does).
  Directory entries are skipped, not counted.

Only headers are read: tarfile seeks past each payload, so indexing a 150 MB class tar
reads ~1,300 headers of 512 bytes. The official train tar is a tar of 1,000 per-class
tars: `list_inner_tars` turns it into one TarSlice per class tar, so the class tars can
be indexed (and later read) by many workers in parallel.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import tarfile
from typing import IO, Iterator, Optional, Union

from transforms.labels import label_of
from transforms.records import MemberRef, Reject
from transforms.storage import RangeFile, file_size, open_input

__all__ = ["TarSlice", "TarEntry", "sample_key", "iter_tar_entries", "list_inner_tars", "index_tar_slice"]


@dataclasses.dataclass(frozen=True)
class TarSlice:
    """A tar to index: a whole file, or a tar stored as a member of an outer tar."""

    split: str
    archive: str  # path or URL of the outermost file
    offset: int  # where this tar starts inside `archive`
    size: int  # its length in bytes
    source: str  # readable prefix of member sources, e.g. "ILSVRC2012_img_train.tar/n01440764.tar"
    wnid: Optional[str] = None  # class of every member (per-class tars); None: labels come from elsewhere


@dataclasses.dataclass(frozen=True)
class TarEntry:
    name: str
    offset: int  # absolute offset of the payload in the outermost file
    size: int
    kind: str  # "file" | "dir" | "other" (links, devices, fifos)


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def sample_key(member_name: str) -> str:
    """The sample key of a member: its file stem, made dot-free.

    WebDataset splits a member name at the first dot of its basename, so keys must not
    contain dots; anything but letters, digits, '_' and '-' becomes '_'.
    `n01440764/n01440764_10026.JPEG` -> `n01440764_10026`.
    """
    stem = posixpath.splitext(posixpath.basename(member_name))[0]
    return _UNSAFE_KEY_CHARS.sub("_", stem)


def iter_tar_entries(fileobj: IO[bytes], base_offset: int = 0, length: Optional[int] = None,
                     where: str = "") -> Iterator[TarEntry]:
    """Walk a tar's headers, yielding its entries with absolute payload offsets.

    A member whose payload runs past `length` (a cut-off download) is the last one
    yielded: nothing after it can be located.
    """
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
        while True:
            info = tar.next()
            if info is None:
                break
            tar.members.clear()  # tarfile keeps every header it saw; we need none of them
            if info.isdir():
                kind = "dir"
            elif info.isreg():
                kind = "file"
            else:
                kind = "other"
            yield TarEntry(info.name, base_offset + info.offset_data, info.size, kind)
            if length is not None and info.offset_data + info.size > length:
                logging.getLogger(__name__).warning("%s ends inside member %s: the archive is cut off",
                                                    where, info.name)
                return
    except tarfile.TarError as e:
        raise RuntimeError(f"{where or 'archive'}: not a readable tar ({e})") from e


def list_inner_tars(split: str, archive: str, name: str) -> Iterator[Union[TarSlice, Reject]]:
    """The per-class tars of a tar of tars (ILSVRC2012_img_train.tar), as TarSlices.

    A member of the outer tar that is not a `.tar` cannot hold samples of a class:
    it is rejected as `unlabeled` rather than dropped silently.
    """
    with open_input(archive) as f:
        for entry in iter_tar_entries(f, length=file_size(archive), where=name):
            if entry.kind == "dir":
                continue
            source = f"{name}/{entry.name}"
            if entry.kind == "file" and entry.name.lower().endswith(".tar"):
                wnid = posixpath.basename(entry.name)[: -len(".tar")]
                yield TarSlice(split, archive, entry.offset, entry.size, source, wnid)
            elif entry.kind == "file":
                yield Reject(sample_key(entry.name), split, source, "unlabeled", "not inside a per-class tar")
            else:
                yield Reject(sample_key(entry.name), split, source, "not_a_file", "link or special file")


def index_tar_slice(
    piece: TarSlice, labels: Optional[dict[str, str]], labelled: bool, archive_size: Optional[int] = None
) -> Iterator[Union[MemberRef, Reject]]:
    """MemberRefs (and Rejects) for every member of one tar.

    labels: {key: wnid} for splits labelled by an external table (val), else None.
    labelled: whether samples of this split must have a class (False for test).
    """
    if archive_size is None:
        archive_size = file_size(piece.archive)
    end = min(piece.offset + piece.size, archive_size)
    with open_input(piece.archive) as f:
        view = RangeFile(f, piece.offset, end - piece.offset)
        for entry in iter_tar_entries(view, base_offset=piece.offset, length=end - piece.offset,
                                      where=piece.source):
            if entry.kind == "dir":
                continue
            key = sample_key(entry.name)
            source = f"{piece.source}/{entry.name}"
            if entry.kind != "file":
                yield Reject(key, piece.split, source, "not_a_file", "link or special file in the tar")
                continue
            if entry.offset + entry.size > end:
                yield Reject(key, piece.split, source, "truncated",
                             f"archive ends before this member ({entry.offset + entry.size - end} bytes missing)")
                continue
            wnid = piece.wnid if piece.wnid is not None else (labels or {}).get(key)
            label = label_of(wnid) if wnid is not None else None
            if labelled and label is None:
                why = f"{wnid} is not an ILSVRC2012 class" if wnid else "no label for this key in the ground truth"
                yield Reject(key, piece.split, source, "unlabeled", why)
                continue
            yield MemberRef(
                key=key,
                split=piece.split,
                archive=piece.archive,
                offset=entry.offset,
                size=entry.size,
                label=label if labelled else -1,
                wnid=wnid if labelled else None,
                source=source,
            )


# --- Beam wiring -------------------------------------------------------------------

import apache_beam as beam  # noqa: E402  (kept below the pure core on purpose)
from apache_beam import pvalue  # noqa: E402


def _count_reject(reject: Reject) -> Reject:
    beam.metrics.Metrics.counter("rejects", reject.reason).inc()
    return reject


class _ListTarsFn(beam.DoFn):
    """ArchiveSpec -> TarSlice per per-class tar (nested) or one for the whole (flat)."""

    def process(self, spec):
        if not spec.nested:
            yield TarSlice(spec.split, spec.url, 0, spec.size, spec.name)
            return
        for item in list_inner_tars(spec.split, spec.url, spec.name):
            if isinstance(item, Reject):
                yield pvalue.TaggedOutput("rejects", _count_reject(item))
            else:
                yield item


class _IndexTarFn(beam.DoFn):
    """TarSlice -> MemberRef per member (+ rejects)."""

    def __init__(self, labels_by_split: dict, labelled_splits: frozenset, sizes: dict):
        self._labels = labels_by_split
        self._labelled = labelled_splits
        self._sizes = sizes

    def process(self, piece: TarSlice):
        labels = self._labels.get(piece.split)
        for item in index_tar_slice(piece, labels, piece.split in self._labelled, self._sizes.get(piece.archive)):
            if isinstance(item, Reject):
                yield pvalue.TaggedOutput("rejects", _count_reject(item))
            else:
                yield item


class IndexArchives(beam.PTransform):
    """PBegin -> {"members": MemberRef, "rejects": Reject}: every archive member, headers only.

    The nested train tar is split into its class tars first, and a Reshuffle spreads those
    over the workers (otherwise the whole fan-out would stay on the worker that listed it).
    """

    def __init__(self, archives, labels_by_split: dict):
        super().__init__()
        self._archives = list(archives)
        self._labels = labels_by_split

    def expand(self, pbegin):
        labelled = frozenset(a.split for a in self._archives if a.labelled)
        sizes = {a.url: a.size for a in self._archives}
        tars = (
            pbegin
            | "ListArchives" >> beam.Create(self._archives)
            | "ListClassTars" >> beam.ParDo(_ListTarsFn()).with_outputs("rejects", main="tars")
        )
        indexed = (
            tars.tars
            | "SpreadTars" >> beam.Reshuffle()
            | "ReadTarHeaders" >> beam.ParDo(_IndexTarFn(self._labels, labelled, sizes)).with_outputs(
                "rejects", main="members")
        )
        rejects = (tars.rejects, indexed.rejects) | "MergeIndexRejects" >> beam.Flatten()
        return {"members": indexed.members, "rejects": rejects}
