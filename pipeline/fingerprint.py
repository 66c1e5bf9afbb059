"""The fingerprint of a build: what it reads and everything that decides what it writes.

Two builds with the same fingerprint write the same bytes, so a scheduled rebuild whose
fingerprint equals that of the version LATEST names has nothing to do ("up to date"). It covers:
  - every file under SOURCE: its path, its size, and its modification time (nanoseconds) or, on
    an object store, its ETag. Files that a build does not read count too: a listing cannot know
    which files a layout reads, and a needless rebuild is safe where a missed one is not;
  - the content of the files that options name (--classes, --label-map);
  - the options that decide the output (BuildConfig.for_manifest, the layout and the boxes);
  - the versions that decide the bytes: the tool's, the codecs' (libjpeg-turbo, PIL) and pyarrow's,
    and a digest of the tool's own files (code and bundled tables), so that a changed tool never
    takes its previous output for its own.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Iterator

import fsspec
import pyarrow

import pipeline
import transforms
from pipeline.options import BuildConfig
from transforms.storage import is_local, listed

__all__ = ["build_fingerprint", "list_source", "code_digest"]

# Options whose value is a file whose content decides the output (--classes may instead be a list of
# class entries, "n02084071+,n01440764", which the options cover).
_OPTION_FILES = ("classes_file", "label_map", "label_level")


def list_source(source: str) -> Iterator[tuple[str, int, str]]:
    """(relative path, size, version) of every file under SOURCE (or SOURCE itself, a file), in
    sorted order. Locally, links are followed as the folder layouts follow them (each real folder
    once); the version is the modification time in nanoseconds. On an object store it is the ETag."""
    if is_local(source):
        yield from _list_local(fsspec.core.url_to_fs(source)[1])
        return
    fs, root = fsspec.core.url_to_fs(source)
    root = root.rstrip("/")
    if not fs.isdir(root) and fs.isfile(root):  # an http(s) folder's index page is a file too
        info = fs.info(root)
        yield os.path.basename(root), int(info.get("size") or 0), _remote_version(info)
        return
    found = fs.find(root, detail=True)  # an http(s) listing: size and ETag (or Last-Modified) from a HEAD each
    for path, info in sorted(zip(found, listed(fs, list(found.values()))), key=lambda entry: entry[0]):
        yield path[len(root) + 1:], int(info.get("size") or 0), _remote_version(info)


def _remote_version(info: dict) -> str:
    return str(info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("Last-Modified")
               or info.get("mtime") or "")


def _list_local(root: str) -> Iterator[tuple[str, int, str]]:
    if os.path.isfile(root):
        stat = os.stat(root)
        yield os.path.basename(root), stat.st_size, str(stat.st_mtime_ns)
        return
    found = []
    seen = set()
    for folder, folders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            folders[:] = []
            continue
        seen.add(real)
        for name in files:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # a link to nothing: the build rejects it, its name is listed
                found.append((os.path.relpath(path, root), -1, "broken"))
                continue
            found.append((os.path.relpath(path, root), stat.st_size, str(stat.st_mtime_ns)))
    yield from sorted(found)


@functools.cache
def code_digest() -> str:
    """The sha256 of the tool's files (the packages `pipeline` and `transforms`: code and bundled
    data such as the class tables), in order."""
    digest = hashlib.sha256()
    for package in (pipeline, transforms):
        root = os.path.dirname(os.path.abspath(package.__file__ or ""))
        for folder, folders, names in os.walk(root):
            folders[:] = sorted(f for f in folders if f != "__pycache__")
            for name in sorted(names):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_file(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.isfile(path))


def build_fingerprint(config: BuildConfig, layout: str, codecs: dict) -> dict:
    """The fingerprint of a build (recorded in its manifest): {"digest": sha256 hex, and what it
    covers: "source" (file count, bytes, the listing's sha256), "option_files", "options",
    "versions"}. `layout`: the layout the build reads SOURCE as."""
    listing = hashlib.sha256()
    files = total = 0
    for relative, size, version in list_source(config.source):
        listing.update(f"{relative}\0{size}\0{version}\n".encode("utf-8", "surrogateescape"))
        files += 1
        total += max(size, 0)
    options = {**config.for_manifest(), "layout": layout, "boxes": list(config.boxes)}
    source = {"files": files, "bytes": total, "listing_sha256": listing.hexdigest()}
    covered = {
        "source": source,
        "option_files": {name: _file_sha256(getattr(config, name)) for name in _OPTION_FILES
                         if getattr(config, name, None) and _is_file(getattr(config, name))},
        "options": options,
        "versions": {"tool": pipeline.__version__, **codecs, "pyarrow": pyarrow.__version__, "code": code_digest()},
    }
    # SOURCE's own path is not covered: the same files moved elsewhere build the same bytes.
    digest = hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, **covered, "source": {"url": config.source, **source}}
