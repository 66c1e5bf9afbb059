"""OUT as a dataset root: one folder per build, and a pointer to the current one.

  OUT/
    LATEST                         the relative path of the current version, e.g. versions/20261202T160000.123Z-3fa2c1d4
    _info.json                     timm's description of the current version (written by publish, before LATEST)
    .imagenet-shards.lock          held while a build runs (pipeline/lock.py)
    versions/<build id>/           one build: its manifest and everything the manifest lists
      imagenet-shards-version.json the tool's marker, written first (the build id and its fingerprint)
      manifest.json                written last by the build; a version without it is unfinished

A build writes a new version folder, and only once its manifest is written (its counts
reconciled, its inputs unchanged) does it replace LATEST: one small file, written whole (a rename
locally, a single PUT on an object store, where renaming a folder would be a copy). A reader that
follows LATEST therefore sees a complete version or the previous one, never a mixture.

Nothing the tool did not write is removed: pruning (--keep) and the removal of unfinished
versions touch only folders under versions/ that hold the tool's marker, and never the version
LATEST names. An output of an earlier release of the tool, with manifest.json at OUT's root, is
still read: `current_version` returns OUT itself for it.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import posixpath
from typing import Optional

import fsspec

import pipeline
from transforms.layout import MANIFEST_NAME, TIMM_INFO_NAME
from transforms.reader_files import timm_info
from transforms.storage import atomic_write

__all__ = ["LATEST_NAME", "VERSIONS_DIR", "MARKER_NAME", "Version", "DatasetRoot", "current_version",
           "read_manifest", "new_build_id"]

LATEST_NAME = "LATEST"
VERSIONS_DIR = "versions"
MARKER_NAME = "imagenet-shards-version.json"
MARKER_FORMAT = "imagenet-shards-version/1"


def new_build_id(digest: str, now: Optional[datetime.datetime] = None) -> str:
    """A version's name: the UTC time the build started, to the millisecond (so that names sort by
    age), then the first eight hex digits of its fingerprint (so that a rerun of the same build
    finds its own)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z-{digest[:8]}"


@dataclasses.dataclass(frozen=True)
class Version:
    """A folder under OUT/versions/ as a build left it."""
    build_id: str
    marker: Optional[dict]  # the tool's marker, None when the folder is not the tool's
    finished: bool  # its manifest is written

    @property
    def relative(self) -> str:
        return f"{VERSIONS_DIR}/{self.build_id}"

    @property
    def digest(self) -> Optional[str]:
        return (self.marker or {}).get("fingerprint")


class DatasetRoot:
    """The versions of OUT and its LATEST pointer. `url`: a local path or an fsspec URL."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or "/"
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.path = self.path.rstrip("/") or "/"

    def join(self, relative: str) -> str:
        """The path or URL of a path relative to OUT."""
        return posixpath.join(self.url, relative)

    def exists(self, relative: str) -> bool:
        """Whether a path relative to OUT exists."""
        return self.fs.exists(posixpath.join(self.path, relative))

    def latest(self) -> Optional[str]:
        """The relative path that LATEST names, or None before the first publish."""
        self.fs.invalidate_cache()
        try:
            text = self.fs.cat_file(posixpath.join(self.path, LATEST_NAME)).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        if not text.startswith(f"{VERSIONS_DIR}/") or "/.." in text or text.count("/") != 1:
            raise ValueError(f"{self.join(LATEST_NAME)} names {text!r}, which is not a version of this dataset")
        return text

    def manifest(self, relative: str) -> dict:
        """The manifest of a version (its path relative to OUT, as LATEST names it)."""
        with self.fs.open(posixpath.join(self.path, relative, MANIFEST_NAME), "rb") as f:
            return json.load(f)

    def versions(self) -> list[Version]:
        """Every folder under versions/, oldest first."""
        self.fs.invalidate_cache()
        folder = posixpath.join(self.path, VERSIONS_DIR)
        if not self.fs.exists(folder):
            return []
        found = []
        for entry in sorted(self.fs.ls(folder, detail=True), key=lambda e: e["name"]):
            if entry["type"] != "directory":
                continue
            build_id = posixpath.basename(entry["name"].rstrip("/"))
            base = posixpath.join(folder, build_id)
            found.append(Version(build_id, self._marker(base), self.fs.exists(posixpath.join(base, MANIFEST_NAME))))
        return found

    def _marker(self, base: str) -> Optional[dict]:
        try:
            marker = json.loads(self.fs.cat_file(posixpath.join(base, MARKER_NAME)))
        except (FileNotFoundError, ValueError):
            return None
        return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None

    def start_version(self, build_id: str, digest: str) -> str:
        """Create versions/<build_id>/ with the tool's marker in it; returns its path or URL.
        The marker comes first, so that whatever the build leaves there is known to be the tool's."""
        url = self.join(f"{VERSIONS_DIR}/{build_id}")
        if self.exists(f"{VERSIONS_DIR}/{build_id}"):
            raise FileExistsError(f"{url} exists already")
        marker = {"format": MARKER_FORMAT, "build_id": build_id, "fingerprint": digest,
                  "tool": pipeline.__version__,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with atomic_write(posixpath.join(url, MARKER_NAME)) as f:
            f.write(json.dumps(marker, indent=1).encode() + b"\n")
        return url

    def _unpublished(self) -> list[Version]:
        """The tool's versions that LATEST never named, oldest first: those of killed, stopped or
        failed builds, and a finished one newer than LATEST (stopped before it could publish).
        Finished versions older than LATEST are earlier publications (pruning decides on them)."""
        latest = self.latest()
        latest_id = posixpath.basename(latest) if latest else ""
        return [v for v in self.versions() if v.marker is not None and v.relative != latest
                and (not v.finished or v.build_id > latest_id)]

    def resumable(self, digest: str) -> Optional[Version]:
        """The newest unpublished version with this fingerprint, which a build of the same
        fingerprint takes over; None when there is none."""
        return next((v for v in reversed(self._unpublished()) if v.digest == digest), None)

    def remove_unfinished(self, keep: Optional[str] = None) -> list[str]:
        """Remove the unpublished versions but `keep` (a build id). Returns the relative paths removed."""
        removed = []
        for version in self._unpublished():
            if version.build_id == keep:
                continue
            self.fs.rm(posixpath.join(self.path, version.relative), recursive=True)
            removed.append(version.relative)
        return removed

    def publish(self, build_id: str) -> None:
        """Point LATEST at a finished version: one small file, replaced whole. Then timm's
        _info.json at the root is replaced by the version's, its shards' paths prefixed with the
        version's folder, so that timm reads the version that LATEST names from OUT itself. In
        that order: a build stopped between the two leaves _info.json on the previous version,
        which is complete and is not pruned before the next publish rewrites _info.json."""
        relative = f"{VERSIONS_DIR}/{build_id}"
        if not self.exists(posixpath.join(relative, MANIFEST_NAME)):
            raise RuntimeError(f"{relative} has no manifest: an unfinished version is never published")
        with atomic_write(self.join(LATEST_NAME)) as f:
            f.write(f"{relative}\n".encode())
        self.match_root_info()

    def match_root_info(self) -> None:
        """Make the root _info.json that of the version LATEST names, if it is not (a build
        stopped between writing LATEST and it); writes nothing when it is."""
        relative = self.latest()
        if relative is None:
            return
        info = json.dumps(timm_info(self.manifest(relative), prefix=f"{relative}/"), indent=1).encode() + b"\n"
        try:
            if self.fs.cat_file(posixpath.join(self.path, TIMM_INFO_NAME)) == info:
                return
        except FileNotFoundError:
            pass
        with atomic_write(self.join(TIMM_INFO_NAME)) as f:
            f.write(info)

    def prune(self, keep: int) -> list[str]:
        """Remove the tool's finished versions but the `keep` newest (LATEST's is always kept).
        Returns the relative paths removed."""
        if keep < 1:
            raise ValueError("--keep must be at least 1: the version LATEST names is always kept")
        latest = self.latest()
        finished = [v for v in self.versions() if v.marker is not None and v.finished]
        removed = []
        for version in finished[:-keep]:
            if version.relative == latest:
                continue
            self.fs.rm(posixpath.join(self.path, version.relative), recursive=True)
            removed.append(version.relative)
        return removed


def current_version(root: str) -> str:
    """The path or URL of the version a reader should read: the one OUT/LATEST names, or OUT
    itself when it holds an unversioned build (an earlier release of the tool). Raises
    FileNotFoundError when OUT holds neither."""
    dataset = DatasetRoot(root)
    latest = dataset.latest()
    if latest is not None:
        return dataset.join(latest)
    if dataset.exists(MANIFEST_NAME):
        return dataset.url
    raise FileNotFoundError(f"{root} holds no published build (no {LATEST_NAME} and no {MANIFEST_NAME})")


def read_manifest(root: str) -> dict:
    """The manifest of the version a reader should read (see current_version)."""
    with fsspec.open(posixpath.join(current_version(root), MANIFEST_NAME), "rb") as f:
        return json.load(f)
