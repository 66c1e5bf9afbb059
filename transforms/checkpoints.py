"""Completed shards, recorded so that a rerun of a killed build reuses them.

When a shard's tar and index are written, the writer records it in the version's scratch folder
(`_done/<split>-<shard>.json`, see OutputLayout.done): the digest of the shard's members, the
shard's size and sha256, and the samples the kernel rejected from it (which exist nowhere else).
A rerun of the same build (the same fingerprint, so the same version folder: pipeline/versions.py)
asks `completed_shard` before it cuts a shard: when the record is there, its members' digest is the
same, and the tar on disk still has the recorded sha256, the shard is not processed again. What the
writer reported is read back from the tar and the index instead, so the rest of the build (the
duplicate searches, the manifest) sees exactly what a clean build sees, and the output is the same
byte for byte. The records are removed when the build finishes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Optional

import fsspec

from transforms.layout import DONE_DIR, OutputLayout
from transforms.records import Reject, ShardTask
from transforms.shard_writer import ShardResult, read_written_shard
from transforms.storage import atomic_write

__all__ = ["members_digest", "record_completed", "completed_shard", "completed_shards", "remove_completion_records"]

_FORMAT = "imagenet-shards-done/1"


def members_digest(members: Iterable, boxes: Iterable = ()) -> str:
    """A digest of what a shard is made from: its member references and boxes, in any order."""
    digest = hashlib.sha256()
    for text in sorted(map(repr, members)):
        digest.update(text.encode("utf-8", "surrogateescape") + b"\n")
    digest.update(b"boxes\n")
    for text in sorted(map(repr, boxes)):
        digest.update(text.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def record_completed(layout: OutputLayout, result: ShardResult, digest: str) -> None:
    """Record a shard whose tar and index are written (after both are in place)."""
    shard = result.shard
    record = {"format": _FORMAT, "members": digest, "bytes": shard.bytes, "sha256": shard.sha256,
              "samples": shard.samples, "rejects": [dataclasses.asdict(r) for r in result.rejects]}
    with atomic_write(layout.url(layout.done(shard.split, shard.shard_id))) as f:
        f.write(json.dumps(record, sort_keys=True).encode())


def completed_shard(layout: OutputLayout, task: ShardTask, digest: str) -> Optional[ShardResult]:
    """What the writer reported for this shard, when an earlier run of this build completed it
    from the same members and its tar is intact; None when the shard must be made."""
    try:
        with fsspec.open(layout.url(layout.done(task.split, task.shard_id)), "rb") as f:
            record = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    if record.get("format") != _FORMAT or record.get("members") != digest:
        return None
    try:
        result = read_written_shard(task, layout, [Reject(**r) for r in record["rejects"]])
    except RuntimeError:  # the tar or the index is gone
        return None
    if (result.shard.sha256, result.shard.bytes, result.shard.samples) != (
            record["sha256"], record["bytes"], record["samples"]):
        return None
    # The duplicate searches of the earlier run may have flagged the index already: report it as the
    # writer did, before any flag (the searches of this run set the same flags again). Every other
    # column, `phash` included, is read back as the writer wrote it.
    rows = [dataclasses.replace(r, duplicate_of=None, near_duplicate_of=None) for r in result.rows]
    index = dataclasses.replace(result.index, duplicates=0)
    return dataclasses.replace(result, rows=rows, index=index)


def completed_shards(layout: OutputLayout) -> int:
    """How many shards of a version are recorded as completed."""
    fs, path = fsspec.core.url_to_fs(layout.url(DONE_DIR))
    return len(fs.ls(path)) if fs.exists(path) else 0


def remove_completion_records(layout: OutputLayout) -> None:
    """Remove the records of a version whose build finished: it will not be resumed."""
    fs, path = fsspec.core.url_to_fs(layout.url(DONE_DIR))
    if fs.exists(path):
        fs.rm(path, recursive=True)
