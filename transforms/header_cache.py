"""The tar headers a build has read, kept beside the output so that a rebuild need not read them again.

Indexing ImageNet's train tar reads 1.28M tar headers: a ranged read each, scattered over 140 GB
(minutes on a disk, and on an object store one request per header). They change only when the archive
does, so the entries found in a tar (or in one class tar inside it) are kept in the dataset's
cache folder, OUT/cache/tar-headers/, under the archive's identity: its path or URL and its
fingerprint (size and modification time, or ETag: transforms/storage.fingerprint). A rebuild
that finds the same identity, offset and length reads the entries from there, one small file
per tar, and a damaged tar's damage is recorded with them and raised again.

One folder per archive identity: when an archive changes, its folder no longer matches anything
and `remove_stale` removes it after a successful build.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
import posixpath
from typing import Callable, Iterator, Optional

import fsspec

from transforms.storage import atomic_write
from transforms.tar_headers import TarDamaged, TarEntry

__all__ = ["CACHE_DIR", "HeaderCache", "archive_folder", "header_cache_root", "remove_stale"]

CACHE_DIR = "cache/tar-headers"  # relative to the dataset root (OUT)
_FORMAT = 1  # bump when the record or TarEntry changes


def header_cache_root(dataset_root: str) -> str:
    """The cache's folder (path or URL) in a dataset root."""
    return posixpath.join(dataset_root.rstrip("/"), CACHE_DIR)


def archive_folder(archive: str, fingerprint: str) -> str:
    """The cache folder of one archive identity, relative to the cache's root."""
    return hashlib.sha256(f"{_FORMAT}\0{archive}\0{fingerprint}".encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class HeaderCache:
    """The cache in `root` (a path or URL: OUT/cache/tar-headers) for the archives whose
    fingerprints are known ({url: fingerprint}); others are not cached."""

    root: str
    fingerprints: dict

    def entries(self, archive: str, offset: int, length: int, scan: Callable[[], Iterator[TarEntry]]
                ) -> Iterator[TarEntry]:
        """The entries of the tar at [offset, offset + length) of `archive`: cached, or `scan()`ned
        and then cached. A damaged tar yields what can be located, then raises TarDamaged, both
        times alike."""
        fingerprint = self.fingerprints.get(archive)
        if fingerprint is None:
            yield from scan()
            return
        url = posixpath.join(self.root, archive_folder(archive, fingerprint), f"{offset}-{length}.pkl")
        record = _read(url)
        if record is None:
            found: list = []
            damage: Optional[tuple] = None
            try:
                for entry in scan():
                    found.append((entry.name, entry.offset, entry.size, entry.kind))
            except TarDamaged as e:
                damage = (e.where, e.detail, e.readable, e.size)
            record = {"entries": found, "damage": damage}
            with atomic_write(url) as f:
                pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
        for entry in record["entries"]:
            yield TarEntry(*entry)
        if record["damage"] is not None:
            raise TarDamaged(*record["damage"])


def _read(url: str) -> Optional[dict]:
    try:
        with fsspec.open(url, "rb") as f:
            record = pickle.load(f)
    except (FileNotFoundError, EOFError, pickle.UnpicklingError):
        return None
    return record if isinstance(record, dict) and "entries" in record else None


def remove_stale(root: str, fingerprints: dict) -> int:
    """Remove the folders of archive identities that are not among `fingerprints` ({url:
    fingerprint} of the archives the last build read). Returns how many were removed."""
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return 0
    current = {archive_folder(archive, fingerprint) for archive, fingerprint in fingerprints.items()}
    removed = 0
    for entry in fs.ls(path, detail=False):
        if posixpath.basename(entry.rstrip("/")) not in current:
            fs.rm(entry, recursive=True)
            removed += 1
    return removed
