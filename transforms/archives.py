"""Index the archives in place: tar headers and folder listings in, MemberRefs out (no image byte read).

Contract:
  TarSlice (a tar file, or a tar stored inside an outer tar) | FolderSlice (a folder of images)
    -> MemberRef for each regular file member (key, absolute byte range, label)
    -> LeftOut for each member of a class --classes leaves out
    -> Reject (stage "index") for members that cannot become samples:
         not_a_file  (links, devices, fifos),
         unlabeled   (a labelled split whose member has no known class),
         truncated   (the archive ends before the member's data does).
  Directory entries are skipped, not counted.

Only headers are read (transforms/tar_headers.py), seeking past each payload, so indexing a 150 MB class tar
reads ~1,300 headers of 512 bytes locally; a remote tar is read in 4 MiB blocks, fetched ahead
(storage.open_range), so that its headers cost a few dozen requests rather than one each. The
official train tar is a tar of 1,000 per-class tars: `list_inner_tars` turns it into one TarSlice
per class tar, so the class tars can be indexed (and later read) by many workers in parallel.
"""
from __future__ import annotations

import collections
import dataclasses
import posixpath
import typing
from typing import Iterable, Iterator, Optional, Union

import apache_beam as beam
from apache_beam import pvalue

from transforms.classes import ClassFilter, DropSmallClasses
from transforms.counting import reject_output
from transforms.folders import class_folder_entries, list_files
from transforms.header_cache import HeaderCache
from transforms.keys import folder_member_key, key_hash, readable_name, sample_key
from transforms.labels import Labeler, LeftOutClass, NoLabel
from transforms.records import DamagedArchive, LeftOut, MemberRef, Reject, SplitCount, from_shuffle, to_shuffle
from transforms.storage import file_size, open_range
from transforms.tar_headers import TarDamaged, TarEntry, iter_tar_entries

__all__ = ["TarSlice", "FolderSlice", "index_folder", "expand_archive", "hold_out", "list_inner_tars",
           "index_tar_slice", "IndexArchives"]


@dataclasses.dataclass(frozen=True)
class TarSlice:
    """A tar to index: a whole file, or a tar stored as a member of an outer tar."""

    split: str
    archive: str  # path or URL of the outermost file
    offset: int  # where this tar starts inside `archive`
    size: int  # its length in bytes
    source: str  # readable prefix of member sources, e.g. "ILSVRC2012_img_train.tar/n01440764.tar"
    wnid: Optional[str] = None  # class of every member (per-class tars); None: labels come from elsewhere


def _damaged(split: str, error: TarDamaged, accept: bool) -> DamagedArchive:
    """The record of a damaged tar when the build accepts them; else the build fails with the error."""
    if not accept:
        raise error
    return DamagedArchive(split, error.where, error.detail, error.readable, error.size)


def list_inner_tars(split: str, archive: str, name: str, accept_damaged: bool = False
                    ) -> Iterator[Union[TarSlice, Reject, DamagedArchive]]:
    """The per-class tars of a tar of tars (ILSVRC2012_img_train.tar), as TarSlices.

    A member of the outer tar that is not a `.tar` cannot hold samples of a class:
    it is rejected as `unlabeled` rather than dropped silently. A damaged outer tar raises
    TarDamaged, or with `accept_damaged` ends with a DamagedArchive record.
    """
    size = file_size(archive)
    with open_range(archive, 0, size, sparse=True) as f:  # its headers lie a class tar apart
        try:
            yield from _inner_tars(split, archive, name, f, size)
        except TarDamaged as e:
            yield _damaged(split, e, accept_damaged)


def _inner_tars(split: str, archive: str, name: str, f, size: int) -> Iterator[Union[TarSlice, Reject]]:
    for entry in iter_tar_entries(f, length=size, where=name):
        if entry.kind == "dir":
            continue
        source = f"{name}/{readable_name(entry.name)}"
        if entry.kind == "file" and entry.name.lower().endswith(".tar"):
            wnid = posixpath.basename(entry.name)[: -len(".tar")]
            yield TarSlice(split, archive, entry.offset, entry.size, source, wnid)
        elif entry.kind == "file":
            yield Reject(_reject_key(entry.name), split, source, "unlabeled", "not inside a per-class tar", "index")
        else:
            yield Reject(_reject_key(entry.name), split, source, "not_a_file", "link or special file", "index")


def _reject_key(name: str) -> str:
    """A key to name a rejected member by, never empty (a file named like a folder, "x/", has no stem)."""
    return sample_key(name) or sample_key(name.rstrip("/")) or "_"


def _member(labeler: Labeler, key: str, split: str, source: str, archive: str, offset: int, size: int,
            class_hint: Optional[str]) -> Union[MemberRef, Reject, LeftOut]:
    found = labeler.classify(split, key, class_hint)
    if isinstance(found, LeftOutClass):
        return LeftOut(split, key)
    if isinstance(found, NoLabel):
        return Reject(key, split, source, "unlabeled", found.why, "index")
    return MemberRef(key=key, split=split, archive=archive, offset=offset, size=size, label=found.label,
                     wnid=found.name, source=source, fine_label=found.fine_label, fine_wnid=found.fine_name)


def index_tar_slice(piece: TarSlice, labeler: Labeler, archive_size: Optional[int] = None,
                    accept_damaged: bool = False, cache: Optional[HeaderCache] = None
                    ) -> Iterator[Union[MemberRef, Reject, LeftOut, DamagedArchive]]:
    """MemberRefs (and Rejects) for every member of one tar. A damaged tar raises TarDamaged, or
    with `accept_damaged` ends with a DamagedArchive record. `cache`: the headers read by earlier
    builds (transforms/header_cache.py)."""
    if archive_size is None:
        archive_size = file_size(piece.archive)
    end = min(piece.offset + piece.size, archive_size)
    with open_range(piece.archive, piece.offset, end - piece.offset) as view:

        def scan() -> Iterator[TarEntry]:
            return iter_tar_entries(view, base_offset=piece.offset, length=end - piece.offset, where=piece.source)

        entries = cache.entries(piece.archive, piece.offset, end - piece.offset, scan) if cache else scan()
        try:
            yield from _tar_members(piece, labeler, entries, end)
        except TarDamaged as e:
            yield _damaged(piece.split, e, accept_damaged)


def _tar_members(piece: TarSlice, labeler: Labeler, entries: Iterator[TarEntry], end: int
                 ) -> Iterator[Union[MemberRef, Reject, LeftOut]]:
    for entry in entries:
        if entry.kind == "dir":
            continue
        key = sample_key(entry.name)
        source = f"{piece.source}/{readable_name(entry.name)}"
        if entry.kind != "file":
            yield Reject(key, piece.split, source, "not_a_file", "link or special file in the tar", "index")
        elif not key:  # a file named like a folder ("x/"): no stem, so no key a reader could use
            yield Reject(_reject_key(entry.name), piece.split, source, "not_a_file",
                         "a file whose name ends with '/', a folder's name: it gives no sample key", "index")
        elif entry.offset + entry.size > end:
            yield Reject(key, piece.split, source, "truncated",
                         f"archive ends before this member ({entry.offset + entry.size - end} bytes missing)",
                         "index")
        else:
            yield _member(labeler, key, piece.split, source, piece.archive, entry.offset, entry.size, piece.wnid)


@dataclasses.dataclass(frozen=True)
class FolderSlice:
    """A folder of image files (recursively), all of one class or labelled by a key table."""

    split: str
    url: str
    source: str  # readable prefix of member sources, e.g. "train/n01440764"
    wnid: Optional[str] = None  # the class of every file, None: labels come from a table


def index_folder(piece: FolderSlice, labeler: Labeler) -> Iterator[Union[MemberRef, Reject, LeftOut]]:
    """MemberRefs for every file below a folder: each file is an 'archive' read whole. An entry
    that is not a regular file is a `not_a_file` reject."""
    for entry in list_files(piece.url):
        key = folder_member_key(piece.wnid, entry.relative)
        source = f"{piece.source}/{readable_name(entry.relative)}"
        if entry.problem:
            yield Reject(key, piece.split, source, "not_a_file", entry.problem, "index")
        else:
            yield _member(labeler, key, piece.split, source, entry.url, 0, entry.size, piece.wnid)


def hold_out(items: list, per_class: int, seed: int) -> list:
    """Move `per_class` samples of one class from train to val: those whose seeded key hash is
    smallest, so the choice is deterministic and independent of archive order."""
    refs = [i for i in items if isinstance(i, MemberRef) and i.split == "train"]
    chosen = {r.key for r in sorted(refs, key=lambda r: (key_hash(r.key, seed), r.key))[:per_class]}
    return [dataclasses.replace(i, split="val") if isinstance(i, MemberRef) and i.key in chosen else i
            for i in items]


def expand_archive(spec, labeler: Labeler, accept_damaged: bool = False
                   ) -> Iterator[Union[TarSlice, FolderSlice, MemberRef, Reject, LeftOut, DamagedArchive]]:
    """An ArchiveSpec -> the units indexed in parallel (class tars, class folders, whole tars)."""
    if spec.kind == "nested_tar":
        yield from list_inner_tars(spec.split, spec.url, spec.name, accept_damaged)
    elif spec.kind == "tar":
        yield TarSlice(spec.split, spec.url, 0, spec.size, spec.name, spec.class_name)
    elif spec.kind == "folder":
        yield FolderSlice(spec.split, spec.url, spec.name, spec.class_name)
    elif spec.kind == "class_folders":
        base = spec.url.rstrip("/")
        for name, entry in class_folder_entries(spec.url):
            source, key = f"{spec.name}/{readable_name(name)}", folder_member_key(None, name)
            if entry is None:  # a class folder
                yield FolderSlice(spec.split, f"{base}/{name}", source, readable_name(name))
            elif entry.problem:
                yield Reject(key, spec.split, source, "not_a_file", entry.problem, "index")
            else:  # a file outside any class folder has no class
                yield _member(labeler, key, spec.split, source, entry.url, 0, entry.size, None)
    else:
        raise ValueError(f"unknown archive kind {spec.kind!r}")


# --- Beam wiring -------------------------------------------------------------------

# Declared output types: otherwise Beam infers them by interpreting process() and everything
# it calls, walking every entry of the label tables it meets on the way (seconds of start-up).
@beam.typehints.with_output_types(typing.Any)
class _ExpandArchivesFn(beam.DoFn):
    """ArchiveSpec -> the units to index (TarSlice, FolderSlice), or members found on the way."""

    def __init__(self, labeler: Labeler, accept_damaged: bool):
        self._labeler = labeler
        self._accept_damaged = accept_damaged

    def process(self, spec):
        for item in expand_archive(spec, self._labeler, self._accept_damaged):
            if isinstance(item, Reject):
                yield reject_output(item)
            elif isinstance(item, DamagedArchive):
                yield pvalue.TaggedOutput("damaged", item)
            elif isinstance(item, MemberRef):
                # a batch of one (a file outside any class folder)
                yield pvalue.TaggedOutput("members", to_shuffle((item,)))
            elif isinstance(item, LeftOut):
                yield pvalue.TaggedOutput("left_out", item)
            else:
                yield item


@beam.typehints.with_output_types(typing.Any)
class _IndexUnitFn(beam.DoFn):
    """TarSlice | FolderSlice -> to_shuffle((MemberRef, ...)), the unit's members (+ rejects)."""

    def __init__(self, labeler: Labeler, sizes: dict, holdout: int, seed: int, accept_damaged: bool,
                 cache: Optional[HeaderCache] = None):
        self._cache = cache
        self._labeler = labeler
        self._sizes = sizes
        self._holdout = holdout
        self._seed = seed
        self._accept_damaged = accept_damaged

    def process(self, piece):
        items: Iterable[Union[MemberRef, Reject, LeftOut, DamagedArchive]]
        if isinstance(piece, FolderSlice):
            items = index_folder(piece, self._labeler)
        else:
            items = index_tar_slice(piece, self._labeler, self._sizes.get(piece.archive), self._accept_damaged,
                                    self._cache)
        if self._holdout and piece.wnid is not None:  # one unit = one whole class
            items = hold_out(list(items), self._holdout, self._seed)
        batch = []
        for item in items:
            if isinstance(item, Reject):
                yield reject_output(item)
            elif isinstance(item, LeftOut):
                yield pvalue.TaggedOutput("left_out", item)
            elif isinstance(item, DamagedArchive):
                yield pvalue.TaggedOutput("damaged", item)
            else:
                batch.append(item)
        if batch:
            yield to_shuffle(tuple(batch))


def _splits_of_batch(packed: bytes) -> list:
    return list(collections.Counter(ref.split for ref in from_shuffle(packed)).items())


class IndexArchives(beam.PTransform):
    """PBegin -> {"members": to_shuffle((MemberRef, ...)) batches, "rejects": Reject, "left_out": SplitCount,
    "read": SplitCount, "damaged": DamagedArchive, "dropped_classes": ClassCount}: every member,
    headers only. "read" counts every member per split, kept or rejected (directories are not
    members); "left_out" the members of classes that --classes leaves out, and of the classes
    that `class_filter` (--min-per-class) drops, which are neither ("dropped_classes" names
    those classes). A damaged tar (cut off, or with a header that makes no sense) fails the
    build, unless `accept_damaged`: then it is indexed as far as it goes and reported in "damaged".
    `header_cache`: the tar headers earlier builds read (transforms/header_cache.py).

    Members come in batches, one per unit (a class tar, a class folder, a whole flat tar), each
    pickled and compressed by records.to_shuffle: the local runner keeps every element that
    crosses a stage in memory, and a batch pickles its shared strings (the archive's path, the
    split, the class) once, with one element's overhead for a thousand members instead of a
    thousand, and compresses what its members' keys and sources repeat (~20 B per member on the
    scale benchmark's release, where Beam's own coder of a tuple of MemberRefs takes ~250 B).
    Nested tars and folders of class folders are split into their classes first, and a
    Reshuffle spreads those over the workers (otherwise the whole fan-out would stay on the
    worker that listed it).
    """

    def __init__(self, archives, labeler: Labeler, holdout_per_class: int = 0, seed: int = 0,
                 accept_damaged: bool = False, class_filter: Optional[ClassFilter] = None,
                 header_cache: Optional[HeaderCache] = None):
        super().__init__()
        self._header_cache = header_cache
        self._archives = list(archives)
        self._labeler = labeler
        self._holdout = holdout_per_class
        self._seed = seed
        self._accept_damaged = accept_damaged
        self._class_filter = class_filter

    def expand(self, pbegin):
        sizes = {a.url: a.size for a in self._archives}
        units = (
            pbegin
            | "ListArchives" >> beam.Create(self._archives)
            | "ListClassTars" >> beam.ParDo(_ExpandArchivesFn(self._labeler, self._accept_damaged)).with_outputs(
                "members", "rejects", "left_out", "damaged", main="units")
        )
        indexed = (
            units.units
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadHeaders" >> beam.ParDo(_IndexUnitFn(self._labeler, sizes, self._holdout, self._seed,
                                                       self._accept_damaged, self._header_cache)).with_outputs(
                "rejects", "left_out", "damaged", main="members")
        )
        members = (units.members, indexed.members) | "MergeMembers" >> beam.Flatten()
        rejects = (units.rejects, indexed.rejects) | "MergeIndexRejects" >> beam.Flatten()
        left_out_pairs = [(units.left_out, indexed.left_out)
                          | "MergeLeftOut" >> beam.Flatten()
                          | "SplitOfLeftOut" >> beam.Map(lambda item: (item.split, 1))]
        if self._class_filter is not None:  # before "read" is counted: the members dropped are not read
            small = members | "DropSmallClasses" >> DropSmallClasses(self._class_filter)
            members, dropped_classes = small["members"], small["dropped"]
            left_out_pairs.append(small["left_out"])
        else:
            dropped_classes = pbegin | "NoClassDropped" >> beam.Create([])
        left_out = (
            left_out_pairs
            | "AllLeftOut" >> beam.Flatten()
            | "CountLeftOut" >> beam.CombinePerKey(sum)
            | "LeftOutCounts" >> beam.MapTuple(SplitCount)
        )
        read = (
            (members | "SplitsOfBatch" >> beam.FlatMap(_splits_of_batch),
             rejects | "SplitOfReject" >> beam.Map(lambda reject: (reject.split, 1)))
            | "AllRead" >> beam.Flatten()
            | "CountRead" >> beam.CombinePerKey(sum)
            | "ReadCounts" >> beam.MapTuple(SplitCount)
        )
        damaged = (units.damaged, indexed.damaged) | "MergeDamaged" >> beam.Flatten()
        return {"members": members, "rejects": rejects, "left_out": left_out, "read": read, "damaged": damaged,
                "dropped_classes": dropped_classes}
