"""The progress protocol: small files in a local folder that the build's workers write and the
command line reads, so a progress bar works across worker processes without any Beam API.

    plan-<split>                         "<samples> <shards>": what a split will hold (GroupIntoShards' plan)
    <split>-<shard>-<piece>              "<done> <total>": a heartbeat of the worker processing that piece
    *.tmp                                a file being replaced (written, then renamed over the old one)

Only local builds have a progress folder (OUT/_progress/, removed at the end). This module
imports no other module of the project.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

__all__ = ["Progress", "write_plan", "heartbeat", "read_progress"]


@dataclasses.dataclass(frozen=True)
class Progress:
    done: int  # samples processed so far, over every piece
    total: int  # samples planned, over every split
    shards: int  # shards planned


def _replace(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_plan(folder: str, split: str, samples: int, shards: int) -> None:
    _replace(os.path.join(folder, f"plan-{split}"), f"{samples} {shards}\n")


def heartbeat(folder: Optional[str], split: str, shard_id: int, piece: int) -> Optional[Callable[[int, int], None]]:
    """on_progress(done, total) for the worker processing that piece; None without a folder."""
    if not folder:
        return None
    path = os.path.join(folder, f"{split}-{shard_id:06d}-{piece:05d}")

    def report(done: int, total: int) -> None:
        _replace(path, f"{done} {total}\n")

    return report


def read_progress(folder: str) -> Progress:
    """What the files in the folder say now (a missing folder or a half-written file counts 0)."""
    total = done = shards = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return Progress(0, 0, 0)
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                a, b = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        if name.startswith("plan-"):
            total += a
            shards += b
        else:
            done += a
    return Progress(done, total, shards)
