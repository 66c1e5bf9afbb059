"""A rebuild against the version LATEST names: what it can take from there, and what changed.

When the previous version's images were made with the options and the code that decide an
image's bytes (the tool's and codecs' versions, the resize, quality, re-encoding, pixel limit and
EXIF transpose), a rebuild takes every image whose source bytes did not change from it instead of
decoding it again (transforms/previous.py): the driver writes the lookup of its samples into the
new version's scratch folder `_previous/`, which the shard writers query. Whatever the options,
the new manifest's `diff` says what changed since the previous version.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Optional

import fsspec
from apache_beam.metrics.metric import MetricsFilter

from transforms.layout import OutputLayout
from transforms.previous import write_lookup
from transforms.storage import is_local

__all__ = ["IMAGE_OPTIONS", "PREVIOUS_DIR", "Previous", "reuses_images", "prepare_previous", "reused_images"]

# The options (BuildConfig.for_manifest's names) that decide an image's bytes and facts.
IMAGE_OPTIONS = ("resize", "quality", "reencode", "max_pixels", "exif_transpose")
PREVIOUS_DIR = "_previous"  # scratch of the new version, removed when the build ends
LOOKUP = f"{PREVIOUS_DIR}/lookup.sqlite"


@dataclasses.dataclass(frozen=True)
class Previous:
    """The previous version, as the graph needs it."""

    relative: str  # "versions/<build id>"
    root: str  # its folder (path or URL)
    manifest: dict
    lookup: Optional[str]  # the lookup of its samples (path or URL), None when no image can be reused
    samples: int  # how many samples the lookup holds

    @property
    def for_shards(self) -> Optional[tuple[str, str]]:
        """WriteShards' `previous`: (lookup, previous root), or None."""
        return (self.lookup, self.root) if self.lookup else None

    @property
    def for_manifest(self) -> tuple[str, str]:
        """WriteManifest's `previous`: (previous root, its manifest as JSON text)."""
        return self.root, json.dumps(self.manifest)


def reuses_images(previous: dict, fingerprint: dict) -> bool:
    """Whether a version's images are what this build's kernel would make of the same sources."""
    old = previous.get("fingerprint") or {}
    same_options = all(old.get("options", {}).get(name) == fingerprint["options"].get(name)
                       for name in IMAGE_OPTIONS)
    return same_options and old.get("versions") == fingerprint["versions"]


def prepare_previous(dataset_root: str, relative: Optional[str], manifest: Optional[dict], fingerprint: dict,
                     version: OutputLayout) -> Optional[Previous]:
    """The previous version (`relative`, with its `manifest`) of a rebuild into `version`, with the
    lookup of its samples written when its images can be reused; None for a first build."""
    if relative is None or manifest is None:
        return None
    root = f"{dataset_root.rstrip('/')}/{relative}"
    if not reuses_images(manifest, fingerprint):
        return Previous(relative, root, manifest, None, 0)
    target = version.url(LOOKUP)
    if is_local(target):
        path = fsspec.core.url_to_fs(target)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stopped build's: written again
        samples = write_lookup(root, manifest, path)
    else:  # written here, then uploaded once; each worker downloads it once
        with tempfile.TemporaryDirectory(prefix="imagenet-shards-") as folder:
            path = os.path.join(folder, "lookup.sqlite")
            samples = write_lookup(root, manifest, path)
            fs, remote = fsspec.core.url_to_fs(target)
            fs.put_file(path, remote)
    return Previous(relative, root, manifest, target, samples)


def reused_images(result) -> int:
    """How many images the shard writers took from the previous version (a Beam counter of the
    finished pipeline `result`)."""
    counters = result.metrics().query(MetricsFilter().with_name("reused_from_previous_version"))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)
