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

import fsspec

from transforms.records import MemberRef, Reject
from transforms.storage import RangeFile, file_size, open_input

__all__ = ["TarSlice", "FolderSlice", "TarEntry", "Labeler", "sample_key", "folder_member_key", "index_folder",
           "expand_archive", "hold_out", "iter_tar_entries", "list_inner_tars", "index_tar_slice"]


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


# Header types read without tarfile: regular files and directories. Anything else (long names,
# pax headers, links, sparse files, a zero block, a bad checksum) goes to tarfile.
_PLAIN_TYPES = {b"0": "file", b"\0": "file", b"5": "dir"}


def _plain_header(block: bytes) -> Optional[tuple[str, int, str]]:
    """(name, size, kind) of a tar header that needs none of tarfile's cases, read as tarfile
    reads it (its frombuf: fields cut at their first NUL, octal numbers, the ustar prefix joined,
    the unsigned checksum); None for any other header. tarfile parses every field of a header
    (~50 us a member: 1.3M members are a minute of CPU for ImageNet-1k); this reads the four a
    MemberRef needs (~5 us)."""
    kind = _PLAIN_TYPES.get(block[156:157])
    if kind is None or len(block) != tarfile.BLOCKSIZE or block[124] & 0x80:  # 0x80: a base-256 size
        return None
    try:
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        checksum = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if checksum != 256 + sum(block) - sum(block[148:156]):  # the field counts as 8 spaces
        return None
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    name = name.decode("utf-8", "surrogateescape")
    if block[156:157] == b"\0" and name.endswith("/"):
        kind = "dir"
    if kind == "dir":
        name = name.rstrip("/")
    return name, size, kind


def iter_tar_entries(fileobj: IO[bytes], base_offset: int = 0, length: Optional[int] = None,
                     where: str = "") -> Iterator[TarEntry]:
    """Walk a tar's headers, yielding its entries with absolute payload offsets.

    Plain headers (_plain_header) are read directly; from the first that is not, tarfile reads
    the rest. A member whose payload runs past `length` (a cut-off download) is the last one
    yielded: nothing after it can be located.
    """
    offset = 0
    while True:
        fileobj.seek(offset)
        header = _plain_header(fileobj.read(tarfile.BLOCKSIZE))
        if header is None:
            yield from _tarfile_entries(fileobj, offset, base_offset, length, where)
            return
        name, size, kind = header
        data = offset + tarfile.BLOCKSIZE
        yield TarEntry(name, base_offset + data, size, kind)
        if length is not None and data + size > length:
            _cut_off(where, name)
            return
        offset = data + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _cut_off(where: str, name: str) -> None:
    logging.getLogger(__name__).warning("%s ends inside member %s: the archive is cut off", where, name)


def _tarfile_entries(fileobj: IO[bytes], start: int, base_offset: int, length: Optional[int],
                     where: str) -> Iterator[TarEntry]:
    """iter_tar_entries' entries from the header at `start` on, as tarfile reads them."""
    try:
        fileobj.seek(start)
        tar = tarfile.open(fileobj=fileobj, mode="r:")  # offsets it reports are the file's, from 0
        while True:
            if tar.offset and length is not None:
                # tarfile probes the byte before each header with a 1-byte read: on an object store that
                # is one more round trip per member. `length` already catches cut-off members.
                fileobj.seek(tar.offset)
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
                _cut_off(where, info.name)
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


LEFT_OUT = "left_out"



@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A member of a class the build leaves out on purpose (--classes): counted, not read."""

    split: str
    key: str


@dataclasses.dataclass(frozen=True)
class Labeler:
    """Turns a member's class (from its per-class tar or folder, or from a key table) into a label.

    class_index: {class name (a WNID for ImageNet): label}. key_classes: {split: {key: class}}
    for splits labelled by a table (the devkit's val ground truth, Kaggle's CSV).
    labelled_splits: splits whose samples must have a class (not "test").
    """

    class_index: dict
    key_classes: dict
    labelled_splits: frozenset
    left_out: frozenset = frozenset()  # classes of the dataset this build leaves out (--classes)

    def classify(self, split: str, key: str, class_hint: Optional[str]) -> tuple:
        """(label, class) for a member, (LEFT_OUT, class) for a class left out on purpose, or
        (None, why) when a labelled split has no class for it."""
        if split not in self.labelled_splits:
            return -1, None
        name = class_hint if class_hint is not None else self.key_classes.get(split, {}).get(key)
        if name is None:
            return None, "no label for this key in the ground truth"
        if name in self.left_out:
            return LEFT_OUT, name
        label = self.class_index.get(name)
        if label is None:
            return None, f"{name} is not one of the build's classes"
        return label, name


def _member(labeler: Labeler, key: str, split: str, source: str, archive: str, offset: int, size: int,
            class_hint: Optional[str]) -> Union[MemberRef, Reject, LeftOut]:
    label, name = labeler.classify(split, key, class_hint)
    if label == LEFT_OUT:
        return LeftOut(split, key)
    if label is None:
        return Reject(key, split, source, "unlabeled", name)
    return MemberRef(key=key, split=split, archive=archive, offset=offset, size=size, label=label, wnid=name,
                     source=source)


def index_tar_slice(piece: TarSlice, labeler: Labeler, archive_size: Optional[int] = None
                    ) -> Iterator[Union[MemberRef, Reject]]:
    """MemberRefs (and Rejects) for every member of one tar."""
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
            elif entry.offset + entry.size > end:
                yield Reject(key, piece.split, source, "truncated",
                             f"archive ends before this member ({entry.offset + entry.size - end} bytes missing)")
            else:
                yield _member(labeler, key, piece.split, source, piece.archive, entry.offset, entry.size, piece.wnid)


@dataclasses.dataclass(frozen=True)
class FolderSlice:
    """A folder of image files (recursively), all of one class or labelled by a key table."""

    split: str
    url: str
    source: str  # readable prefix of member sources, e.g. "train/n01440764"
    wnid: Optional[str] = None  # the class of every file, None: labels come from a table


_WNID = re.compile(r"^n\d{8}$")


def folder_member_key(class_name: Optional[str], relative: str) -> str:
    """Key of a loose file: its dot-free stem (sub-folders below the class included).

    ImageNet file names are unique on their own (n01440764/n01440764_10026.JPEG,
    n01751748/ILSVRC2012_val_00000001.JPEG) and must stay as they are for annotations to
    join by stem; other ImageFolder names often repeat across classes (cat/001.jpg,
    dog/001.jpg), so unless the class is a WNID the key is prefixed by it (dog_001).
    """
    stem = _UNSAFE_KEY_CHARS.sub("_", posixpath.splitext(relative)[0])
    if class_name and not _WNID.match(class_name):
        stem = f"{_UNSAFE_KEY_CHARS.sub('_', class_name)}_{stem}"
    return stem


def _list_files(url: str) -> list:
    """(relative path, absolute url, size) of every non-hidden file below a folder, sorted."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = []
    for path, info in fs.find(root, detail=True).items():
        relative = path[len(root) + 1:]
        if info.get("type") != "file" or any(part.startswith(".") for part in relative.split("/")):
            continue  # hidden files (.DS_Store and the like) are not samples
        files.append((relative, path if protocol in ("file", "local") else f"{protocol}://{path}",
                      int(info.get("size") or 0)))
    return sorted(files)


def index_folder(piece: FolderSlice, labeler: Labeler) -> Iterator[Union[MemberRef, Reject]]:
    """MemberRefs for every file below a folder: each file is an 'archive' read whole."""
    for relative, url, size in _list_files(piece.url):
        key = folder_member_key(piece.wnid, relative)
        yield _member(labeler, key, piece.split, f"{piece.source}/{relative}", url, 0, size, piece.wnid)


def hold_out(items: list, per_class: int, seed: int) -> list:
    """Move `per_class` samples of one class from train to val: those whose seeded key hash is
    smallest, so the choice is deterministic and independent of archive order."""
    from transforms.sharding import key_hash

    refs = [i for i in items if isinstance(i, MemberRef) and i.split == "train"]
    chosen = {r.key for r in sorted(refs, key=lambda r: (key_hash(r.key, seed), r.key))[:per_class]}
    return [dataclasses.replace(i, split="val") if isinstance(i, MemberRef) and i.key in chosen else i
            for i in items]


def expand_archive(spec, labeler: Labeler) -> Iterator[Union[TarSlice, FolderSlice, MemberRef, Reject]]:
    """An ArchiveSpec -> the units indexed in parallel (class tars, class folders, whole tars)."""
    if spec.kind == "nested_tar":
        yield from list_inner_tars(spec.split, spec.url, spec.name)
    elif spec.kind == "tar":
        yield TarSlice(spec.split, spec.url, 0, spec.size, spec.name, spec.class_name)
    elif spec.kind == "folder":
        yield FolderSlice(spec.split, spec.url, spec.name, spec.class_name)
    elif spec.kind == "class_folders":
        fs, root = fsspec.core.url_to_fs(spec.url)
        base = spec.url.rstrip("/")
        for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
            name = posixpath.basename(info["name"].rstrip("/"))
            if name.startswith("."):
                continue
            if info["type"] == "directory":
                yield FolderSlice(spec.split, f"{base}/{name}", f"{spec.name}/{name}", name)
            else:  # a file outside any class folder has no class
                yield _member(labeler, folder_member_key(None, name), spec.split, f"{spec.name}/{name}",
                              f"{base}/{name}", 0, int(info.get("size") or 0), None)
    else:
        raise ValueError(f"unknown archive kind {spec.kind!r}")


# --- Beam wiring -------------------------------------------------------------------

import typing  # noqa: E402

import apache_beam as beam  # noqa: E402  (kept below the pure core on purpose)
from apache_beam import pvalue  # noqa: E402


def _count_reject(reject: Reject) -> Reject:
    beam.metrics.Metrics.counter("rejects", reject.reason).inc()
    return reject


# Declared output types: otherwise Beam infers them by interpreting process() and everything
# it calls, walking every entry of the label tables it meets on the way (seconds of start-up).
@beam.typehints.with_output_types(typing.Any)
class _ExpandArchivesFn(beam.DoFn):
    """ArchiveSpec -> the units to index (TarSlice, FolderSlice), or members found on the way."""

    def __init__(self, labeler: Labeler):
        self._labeler = labeler

    def process(self, spec):
        for item in expand_archive(spec, self._labeler):
            if isinstance(item, Reject):
                yield pvalue.TaggedOutput("rejects", _count_reject(item))
            elif isinstance(item, MemberRef):
                yield pvalue.TaggedOutput("members", (item,))  # a batch of one (a file outside any class folder)
            elif isinstance(item, LeftOut):
                yield pvalue.TaggedOutput("left_out", item)
            else:
                yield item


@beam.typehints.with_output_types(typing.Any)
class _IndexUnitFn(beam.DoFn):
    """TarSlice | FolderSlice -> MemberRef per member (+ rejects)."""

    def __init__(self, labeler: Labeler, sizes: dict, holdout: int, seed: int):
        self._labeler = labeler
        self._sizes = sizes
        self._holdout = holdout
        self._seed = seed

    def process(self, piece):
        if isinstance(piece, FolderSlice):
            items = index_folder(piece, self._labeler)
        else:
            items = index_tar_slice(piece, self._labeler, self._sizes.get(piece.archive))
        if self._holdout and piece.wnid is not None:  # one unit = one whole class
            items = hold_out(list(items), self._holdout, self._seed)
        batch = []
        for item in items:
            if isinstance(item, Reject):
                yield pvalue.TaggedOutput("rejects", _count_reject(item))
            elif isinstance(item, LeftOut):
                yield pvalue.TaggedOutput("left_out", item)
            else:
                batch.append(item)
        if batch:
            yield tuple(batch)


class IndexArchives(beam.PTransform):
    """PBegin -> {"members": (MemberRef, ...), "rejects": Reject, "left_out": LeftOut}: every member,
    headers only.

    Members come in batches, one a unit (a class tar, a class folder, a whole flat tar): the
    local runner keeps every element that crosses a stage in memory, and a batch pickles its
    shared strings (the archive's path, the split, the class) once, with one element's overhead
    for a thousand members instead of a thousand (~100 B a member instead of ~330).
    Nested tars and folders of class folders are split into their classes first, and a
    Reshuffle spreads those over the workers (otherwise the whole fan-out would stay on the
    worker that listed it).
    """

    def __init__(self, archives, labeler: Labeler, holdout_per_class: int = 0, seed: int = 0):
        super().__init__()
        self._archives = list(archives)
        self._labeler = labeler
        self._holdout = holdout_per_class
        self._seed = seed

    def expand(self, pbegin):
        sizes = {a.url: a.size for a in self._archives}
        units = (
            pbegin
            | "ListArchives" >> beam.Create(self._archives)
            | "ListClassTars" >> beam.ParDo(_ExpandArchivesFn(self._labeler)).with_outputs(
                "members", "rejects", "left_out", main="units")
        )
        indexed = (
            units.units
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadHeaders" >> beam.ParDo(_IndexUnitFn(self._labeler, sizes, self._holdout, self._seed)).with_outputs(
                "rejects", "left_out", main="members")
        )
        members = (units.members, indexed.members) | "MergeMembers" >> beam.Flatten()
        rejects = (units.rejects, indexed.rejects) | "MergeIndexRejects" >> beam.Flatten()
        left_out = (units.left_out, indexed.left_out) | "MergeLeftOut" >> beam.Flatten()
        return {"members": members, "rejects": rejects, "left_out": left_out}
