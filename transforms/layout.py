"""Where every output file lives, relative to the build's root (OUT).

The one place that knows the output layout: the manifest, shards, index and rejects
tables. A later versioned layout (OUT/<version>/ plus a LATEST pointer) changes only
this module.
"""
from __future__ import annotations

import posixpath

__all__ = ["OutputLayout", "MANIFEST_NAME", "FAILED_REPORT_NAME", "PIECES_DIR", "DONE_DIR"]

MANIFEST_NAME = "manifest.json"
# Scratch folder of processed pieces of shards; empty (and removed) when a build ends.
PIECES_DIR = "_pieces"
# Scratch folder of the shards a build has completed (transforms/checkpoints.py): what a rerun of
# a killed build reuses. Removed when the build finishes.
DONE_DIR = "_done"
# Written instead of the manifest when a build fails its checks (e.g. too many rejects):
# a failed build must never leave a file that looks like a finished one.
FAILED_REPORT_NAME = "build-failed.json"


class OutputLayout:
    """Paths of a build's outputs. `root` is a local path or an fsspec URL."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"

    def url(self, relative: str) -> str:
        """The absolute path or URL of a path relative to the manifest."""
        return posixpath.join(self.root, relative)

    @property
    def manifest(self) -> str:
        return self.url(MANIFEST_NAME)

    @property
    def failed_report(self) -> str:
        return self.url(FAILED_REPORT_NAME)

    @property
    def progress_dir(self) -> str:
        """Scratch folder for progress heartbeats (local builds only; removed at the end)."""
        return self.url("_progress")

    @staticmethod
    def piece(split: str, shard_id: int, piece: int) -> str:
        """A piece of a shard, processed and waiting to be assembled (removed once it is)."""
        return f"{PIECES_DIR}/{split}-{shard_id:06d}-{piece:05d}.pkl"

    @staticmethod
    def done(split: str, shard_id: int) -> str:
        """The record of a completed shard (removed when the build finishes)."""
        return f"{DONE_DIR}/{split}-{shard_id:06d}.json"

    # Paths below are relative to the manifest, as the manifest and the index record them.
    @staticmethod
    def shard(split: str, shard_id: int) -> str:
        return f"{split}/{split}-{shard_id:06d}.tar"

    @staticmethod
    def index(split: str, shard_id: int) -> str:
        return f"{split}/{split}-{shard_id:06d}.parquet"

    @staticmethod
    def rejects(split: str) -> str:
        return f"rejects/{split}-rejects.parquet"

    @staticmethod
    def annotation_rejects(split: str) -> str:
        return f"rejects/{split}-annotation-rejects.parquet"
