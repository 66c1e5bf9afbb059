"""The files that common readers expect beside the shards, made from what the build already knows.

Contracts (pure functions, except write_reader_files):
  dali_sample_line(members, offsets) -> one sample's line of a DALI index: `<ext> <offset> <size>
      <name>` for each of its members, joined by spaces
  dali_index(lines) -> the bytes that DALI's own `wds2idx` tool writes for a tar of those samples:
      `v1.2 <samples>`, then one line a sample (a shard writer collects the lines as it writes)
  timm_info(manifest, prefix) -> timm's _info.json: `splits.<name>` = {name, num_samples, filenames,
      shard_lengths}, the filenames relative to the folder the file is in (`prefix` puts them
      under a version when the file is at the dataset root)
  wids_index(manifest, split) -> the wids shard index of a split (`wids-shard-index-v1`)
  dataset_card(manifest) -> a Hugging Face dataset card (README.md): its splits' shards and the
      types of each sample's members, so that `datasets.load_dataset(<version folder>)` reads it
  write_reader_files(layout, manifest) -> writes all three into a version, just before its
      manifest; returns their paths for the manifest

DALI's index gives, for each sample, where each member's data starts in the tar (not its header)
and how long it is; wds2idx groups consecutive members whose names share the part before the
first dot. The writer knows these offsets as it writes, so the index costs no read of the tar.
A tar without samples has no DALI index: wds2idx refuses an empty tar, and DALI refuses an index
of no samples.

Hugging Face `datasets` infers the type of each .json field from the first five samples it reads,
and an empty list (no boxes) has no element type; the card declares every type instead, from
INDEX_SCHEMA, so that a build loads whatever its first samples hold.

The wids shard index lists each shard's URL (relative to the index file), sample count and size.
It has no md5sum: that would hash every byte of every shard a second time, and the manifest
already has each shard's sha256.
"""
from __future__ import annotations

import json
from typing import Sequence

import pyarrow as pa

from transforms.layout import DATASET_CARD_NAME, TIMM_INFO_NAME, OutputLayout
from transforms.schema import DATASET_COLUMNS, INDEX_SCHEMA
from transforms.storage import atomic_write

__all__ = ["DALI_INDEX_VERSION", "WIDS_KIND", "dali_sample_line", "dali_index", "timm_info", "wids_index",
           "dataset_card", "write_reader_files"]

DALI_INDEX_VERSION = "v1.2"
WIDS_KIND = "wids-shard-index-v1"
# timm's train.py reads the splits "train" and "validation" unless told otherwise: the "val" split is
# listed under both names.
TIMM_ALIASES = {"validation": "val"}


def dali_sample_line(members: Sequence[tuple[str, bytes]], offsets: Sequence[int]) -> str:
    """One sample's line of a DALI index. members: (name, data) in tar order; offsets: where each
    data starts in the tar. The extension is what follows the name's first dot, as wds2idx takes it."""
    return " ".join(f"{name.partition('.')[2]} {offset} {len(data)} {name}"
                    for (name, data), offset in zip(members, offsets))


def dali_index(lines: Sequence[str]) -> bytes:
    """The DALI index of a tar whose samples have these lines (dali_sample_line), in tar order."""
    return "".join([f"{DALI_INDEX_VERSION} {len(lines)}\n", *(line + "\n" for line in lines)]).encode()


def _timm_split(name: str, split: dict, prefix: str) -> dict:
    return {"name": name, "num_samples": split["samples"],
            "filenames": [prefix + s["path"] for s in split["shards"]],
            "shard_lengths": [s["samples"] for s in split["shards"]]}


def timm_info(manifest: dict, prefix: str = "") -> dict:
    """timm's _info.json for a version's manifest; `prefix` (e.g. "versions/<build id>/") goes
    before every filename, for the copy at the dataset root."""
    splits = {name: _timm_split(name, split, prefix) for name, split in manifest["splits"].items()}
    for alias, name in TIMM_ALIASES.items():
        if name in splits and alias not in splits:
            splits[alias] = _timm_split(alias, manifest["splits"][name], prefix)
    return {"name": "imagenet-shards", "num_classes": len(manifest.get("classes", [])), "splits": splits}


def wids_index(manifest: dict, split: str) -> dict:
    """The wids shard index of one split; shard URLs relative to the version folder, where it lies."""
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": split,
            "shardlist": [{"url": s["path"], "nsamples": s["samples"], "filesize": s["bytes"]}
                          for s in manifest["splits"][split]["shards"]]}


# Arrow's names of the index's number types -> Hugging Face's.
_HF_DTYPES = {"float": "float32", "double": "float64"}


def _hf_type(arrow_type: pa.DataType):
    """A Hugging Face feature type, as a dataset card's YAML writes it, of an Arrow type."""
    if pa.types.is_list(arrow_type):
        return {"list": _hf_type(arrow_type.value_type)}
    return str(_HF_DTYPES.get(str(arrow_type), str(arrow_type)))


def _hf_feature(name: str, hf_type) -> dict:
    return {"name": name, **(hf_type if isinstance(hf_type, dict) else {"dtype": hf_type})}


def dataset_card(manifest: dict) -> str:
    """A Hugging Face dataset card for a version: YAML front matter (written as JSON, which YAML
    reads) with each split's shards and the types of a sample's .jpg, .cls and .json."""
    json_fields = [_hf_feature(f.name, _hf_type(f.type)) for f in INDEX_SCHEMA if f.name not in DATASET_COLUMNS]
    json_fields.append(_hf_feature("boxes_px", {"list": {"list": "float64"}}))  # see shard_writer.sample_json
    features = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
                {"name": "jpg", "dtype": "image"}, {"name": "cls", "dtype": "int64"},
                {"name": "json", "struct": json_fields}]
    splits = sorted(manifest["splits"])
    front = {"configs": [{"config_name": "default",
                          "data_files": [{"split": s, "path": f"{s}/*.tar"} for s in splits]}],
             "dataset_info": {"features": features}}
    counts = ", ".join(f"{manifest['splits'][s]['samples']:,} {s}" for s in splits)
    return (f"---\n{json.dumps(front, indent=1)}\n---\n\n# ImageNet in WebDataset shards\n\n"
            f"Written by imagenet-shards: {counts} samples. `manifest.json` describes every file; "
            "`datasets.load_dataset(\"<this folder>\")` reads the shards with the types declared above.\n")


def _write_json(url: str, document: dict) -> None:
    with atomic_write(url) as f:
        f.write(json.dumps(document, indent=1).encode() + b"\n")


def write_reader_files(layout: OutputLayout, manifest: dict) -> dict:
    """Write timm's _info.json, each split's wids index and the dataset card into the version;
    return {"timm": path, "wids": {split: path}, "huggingface": path} (relative to the manifest)."""
    _write_json(layout.url(TIMM_INFO_NAME), timm_info(manifest))
    wids = {split: layout.wids_index(split) for split in sorted(manifest["splits"])}
    for split, relative in wids.items():
        _write_json(layout.url(relative), wids_index(manifest, split))
    with atomic_write(layout.url(DATASET_CARD_NAME)) as f:
        f.write(dataset_card(manifest).encode())
    return {"timm": TIMM_INFO_NAME, "wids": wids, "huggingface": DATASET_CARD_NAME}

