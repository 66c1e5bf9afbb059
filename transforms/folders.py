"""Folders listed as a build sees them: every non-hidden entry, symbolic links followed.

Contract (no Beam):
    list_files(url) -> FolderEntry for every entry below a folder, sorted by path
    class_folder_entries(url) -> (name, None for a folder, else its FolderEntry) of its direct entries
An entry is a regular file (problem None) or something that cannot be one (a link to nothing, a
fifo, a device, a link back up the tree), which the indexer turns into a `not_a_file` reject:
no candidate is skipped without being counted. Local folders are walked with os (links followed,
each real folder once); other file systems through fsspec, which has no links.
"""
from __future__ import annotations

import os
import posixpath
from typing import Iterator, NamedTuple, Optional

from transforms.storage import is_local, listed, locate

__all__ = ["FolderEntry", "list_files", "class_folder_entries"]


class FolderEntry(NamedTuple):
    """A non-hidden entry below a folder: a regular file (problem None), or something that cannot
    be one (a link to nothing, a fifo, a device), which becomes a `not_a_file` reject."""

    relative: str  # path below the folder, with "/"
    url: str
    size: int
    problem: Optional[str] = None


def _walk_local(root: str) -> Iterator[FolderEntry]:
    """Every non-hidden entry below a local folder, symbolic links followed (to files and to
    folders: an ImageNet subset is often a folder of links), each real folder visited once. A
    link to the folder itself or to a folder above it would make the tree contain itself: it is
    not followed, and is an entry with a problem (so it is counted as a reject)."""
    top = os.path.realpath(root)
    seen = {top}
    for folder, dirs, files in os.walk(root, followlinks=True):
        followed = []
        for name in sorted(dirs):
            if name.startswith("."):  # hidden folders (.git and the like) hold no samples
                continue
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if top == real or top.startswith(real + os.sep):
                yield FolderEntry(_relative(path, root), path, 0, "a link to a folder above it (a loop): not followed")
            elif real not in seen:
                seen.add(real)
                followed.append(name)
        dirs[:] = followed
        for name in files:
            if not name.startswith("."):  # hidden files (.DS_Store and the like) are not samples
                path = os.path.join(folder, name)
                yield _local_entry(path, _relative(path, root))


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _local_entry(path: str, relative: str) -> FolderEntry:
    if os.path.isfile(path):  # a regular file, or a link that ends at one
        return FolderEntry(relative, path, os.path.getsize(path))
    if os.path.islink(path) and not os.path.exists(path):
        return FolderEntry(relative, path, 0, f"a link to {os.readlink(path)}, which does not exist")
    return FolderEntry(relative, path, 0, "not a regular file (a fifo, a device or a socket)")


def list_files(url: str) -> list[FolderEntry]:
    """Every non-hidden entry below a folder, sorted by path."""
    fs, root, url_of = locate(url)
    if is_local(url):
        return sorted(_walk_local(root))
    root = root.rstrip("/")
    entries = []
    found = fs.find(root, detail=True)
    for path, info in zip(found, listed(fs, list(found.values()))):
        relative = path[len(root) + 1:]
        if any(part.startswith(".") for part in relative.split("/")):
            continue  # hidden files (.DS_Store and the like) are not samples
        problem = None if info.get("type") == "file" else f"not a regular file ({info.get('type')})"
        entries.append(FolderEntry(relative, url_of(path), int(info.get("size") or 0), problem))
    return sorted(entries)


def class_folder_entries(url: str) -> list[tuple[str, Optional[FolderEntry]]]:
    """(name, None for a folder, else its entry) of a folder's direct non-hidden entries, sorted;
    links followed."""
    fs, root, url_of = locate(url)
    found: list[tuple[str, Optional[FolderEntry]]] = []
    if is_local(url):
        for name in sorted(n for n in os.listdir(root) if not n.startswith(".")):
            path = os.path.join(root, name)
            found.append((name, None if os.path.isdir(path) else _local_entry(path, name)))
        return found
    for info in sorted(listed(fs, fs.ls(root, detail=True)), key=lambda i: i["name"]):
        name = posixpath.basename(info["name"].rstrip("/"))
        if name.startswith("."):
            continue
        if info["type"] == "directory":
            found.append((name, None))
            continue
        problem = None if info["type"] == "file" else f"not a regular file ({info['type']})"
        found.append((name, FolderEntry(name, url_of(info["name"]), int(info.get("size") or 0), problem)))
    return found
