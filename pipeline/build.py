"""The build graph: one labelled step per line, the element shape between steps.

Image bytes and index rows exist only inside WriteShards; everything that crosses a shuffle is
small: MemberRefs in compressed batches (~25 B per member), pieces of member references, PieceResults (a path
and counts), the index files' places, rejects, facts. The duplicate and near-duplicate searches read the
source digests and perceptual hashes from the index files. That keeps the local runner's memory low however
large the dataset (see README "Design" and ARCHITECTURE.md).
"""
from __future__ import annotations

import datetime
from typing import Optional

import apache_beam as beam

import pipeline
from pipeline.incremental import Previous
from pipeline.inputs import Inputs
from pipeline.options import BuildConfig
from transforms.archives import IndexArchives
from transforms.boxes import ReadAnnotations
from transforms.header_cache import HeaderCache, header_cache_root
from transforms.index import FlagDuplicates, WriteRejects
from transforms.manifest import WriteManifest
from transforms.near_duplicate_search import FindNearDuplicates
from transforms.progress import write_plan
from transforms.sharding import GroupIntoShards
from transforms.write_shards import WriteShards

__all__ = ["manifest_header", "build_graph"]

# The parts the duplicate and near-duplicate searches are shared out in on runners that scale out
# (the local runner: one a worker).
SEARCH_PARTS = 8


def manifest_header(config: BuildConfig, inputs: Inputs, codecs: dict, version: Optional[dict] = None) -> dict:
    """The manifest's fields that are known before the build runs. `version`: the build id, the
    previous version and the fingerprint (pipeline/versions.py, pipeline/fingerprint.py)."""
    discovery = inputs.discovery
    return {
        **(version or {}),
        "tool": {"name": "imagenet-shards", "version": pipeline.__version__},
        "codecs": codecs,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "layout": discovery.layout,
        "config": config.for_manifest(),
        "inputs": list(discovery.inputs),
        **discovery.manifest_classes(),  # "classes" (and "fine_classes" under --label-level), with WordNet facts
    }


def build_graph(p: beam.Pipeline, config: BuildConfig, inputs: Inputs, codecs: dict, out: str,
                version: Optional[dict] = None, progress_dir: Optional[str] = None,
                local_workers: Optional[int] = None, previous: Optional[Previous] = None) -> None:
    """out: the folder the build writes (its version folder, see pipeline/versions.py); version:
    the manifest's fields of the version (see manifest_header). local_workers: the local runner's
    worker count, which the shards are shared out over (see transforms/segments.py); None for
    runners that scale out (shards cut in small pieces). previous: the version LATEST names, in a
    rebuild (pipeline/incremental.py)."""
    discovery = inputs.discovery

    # -> members: to_shuffle((MemberRef, ...)) batches, one per class tar, class folder or flat tar;
    #    rejects: Reject (stage "index"); read, left_out: SplitCount; damaged: DamagedArchive;
    #    dropped_classes: ClassCount (--min-per-class)
    indexed = p | "IndexArchives" >> IndexArchives(discovery.archives, discovery.labeler(),
                                                     discovery.holdout_per_class, config.seed,
                                                     config.accept_damaged_archives, discovery.class_filter(),
                                                     HeaderCache(header_cache_root(config.out), inputs.fingerprints))

    # -> boxes: BoxesRef; rejects: Reject (stage "annotation": hostile or broken XML)
    annotations = p | "ReadAnnotations" >> ReadAnnotations(discovery.annotations)

    # -> tasks: ShardMembers(task, members, boxes) for every shard of every split;
    #    plan: (split, SplitPlan); sizes: ((split, shard_id), members); orphans: SplitCount
    grouped = {"members": indexed["members"], "boxes": annotations["boxes"]} | "GroupIntoShards" >> GroupIntoShards(
        config.seed, config.shard_size, config.resize.mode, config.resize.size, config.quality)
    if progress_dir:
        _ = grouped["plan"] | "ReportPlan" >> beam.MapTuple(
            lambda split, plan: write_plan(progress_dir, split, plan.samples, plan.shards))

    # -> shards: ShardInfo; index: IndexFile (the file holds each sample's sha256 and phash);
    #    rejects: Reject (stages "shard" and "image"); orphans: SplitCount
    written = {"tasks": grouped["tasks"], "sizes": grouped["sizes"]} | "WriteShards" >> WriteShards(
        config.image_options(), out, config.seed, codecs, progress_dir, discovery.loc_blacklist, local_workers,
        previous.for_shards if previous else None)

    # -> file: NearDuplicatesFile (near-duplicates.parquet); links: ((split, shard_id), near_duplicate_of links);
    #    the hashes read from the index files, the search shared out over the workers, one part each
    links = {"index": written["index"]}
    near = None
    if config.near_duplicate_distance is not None:
        near = written["index"] | "FindNearDuplicates" >> FindNearDuplicates(
            out, config.near_duplicate_distance, local_workers or SEARCH_PARTS)
        links["near_links"] = near["links"]

    # -> ShardDuplicates, for each index file that holds duplicates or near-duplicates, after it is rewritten;
    #    the source digests read from the index files, the search shared out over the workers, one part each
    duplicates = links | "FlagDuplicates" >> FlagDuplicates(out, local_workers or SEARCH_PARTS)

    # -> RejectsFile: one Parquet per split, of samples and of annotation files
    rejects_files = (indexed["rejects"], written["rejects"]) | "AllRejects" >> beam.Flatten() | (
        "WriteRejects" >> WriteRejects(out))
    annotation_rejects_files = annotations["rejects"] | "WriteAnnotationRejects" >> WriteRejects(out, "annotations")

    # -> SplitCount: annotations whose image is in no shard
    orphans = (grouped["orphans"], written["orphans"]) | "AllOrphans" >> beam.Flatten()

    # -> "ok" | "too_many_rejects", after manifest.json (or build-failed.json) is written
    facts = {"read": indexed["read"], "left_out": indexed["left_out"], "shard": written["shards"],
             "index": written["index"], "duplicates": duplicates, "rejects": rejects_files,
             "annotation_rejects": annotation_rejects_files, "orphans": orphans, "damaged": indexed["damaged"],
             "dropped_classes": indexed["dropped_classes"]}
    if near is not None:
        facts["near_duplicates"] = near["file"]
    _ = facts | "WriteManifest" >> WriteManifest(out, manifest_header(config, inputs, codecs, version),
                                                 config.max_reject_rate, inputs.fingerprints,
                                                 previous.for_manifest if previous else None)
