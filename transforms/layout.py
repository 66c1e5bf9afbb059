"""Where every output file lives, relative to the build's root (OUT).

The one place that knows the output layout of a version: the manifest, shards, index and
rejects tables, and the files that other readers expect (timm's _info.json, the wids shard
indexes, DALI's shard indexes). pipeline/versions.py holds the versions and LATEST around it.
"""
from __future__ import annotations

import posixpath

__all__ = ["OutputLayout", "MANIFEST_NAME", "TIMM_INFO_NAME", "DATASET_CARD_NAME", "FAILED_REPORT_NAME", "PIECES_DIR",
           "DONE_DIR", "NEAR_DUPLICATES_NAME"]

MANIFEST_NAME = "manifest.json"
# timm's webdataset reader looks for this file in the folder it is given (--data-dir): the splits,
# their shards and their sample counts. Written beside the manifest, and at the dataset root on publish.
TIMM_INFO_NAME = "_info.json"
# A Hugging Face dataset card: the splits' shards and the types of a sample's members, which
# `datasets.load_dataset(<version folder>)` reads.
DATASET_CARD_NAME = "README.md"
# The pairs of near-duplicate samples (transforms/near_duplicate_search.py), beside the manifest: at
# the version's top, so that the glob `*/*.parquet` still reads the index files and nothing else.
NEAR_DUPLICATES_NAME = "near-duplicates.parquet"
# Scratch folder of processed pieces of shards; empty (and removed) when a build ends.
PIECES_DIR = "_pieces"
# Scratch folder of the shards a build has completed (transforms/checkpoints.py): what a rerun of
# a killed build reuses. Removed when the build finishes.
DONE_DIR = "_done"
# Scratch folder of the local runner's progress heartbeats (transforms/progress.py).
PROGRESS_DIR = "_progress"
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
    def dali_index(split: str, shard_id: int) -> str:
        """DALI's index of a shard (what DALI's wds2idx writes), beside its tar."""
        return f"{split}/{split}-{shard_id:06d}.idx"

    @staticmethod
    def wids_index(split: str) -> str:
        """The wids shard index of a split (wids-shard-index-v1)."""
        return f"{split}.wids.json"

    # The rejects tables sit one folder deeper than the index files, so that the glob `*/*.parquet`
    # in a version folder reads the index files and nothing else.
    @staticmethod
    def rejects(split: str) -> str:
        return f"rejects/{split}/{split}-rejects.parquet"

    @staticmethod
    def annotation_rejects(split: str) -> str:
        return f"rejects/{split}/{split}-annotation-rejects.parquet"
