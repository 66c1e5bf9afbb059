"""What the tool prints about a build: the inputs it found, and the summary of what it wrote."""
from __future__ import annotations

import json
from typing import Callable

import fsspec

from transforms.layout import OutputLayout
from transforms.sources import Discovery

__all__ = ["describe_inputs", "print_summary", "report_build"]

Say = Callable[[str], None]  # prints one line for the user

def describe_inputs(discovery: Discovery, say: Say) -> None:
    """What the build found in SOURCE: warnings, the layout, the archives per split, boxes."""
    for warning in discovery.warnings:
        say(f"warning: {warning}")
    say(f"layout: {discovery.layout}; splits: "
         + ", ".join(f"{a.split} <- {a.name}" for a in discovery.archives))
    if discovery.annotations:
        say("boxes: " + ", ".join(a.name for a in discovery.annotations))
    if discovery.class_matches:  # --classes: how many classes each entry matched
        say("classes: " + ", ".join(f"{entry} matched {n}" for entry, n in discovery.class_matches))


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def print_summary(manifest: dict, wall: float, status: str, say: Say) -> None:
    """The end-of-build summary of a manifest (or of the report a failed build leaves): a table
    of the splits, then one line per fact worth a look."""
    splits = manifest["splits"]
    samples = sum(s["samples"] for s in splits.values())
    say("")
    say(f"{'split':<8}{'read':>10}{'samples':>10}{'rejected':>10}{'dups':>7}{'shards':>8}{'bytes':>15}")
    for name, s in sorted(splits.items(), key=lambda kv: _SPLIT_ORDER.get(kv[0], 9)):
        say(f"{name:<8}{s['read']:>10,}{s['samples']:>10,}{s['rejected']:>10,}{s['duplicates']:>7,}"
             f"{len(s['shards']):>8,}{s['bytes']:>15,}")
    if manifest["rejects_by_reason"]:
        say("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in manifest["rejects_by_reason"].items()))
    say(f"duplicates (same bytes under several keys): {manifest['duplicates']}")
    near = manifest.get("near_duplicates")
    if near:  # None: --near-duplicate-distance off
        pairs = ", ".join(f"{name} {n:,}" for name, n in near["by_split_pair"].items() if n)
        say(f"near-duplicates (perceptual hashes within {near['max_distance']} bits): {near['pairs']:,} pairs"
             + (f" ({pairs})" if pairs else "") + (f", {near['unlisted']:,} more among identical hashes"
                                                   if near["unlisted"] else ""))
        if "train-val" in near["by_split_pair"]:
            say(f"possible train/val leakage: {near['by_split_pair']['train-val']:,} train-val pairs "
                 f"(a val image with a near-copy in train; see {near['path']})")
    if manifest.get("diff"):
        diff = manifest["diff"]
        say(f"changes since {diff['from']}: " + "; ".join(
            f"{name} {d['added']:,} added, {d['removed']:,} removed, {d['changed']:,} changed"
            for name, d in sorted(diff["splits"].items(), key=lambda kv: _SPLIT_ORDER.get(kv[0], 9))))
    boxes = sum(s.get("boxes", 0) for s in splits.values())
    if boxes or manifest.get("annotation_rejects") or manifest.get("orphan_annotations"):
        say(f"boxes: {boxes} on {sum(s.get('with_boxes', 0) for s in splits.values())} images; "
             f"annotation rejects: {manifest.get('annotation_rejects_by_reason') or 0}; "
             f"orphan annotations: {manifest.get('orphan_annotations', 0)}; "
             f"val label disagreements: {splits.get('val', {}).get('label_disagreements', 0)}")
    dropped = manifest.get("dropped_classes") or []
    if dropped:
        shown = ", ".join(f"{c['wnid']} ({c['images']})" for c in dropped[:5])
        say(f"classes left out by --min-per-class: {len(dropped):,} with {sum(c['images'] for c in dropped):,} "
             f"images: {shown}{', ...' if len(dropped) > 5 else ''} (all in the manifest's dropped_classes)")
    for damaged in manifest.get("damaged_archives", ()):
        say(f"damaged archive, read as far as it goes: {damaged['source']}: {damaged['detail']} "
             f"(members located in the first {damaged['readable_bytes']:,} of {damaged['bytes']:,} bytes)")
    say(f"wall time {wall:.1f} s, {samples / wall if wall else 0:.1f} images/s")
    if status != "ok":
        say(f"FAILED: {manifest.get('error', status)}")


def report_build(layout: OutputLayout, wall: float, say: Say) -> int:
    """Print the summary of what the build wrote into a version; the build's exit status."""
    fs, _ = fsspec.core.url_to_fs(layout.root)
    for path, status in ((layout.manifest, "ok"), (layout.failed_report, "too_many_rejects")):
        if fs.exists(fsspec.core.url_to_fs(path)[1]):
            with fsspec.open(path, "r") as f:
                manifest = json.load(f)
            print_summary(manifest, wall, status, say)
            if status == "ok":
                say(f"\nmanifest: {path}")
            else:
                say(f"\nrejects: {', '.join(layout.url(r) for r in manifest['rejects'])}")
            return 0 if status == "ok" else 1
    say("FAILED: the pipeline finished without writing a manifest")
    return 1
