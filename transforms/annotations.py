"""Pascal VOC bounding-box XML (ImageNet's annotation files): bytes in, normalised boxes out.

Contract:
  XML bytes + key -> Annotation(key, width, height, boxes, dropped_boxes, names)
                  -> AnnotationRejected(reason, detail), reason in ANNOTATION_REASONS
                     (records.REJECT_REASONS["annotation"])
  No other exception leaves parse_voc_xml, whatever the bytes.

The box convention (every reader and writer of boxes must agree on it):
  * The key is the XML file's stem (annotation_key), never <filename>, which is noise in
    places (it may hold '%s').
  * W and H are <size><width> and <size><height> exactly as written: the size of the image
    shown to the annotator, which may differ from the stored JPEG. No +1. A missing,
    non-numeric, non-integral or non-positive size rejects the file ("no_size").
  * Coordinates are parsed with float() ("123" and "123.0" both occur). Non-numeric or
    non-finite coordinates, or a <bndbox> lacking one of them, reject the file
    ("bad_coordinates").
  * x / W and y / H; min and max are swapped when reversed; both are clipped to [0, 1].
    So a pixel coordinate c becomes c / W: ImageNet's 0-based inclusive xmax = W - 1
    becomes (W - 1) / W, not 1.0. This is what tensorflow/models' process_bounding_boxes.py
    and tfds do.
  * A box with zero area after clipping (xmin >= xmax or ymin >= ymax, e.g. one lying wholly
    outside the image) is dropped, and so is an <object> without a <bndbox>: both are
    counted in dropped_boxes.
  * <name> is kept as written (stripped of surrounding whitespace): a WNID such as
    n01440764, or a human label such as "Scottish_deerhound" or "Television".
    Annotation.wnids() picks out the WNIDs.
  * Normalised boxes hold in any resized copy of the image that keeps the aspect ratio;
    boxes_in_pixels turns them into pixels of a stored image of a given size.

Security: the bytes are parsed only by defusedxml with DTDs, entities and external
references forbidden. Any DOCTYPE (billion laughs, external entities such as
file:///etc/passwd) is refused when its declaration starts, before anything is expanded
or fetched, and the file is rejected as "forbidden_xml".
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import math
import os
import posixpath
import tarfile
import typing
import zlib
from typing import IO, Iterable, Iterator, Sequence, Union
from xml.etree.ElementTree import ParseError

import fsspec
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

from transforms.keys import WNID
from transforms.records import REJECT_REASONS, AnnotationRejected
from transforms.storage import is_folder, is_local, open_input

__all__ = ["Box", "Annotation", "ANNOTATION_REASONS", "parse_voc_xml",
           "boxes_in_pixels", "iter_annotation_archive"]

# The closed set of reasons an annotation file is set aside for: "empty", "malformed_xml",
# "forbidden_xml", "no_size", "bad_coordinates".
ANNOTATION_REASONS = REJECT_REASONS["annotation"]

_COORDS = ("xmin", "ymin", "xmax", "ymax")
_MAX_DETAIL = 200
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_MAX_TAR_NESTING = 2  # an archive of per-synset archives (fall11's Annotation.tar.gz) is depth 1


@dataclasses.dataclass(frozen=True)
class Box:
    """One box, normalised to [0, 1] by the XML's <size>; xmin < xmax and ymin < ymax."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    name: str  # <object><name> as written: a WNID, or a human label such as "Scottish_deerhound"


@dataclasses.dataclass(frozen=True)
class Annotation:
    key: str  # the XML file's stem (annotation_key), not <filename>
    width: int  # <size> as written: the size shown to the annotator
    height: int
    boxes: tuple[Box, ...]  # the valid boxes, in file order
    dropped_boxes: int  # objects without a usable box: zero area after clipping, or no <bndbox>
    names: tuple[str, ...]  # distinct non-empty <name>s of all <object>s (dropped ones included), in order

    def wnids(self) -> tuple[str, ...]:
        """The names that are WNIDs (n + 8 digits), in order."""
        return tuple(n for n in self.names if WNID.fullmatch(n))


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _text(parent, tag: str):
    el = parent.find(tag)
    if el is None:
        return None
    return (el.text or "").strip()


def _size(root, tag: str) -> int:
    size = root.find("size")
    if size is None:
        raise AnnotationRejected("no_size", "no <size>")
    raw = _text(size, tag)
    if raw is None:
        raise AnnotationRejected("no_size", f"no <size><{tag}>")
    try:
        value = float(raw)
    except ValueError:
        raise AnnotationRejected("no_size", _short(f"<{tag}> is not a number: {raw!r}")) from None
    if not (math.isfinite(value) and value > 0 and value.is_integer()):
        raise AnnotationRejected("no_size", _short(f"<{tag}> is not a positive integer: {raw!r}"))
    return int(value)


def _clip(v: float) -> float:
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


def parse_voc_xml(data: bytes, key: str) -> Annotation:
    """Parse one VOC XML file (see the module docstring for the convention).

    Raises AnnotationRejected and nothing else, whatever `data` holds.
    """
    if not data:
        raise AnnotationRejected("empty", "0 bytes")
    try:
        root = _defused_fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        # Only the declaration's name and identifiers: never anything an entity might hold.
        raise AnnotationRejected("forbidden_xml", _short(f"{type(e).__name__}: {e}")) from None
    except ParseError as e:
        raise AnnotationRejected("malformed_xml", _short(str(e))) from None
    except Exception as e:  # e.g. LookupError for an unknown encoding in the XML declaration
        raise AnnotationRejected("malformed_xml", _short(f"{type(e).__name__}: {e}")) from None
    try:
        return _annotation(root, key)
    except AnnotationRejected:
        raise
    except Exception as e:  # defensive: the guarantee is "AnnotationRejected or an Annotation"
        raise AnnotationRejected("malformed_xml", _short(f"{type(e).__name__}: {e}")) from None


def _annotation(root, key: str) -> Annotation:
    width = _size(root, "width")
    height = _size(root, "height")
    fw, fh = float(width), float(height)
    boxes = []
    names = []
    seen = set()
    dropped = 0
    for obj in root.iterfind("object"):
        name = _text(obj, "name") or ""
        if name and name not in seen:
            seen.add(name)
            names.append(name)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            dropped += 1
            continue
        values = []
        for tag in _COORDS:
            raw = _text(bndbox, tag)
            if raw is None:
                raise AnnotationRejected("bad_coordinates", f"<bndbox> has no <{tag}>")
            try:
                v = float(raw)
            except ValueError:
                raise AnnotationRejected("bad_coordinates", _short(f"<{tag}> is not a number: {raw!r}")) from None
            if not math.isfinite(v):
                raise AnnotationRejected("bad_coordinates", _short(f"<{tag}> is not finite: {raw!r}"))
            values.append(v)
        x0, y0, x1, y1 = values
        if x0 > x1:
            x0, x1 = x1, x0
        if y0 > y1:
            y0, y1 = y1, y0
        x0, x1 = _clip(x0 / fw), _clip(x1 / fw)
        y0, y1 = _clip(y0 / fh), _clip(y1 / fh)
        if x0 >= x1 or y0 >= y1:
            dropped += 1
            continue
        boxes.append(Box(x0, y0, x1, y1, name))
    return Annotation(key, width, height, tuple(boxes), dropped, tuple(names))


BoxLike = Union[Box, Sequence[float]]


def boxes_in_pixels(boxes: Iterable[BoxLike], width: int, height: int) -> list[list[float]]:
    """Normalised boxes (Box or (xmin, ymin, xmax, ymax)) -> [[x*W, y*H, x*W, y*H], ...]
    in pixels of a stored image `width` x `height` (the inverse of the normalisation)."""
    out = []
    for b in boxes:
        if isinstance(b, Box):
            x0, y0, x1, y1 = b.xmin, b.ymin, b.xmax, b.ymax
        else:
            x0, y0, x1, y1 = b[:4]
        out.append([x0 * width, y0 * height, x1 * width, y1 * height])
    return out


# --- reading annotation archives and folders ------------------------------------------


def _is_xml(name: str) -> bool:
    return name.lower().endswith(".xml")


def _is_tar(name: str) -> bool:
    return name.lower().endswith(_TAR_SUFFIXES)


class _Tail(io.RawIOBase):
    """A forward-only reader that counts what it hands out and keeps the last bytes of it,
    so the block at a tar's end can be checked after tarfile's stream reader is done."""

    WINDOW = 1 << 16  # more than tarfile's stream read-ahead (20 blocks of 512)

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.count = 0
        self._buf = bytearray()
        self._buf_start = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n) if n is not None and n >= 0 else self._f.read()
        if data:
            self.count += len(data)
            self._buf += data
            if len(self._buf) > 2 * self.WINDOW:
                cut = len(self._buf) - self.WINDOW
                del self._buf[:cut]
                self._buf_start += cut
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def block(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) if still held (reading on as far as needed)."""
        while self.count < offset + size and self.read(size):
            pass
        start = offset - self._buf_start
        return bytes(self._buf[start: start + size]) if start >= 0 else b""

    def drain(self) -> None:
        while self._f.read(1 << 20):
            pass


def _read_head(f: IO[bytes], n: int) -> bytes:
    head = b""
    while len(head) < n:
        more = f.read(n - len(head))
        if not more:
            break
        head += more
    return head


class _Prefixed(io.RawIOBase):
    """`head` (already read from f) followed by the rest of f: a peek without seeking."""

    def __init__(self, head: bytes, f: IO[bytes]):
        self._head = head
        self._f = f

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            head, self._head = self._head, b""
            return head + self._f.read()
        if self._head:
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._f.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _decompressed(f: IO[bytes]) -> IO[bytes]:
    """The tar inside gzip / bzip2 / xz (by magic number), or f itself; read forward only.

    gzip.GzipFile and friends raise EOFError on a cut-off stream, which tarfile's own
    stream decompressor does not."""
    head = _read_head(f, 6)
    src = typing.cast(IO[bytes], _Prefixed(head, f))
    if head[:2] == b"\x1f\x8b":
        return typing.cast(IO[bytes], gzip.GzipFile(fileobj=src, mode="rb"))
    if head[:3] == b"BZh":
        return bz2.BZ2File(src, mode="rb")
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(src, mode="rb")
    return src


def _iter_tar_stream(fileobj: IO[bytes], where: str, prefix: str = "", depth: int = 0) -> Iterator[tuple]:
    """Stream a (possibly compressed) tar once, front to back: (path, bytes) of its XML members.

    Members that are themselves tars (a tar of per-synset .tar.gz) are streamed in turn,
    their members' paths prefixed with the inner tar's path. The archive must run to its
    end-of-archive block: one cut off, or corrupt part-way, raises RuntimeError rather than
    silently yielding only the files before the damage.
    """
    try:
        tail = _Tail(_decompressed(fileobj))
        tar = tarfile.open(fileobj=tail, mode="r|")
        while True:
            info = tar.next()
            if info is None:
                break
            tar.members.clear()  # type: ignore[attr-defined]  # 544k headers are not worth keeping
            if not info.isreg():
                continue
            path = prefix + info.name
            if _is_xml(info.name):
                f = tar.extractfile(info)
                yield path, (f.read() if f is not None else b"")
            elif _is_tar(info.name) and depth < _MAX_TAR_NESTING:
                inner = tar.extractfile(info)
                if inner is not None:
                    yield from _iter_tar_stream(inner, f"{where}/{info.name}", path + "/", depth + 1)
        end = tail.block(tar.offset, tarfile.BLOCKSIZE)
        if len(end) < tarfile.BLOCKSIZE:
            raise RuntimeError(f"{where}: not a readable tar (cut off after {tar.offset} bytes)")
        if end.count(0) != len(end):
            raise RuntimeError(f"{where}: not a readable tar (invalid header at offset {tar.offset})")
        tail.drain()  # a compressed stream checks its own end (and CRC) here
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise RuntimeError(f"{where}: not a readable tar ({type(e).__name__}: {e})") from e


def _iter_local_folder(root: str) -> Iterator[tuple]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if _is_xml(name):
                full = os.path.join(folder, name)
                if not os.path.isfile(full):
                    continue
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, "rb") as f:
                    yield rel, f.read()


def _iter_remote_folder(fs, root: str) -> Iterator[tuple]:
    root = root.rstrip("/")
    for path in sorted(fs.find(root)):
        if _is_xml(path):
            rel = posixpath.relpath(path, root) if path.startswith(root + "/") else posixpath.basename(path)
            yield rel, fs.cat_file(path)


def iter_annotation_archive(url: str) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of every *.xml in an annotation source, read once, in order.

    url: a .tar / .tar.gz / .tgz (or .tar.bz2 / .tar.xz, told apart by magic number; streamed, never seeked, so a
    gz archive is read front to back once), a folder (walked recursively, sorted), or a
    single .xml file; local or any fsspec URL. Paths are relative to the archive or folder
    (`n01440764/n01440764_96.xml`), so annotation_key(path) is the image's key. XML members of
    tars nested in the archive are included (`n00007846.tar.gz/Annotation/n00007846/...xml`).
    An unreadable, corrupt or cut-off archive raises RuntimeError (never a silent partial read).
    """
    fs, path = fsspec.core.url_to_fs(url)
    if is_folder(fs, path):
        if is_local(url):
            yield from _iter_local_folder(path)
        else:
            yield from _iter_remote_folder(fs, path)
        return
    if _is_xml(path):
        with open_input(url) as f:
            yield posixpath.basename(path.rstrip("/")), f.read()
        return
    with open_input(url) as f:
        yield from _iter_tar_stream(f, url)
