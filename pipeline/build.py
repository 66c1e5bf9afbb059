"""The build graph: one labelled step a line, the element shape between steps.

Image bytes and index rows exist only inside WriteShards (pieces of 128 members processed on
any worker, staged in scratch files, then each shard's pieces assembled into its tar and
Parquet index); everything that crosses a shuffle is small: MemberRefs in batches (~100 B a
member), piece results (a path and counts), (sha256, key) records in batches for the
duplicate search, rejects, file facts. That keeps the local runner's memory low however large the dataset
(see README "Design").
"""
from __future__ import annotations

import collections
import datetime
from typing import Optional

import apache_beam as beam

import pipeline
from pipeline.options import BuildConfig
from transforms.archives import IndexArchives
from transforms.boxes import ReadAnnotations
from transforms.index import FlagDuplicates, WriteRejects
from transforms.manifest import WriteManifest
from transforms.sharding import GroupIntoShards
from transforms.sources import Discovery
from transforms.write_shards import WriteShards

__all__ = ["manifest_header", "build_graph"]


def manifest_header(config: BuildConfig, discovery: Discovery, codecs: dict) -> dict:
    return {
        "tool": {"name": "imagenet-shards", "version": pipeline.__version__},
        "codecs": codecs,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "layout": discovery.layout,
        "config": config.for_manifest(),
        "inputs": list(discovery.inputs),
        "classes": [{"label": c.label, "wnid": c.wnid, "name": c.name} for c in discovery.classes],
    }


def _write_plan(progress_dir: str):
    def write(split: str, plan) -> None:
        import os

        with open(os.path.join(progress_dir, f"plan-{split}"), "w") as f:
            f.write(f"{plan[0]} {plan[1]}\n")
    return write


def build_graph(p: beam.Pipeline, config: BuildConfig, discovery: Discovery, codecs: dict,
                progress_dir: Optional[str] = None, local_workers: Optional[int] = None) -> None:
    """local_workers: the local runner's worker count, which the shards are shared out over (see
    transforms/segments.py); None for runners that scale out (shards cut in small pieces)."""
    out = config.out

    # -> members: batches (MemberRef(key, split, archive, offset, size, label, wnid, source), ...), one a
    #    class tar or flat tar; rejects: Reject
    indexed = p | "IndexArchives" >> IndexArchives(discovery.archives, discovery.labeler(),
                                                     discovery.holdout_per_class, config.seed)
    members, index_rejects = indexed["members"], indexed["rejects"]

    # -> boxes: BoxesRef(key, split, boxes, names); rejects: AnnotationReject (hostile or broken XML)
    annotations = p | "ReadAnnotations" >> ReadAnnotations(discovery.annotations)

    # -> (ShardTask(split, shard_id), [MemberRef, ...], [BoxesRef, ...]), every shard id of every split
    grouping = GroupIntoShards(config.seed, config.shard_size, config.resize.mode, config.resize.size,
                               config.quality)
    tasks = {"members": members, "boxes": annotations["boxes"]} | "GroupIntoShards" >> grouping
    if progress_dir:
        _ = grouping.plan | "ReportPlan" >> beam.MapTuple(_write_plan(progress_dir))

    # -> shards: ShardInfo; index: IndexFile; hashes: (bucket, ((sha256, key, split, shard_id), ...));
    #    rejects: Reject; orphans: (split, n). Inside: cut into pieces -> process pieces -> assemble shards
    written = tasks | "WriteShards" >> WriteShards(config.image_options(), out, config.seed, codecs, progress_dir,
                                                   discovery.loc_blacklist, local_workers, grouping.sizes)

    # -> (split, shard_id, n): the index files holding duplicates, rewritten with duplicate_of set
    duplicates = written["hashes"] | "FlagDuplicates" >> FlagDuplicates(out)

    # -> RejectsFile (one Parquet per split)
    rejects = (index_rejects, written["rejects"]) | "AllRejects" >> beam.Flatten()
    rejects_files = rejects | "WriteRejects" >> WriteRejects(out)
    annotation_rejects_files = annotations["rejects"] | "WriteAnnotationRejects" >> WriteRejects(out, "annotations")
    orphans = (grouping.orphans, written["orphans"]) | "AllOrphans" >> beam.Flatten()

    # -> (split, members read): every non-directory member, kept or rejected
    read = (
        (members | "SplitsOfBatch" >> beam.FlatMap(lambda batch: collections.Counter(r.split for r in batch).items()),
         index_rejects | "SplitOfReject" >> beam.Map(lambda reject: (reject.split, 1)))
        | "AllRead" >> beam.Flatten()
        | "CountRead" >> beam.CombinePerKey(sum)
    )

    # -> "ok" | "too_many_rejects", after manifest.json (or build-failed.json) is written
    # -> (split, members left out by --classes)
    left_out = indexed["left_out"] | "SplitOfLeftOut" >> beam.Map(lambda item: item.split) | (
        "CountLeftOut" >> beam.combiners.Count.PerElement())

    facts = {"read": read, "left_out": left_out, "shard": written["shards"], "index": written["index"],
             "duplicates": duplicates, "rejects": rejects_files,
             "annotation_rejects": annotation_rejects_files, "orphans": orphans}
    _ = facts | (
        "WriteManifest" >> WriteManifest(out, manifest_header(config, discovery, codecs), config.max_reject_rate))
