"""The build's options: the tool's own, and the Beam pipeline options passed through.

Anything the tool does not know goes to Beam unchanged (e.g. `--runner DataflowRunner
--project p --region r --temp_location gs://...`); an argument neither knows is an
error, never silently ignored. With no --runner, the build runs locally on all cores:
Beam's in-process FnApiRunner in multi-processing mode, which never touches the network
(the DirectRunner would first try to download the Prism runner binary).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.runners import dataflow_problems, runner_name, watch_workers, workers_elsewhere
from transforms.image import ImageOptions, ResizeSpec
from transforms.near_duplicates import DEFAULT_MAX_DISTANCE
from transforms.sizes import parse_byte_size

__all__ = ["BuildConfig", "UsageError", "add_build_arguments", "config_from_args", "beam_options", "cpu_count",
           "is_local_runner", "local_workers"]

DEFAULT_SHARD_SIZE = "512MB"
PIL_MAX_IMAGE_PIXELS = 89_478_485
# The largest --near-duplicate-distance: beyond it, pairs of unrelated photographs found by chance
# grow into the hundreds of thousands for ImageNet (34,000 already at 10; see README "Near-duplicates").
MAX_NEAR_DUPLICATE_DISTANCE = 12


class UsageError(Exception):
    """Bad command-line usage or unusable input (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    source: str
    out: str
    layout: Optional[str]
    boxes: tuple
    splits: tuple
    classes_file: Optional[str]
    relabel: bool
    label_map: Optional[str]
    val_per_class: int
    exif_transpose: bool
    resize: ResizeSpec
    quality: int
    reencode: str
    shard_size: int
    seed: int
    max_pixels: int
    max_reject_rate: float
    verify_inputs: bool
    overwrite: bool
    progress: bool
    accept_damaged_archives: bool = False
    label_level: Optional[str] = None  # a file of coarse class WNIDs (--label-level)
    label_level_on_several: str = "error"
    min_per_class: int = 0
    force: bool = False  # build even when the version LATEST names has the same fingerprint
    keep: int = 3  # finished versions kept in OUT after a publish (LATEST's among them)
    # pairs of samples whose perceptual hashes differ in at most this many bits; None: no search
    near_duplicate_distance: Optional[int] = DEFAULT_MAX_DISTANCE

    def image_options(self) -> ImageOptions:
        return ImageOptions(resize=self.resize, quality=self.quality, reencode=self.reencode,
                            max_pixels=self.max_pixels, exif_transpose=self.exif_transpose)

    def for_manifest(self) -> dict:
        """The options that decide the output (recorded in the manifest)."""
        return {
            "resize": str(self.resize),
            "quality": self.quality,
            "reencode": self.reencode,
            "shard_size": self.shard_size,
            "seed": self.seed,
            "max_pixels": self.max_pixels,
            "max_reject_rate": self.max_reject_rate,
            "splits": list(self.splits),
            "classes_file": self.classes_file,
            "relabel": self.relabel,
            "label_map": self.label_map,
            "val_per_class": self.val_per_class,
            "exif_transpose": self.exif_transpose,
            "accept_damaged_archives": self.accept_damaged_archives,
            "label_level": self.label_level,
            "label_level_on_several": self.label_level_on_several,
            "min_per_class": self.min_per_class,
            "near_duplicate_distance": self.near_duplicate_distance,
        }


def _resize(text: str) -> ResizeSpec:
    try:
        return ResizeSpec.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _byte_size(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _quality(text: str) -> int:
    q = int(text)
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"quality must be 1..100, got {q}")
    return q


def _rate(text: str) -> float:
    r = float(text)
    if not 0 <= r <= 1:
        raise argparse.ArgumentTypeError(f"a rate is between 0 and 1 (0.05 = 5%), got {text}")
    return r


def _near_duplicate_distance(text: str) -> Optional[int]:
    if text.strip().lower() == "off":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'off'") from None
    if not 0 <= value <= MAX_NEAR_DUPLICATE_DISTANCE:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_NEAR_DUPLICATE_DISTANCE} (or 'off'), got {value}")
    return value


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def add_build_arguments(parser: argparse.ArgumentParser, with_source: bool = True) -> list[str]:
    """Add the build's options to `parser`; return their option strings (for suggestions)."""
    added: list[str] = []

    def option(*names, **kwargs) -> None:
        added.extend(parser.add_argument(*names, **kwargs).option_strings)

    if with_source:
        option("source", metavar="SOURCE",
               help="folder (local path or fsspec URL) holding the ILSVRC2012 archives")
        option("--out", required=True, metavar="OUT", help="output folder (local path or fsspec URL)")
        option("--boxes", action="append", default=[], metavar="PATH",
               help="bounding-box XML: an archive (.tar, .tar.gz) or folder, local or remote; "
                    "repeatable (default: the bbox archives found in SOURCE)")
        option("--splits", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
               default=(), metavar="LIST", help="only these splits, e.g. train,val (default: all found)")
        option("--classes", dest="classes_file", metavar="FILE|LIST", default=None,
               help="only these classes: a file with one entry per line (e.g. ImageNet-100), or entries "
                    "separated by commas; an entry is a WNID (class name), or a WNID and a plus sign for "
                    "every class under that WordNet synset (n02084071+: the dogs)")
        option("--relabel", action="store_true",
               help="with --classes or --min-per-class: labels 0..K-1 in sorted order of the classes kept "
                    "(default: the full index)")
        option("--label-level", metavar="FILE", default=None,
               help="coarse labels: a file of WNIDs, one per line, each a coarse class (label = line index); "
                    "every sample takes the label of the one listed class it is or lies under, and keeps its "
                    "own in the index (fine_label, fine_wnid)")
        option("--label-level-on-several", choices=("error", "deepest", "first"), default="error",
               help="with --label-level, a class under several listed classes: error (default), deepest (the "
                    "nearest one), or first (the first one in the file)")
        option("--min-per-class", type=_positive_int, default=0, metavar="N",
               help="leave out the classes with fewer than N images, counted over the splits built "
                    "(e.g. 500 for ImageNet-21K-P); the manifest lists them in dropped_classes")
        option("--label-map", metavar="FILE", default=None,
               help="labels = line index of the class in FILE (one WNID per line; ImageNet-21k orders)")
        option("--val-per-class", type=int, default=0, metavar="N",
               help="hold out N train images per class as val, chosen by the seeded key hash "
                    "(datasets without a val split, e.g. ImageNet-21k)")
        option("--layout", choices=("ilsvrc2012", "kaggle", "imagefolder", "in21k"), default=None,
               help="how SOURCE is laid out (default: detected)")
    option("--resize", type=_resize, default=ResizeSpec.parse("longer:512"), metavar="SPEC",
           help="longer:N | shorter:N | none (default longer:512); never upscales")
    option("--quality", type=_quality, default=90, help="JPEG quality of re-encoded images (default 90)")
    option("--reencode", choices=("auto", "always"), default="auto",
           help="auto: keep baseline RGB JPEGs that need no resize byte for byte (default); "
                "always: re-encode every image")
    option("--shard-size", type=_byte_size, default=parse_byte_size(DEFAULT_SHARD_SIZE), metavar="SIZE",
           help="target bytes per shard (default 512MB; KB/MB/GB = 1000^n, KiB/MiB/GiB = 1024^n)")
    option("--seed", type=int, default=0, help="seed of the key hash that spreads samples over shards")
    option("--max-pixels", type=_positive_int, default=PIL_MAX_IMAGE_PIXELS,
           help=f"reject images with more pixels (default {PIL_MAX_IMAGE_PIXELS:,}, PIL's limit)")
    option("--max-reject-rate", type=_rate, default=0.05,
           help="fail (exit 1) when more than this fraction of samples is rejected (default 0.05)")
    option("--exif-transpose", action="store_true",
           help="apply the EXIF orientation to the pixels (and boxes) before resizing; "
                "default: pixels as stored, as torchvision and TFDS read ImageNet")
    option("--verify-inputs", action="store_true",
           help="check the official archives against their published MD5 sums first (reads every byte)")
    option("--overwrite", action="store_true",
           help="replace an unversioned build of an earlier release in OUT (versions need no option)")
    option("--force", action="store_true",
           help="build even when OUT's current version was built from the same inputs and options")
    option("--keep", type=_at_least_one, default=3, metavar="K",
           help="finished versions to keep in OUT after publishing a new one, the new one included (default 3)")
    option("--accept-damaged-archives", action="store_true",
           help="build from what can be read of a tar that is cut off or has a broken header, and list it "
                "in the manifest (default: such an archive fails the build)")
    option("--near-duplicate-distance", type=_near_duplicate_distance, default=DEFAULT_MAX_DISTANCE, metavar="D",
           help=f"report pairs of samples whose perceptual hashes differ in at most D of 64 bits (0.."
                f"{MAX_NEAR_DUPLICATE_DISTANCE}, default {DEFAULT_MAX_DISTANCE}; 0: the same hash): "
                "near-duplicates.parquet and the index's near_duplicate_of; 'off': no search")
    option("--no-progress", dest="progress", action="store_false", help="no progress bar")
    option("--verbose", action="store_true",
           help="show Beam's and its workers' messages on the terminal (default: they go to the log file)")
    option("--log-file", metavar="PATH", default=None,
           help="where Beam's messages and the traceback of a failure go (default: a new file under "
                "$TMPDIR/imagenet-shards-logs/)")
    return added


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        source=args.source, out=args.out, layout=getattr(args, "layout", None),
        boxes=tuple(getattr(args, "boxes", ())), splits=tuple(getattr(args, "splits", ())),
        classes_file=getattr(args, "classes_file", None), relabel=getattr(args, "relabel", False),
        label_map=getattr(args, "label_map", None), val_per_class=getattr(args, "val_per_class", 0),
        exif_transpose=args.exif_transpose, resize=args.resize, quality=args.quality, reencode=args.reencode,
        shard_size=args.shard_size, seed=args.seed, max_pixels=args.max_pixels,
        max_reject_rate=args.max_reject_rate, verify_inputs=args.verify_inputs, overwrite=args.overwrite,
        progress=args.progress, accept_damaged_archives=args.accept_damaged_archives,
        label_level=getattr(args, "label_level", None),
        label_level_on_several=getattr(args, "label_level_on_several", "error"),
        min_per_class=getattr(args, "min_per_class", 0),
        force=args.force, keep=args.keep,
        near_duplicate_distance=getattr(args, "near_duplicate_distance", DEFAULT_MAX_DISTANCE),
    )


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (the version LATEST names is always kept)")
    return value


def cpu_count() -> int:
    """The cores this process may run on (the local runner's default worker count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Where Beam's parser puts arguments that are not options (through get_all_options' public
# add_extra_args_fn hook): Beam itself would drop them silently.
_STRAY = "imagenet_shards_stray_arguments"


def _collect_stray_arguments(parser) -> None:
    parser.add_argument(_STRAY, nargs="*", default=[])


def _unknown_arguments(beam_args: list[str]) -> list[str]:
    """The arguments in beam_args that no Beam pipeline option takes, as the user wrote them, in
    their order; a value that follows an unknown option is given with it ("--shard-sise 1MB")."""
    known = PipelineOptions([]).get_all_options(add_extra_args_fn=_collect_stray_arguments)
    parsed = PipelineOptions(beam_args).get_all_options(add_extra_args_fn=_collect_stray_arguments,
                                                        retain_unknown_options=True)
    unknown_names = {name for name in parsed if name not in known}
    strays = list(parsed[_STRAY])
    unknown = []
    for i, arg in enumerate(beam_args):
        # Beam names an option's value by the option with its dashes made underscores
        if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0].replace("-", "_") in unknown_names:
            value = beam_args[i + 1] if i + 1 < len(beam_args) and "=" not in arg else None
            if value is not None and value in strays:
                strays.remove(value)
                arg = f"{arg} {value}"
            unknown.append(arg)
    return unknown + strays


def _suggestion(arg: str, tool_options: Sequence[str], beam_names: Sequence[str]) -> str:
    """The option most like a misspelled one: the tool's own first, then Beam's."""
    if not arg.startswith("-"):
        return ""
    name = arg.split()[0].split("=", 1)[0]
    close = difflib.get_close_matches(name, tool_options, n=1, cutoff=0.7) or difflib.get_close_matches(
        name, beam_names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def beam_options(beam_args: list[str], tool_options: Sequence[str] = (), source: Optional[str] = None,
                 out: Optional[str] = None) -> PipelineOptions:
    """PipelineOptions from the arguments the tool did not take; local defaults when no --runner.

    Raises UsageError for an argument Beam does not know either (a typo), with a suggestion taken
    from the tool's own options (`tool_options`) first, then from Beam's, and for the options that
    the runner lacks or has wrong (Dataflow's: pipeline/runners.py), one line each. `source` and
    `out`: the build's SOURCE and OUT, which some runners cannot reach (Dataflow: a local path).
    Bounds the in-process runner's wait for a worker pool's workers (runners.watch_workers).
    """
    unknown = _unknown_arguments(beam_args)
    if unknown:
        beam_names = ["--" + name for name in PipelineOptions([]).get_all_options()]
        raise UsageError("unrecognised arguments: "
                         + ", ".join(arg + _suggestion(arg, tool_options, beam_names) for arg in unknown))
    args = list(beam_args)

    def given(name: str) -> bool:
        return any(a == name or a.startswith(name + "=") for a in beam_args)

    if not PipelineOptions(beam_args).view_as(StandardOptions).runner:
        # Beam's in-process runner on all cores. The DirectRunner would first try to download the
        # Prism runner binary from the internet.
        args.append("--runner=FnApiRunner")
        if not given("--direct_running_mode"):
            args.append("--direct_running_mode=multi_processing")
        if not given("--direct_num_workers"):
            args.append(f"--direct_num_workers={cpu_count()}")
    if not given("--default_sdk_harness_log_level"):
        args.append("--default_sdk_harness_log_level=WARNING")
    options = PipelineOptions(args)
    problems = dataflow_problems(options, source, out)
    if problems:
        raise UsageError("\n".join(problems))
    watch_workers(options)
    return options


def is_local_runner(options: PipelineOptions) -> bool:
    """Whether the workers share the driver's disk and environment: Beam's local runner, with its
    own worker processes (not a worker pool's, nor containers: see pipeline/runners.py)."""
    return runner_name(options) in StandardOptions.LOCAL_RUNNERS and not workers_elsewhere(options)


def local_workers(options: PipelineOptions) -> Optional[int]:
    """The local runner's worker count, which WriteShards shares the work out over (see
    transforms/segments.py); None for other runners (Dataflow and the like move work between
    workers themselves: shards are cut into small pieces for them)."""
    if not is_local_runner(options):
        return None
    return options.view_as(DirectOptions).direct_num_workers or cpu_count()  # 0: one per core
