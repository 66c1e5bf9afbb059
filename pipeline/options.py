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
from typing import Optional

from pipeline.workers import cpu_count
from transforms.image import ImageOptions, ResizeSpec
from transforms.sharding import parse_byte_size

__all__ = ["BuildConfig", "UsageError", "add_build_arguments", "config_from_args", "beam_options"]

DEFAULT_SHARD_SIZE = "512MB"
PIL_MAX_IMAGE_PIXELS = 89_478_485


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


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def add_build_arguments(parser: argparse.ArgumentParser, with_source: bool = True) -> None:
    if with_source:
        parser.add_argument("source", metavar="SOURCE",
                            help="folder (local path or fsspec URL) holding the ILSVRC2012 archives")
        parser.add_argument("--out", required=True, metavar="OUT", help="output folder (local path or fsspec URL)")
        parser.add_argument("--boxes", action="append", default=[], metavar="PATH",
                            help="bounding-box XML: an archive (.tar, .tar.gz) or folder, local or remote; "
                                 "repeatable (default: the bbox archives found in SOURCE)")
        parser.add_argument("--splits", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                            default=(), metavar="LIST", help="only these splits, e.g. train,val (default: all found)")
        parser.add_argument("--classes", dest="classes_file", metavar="FILE", default=None,
                            help="only these classes: a file with one WNID (class name) a line, e.g. ImageNet-100")
        parser.add_argument("--relabel", action="store_true",
                            help="with --classes: labels 0..K-1 in sorted class order (default: the full index)")
        parser.add_argument("--label-map", metavar="FILE", default=None,
                            help="labels = line index of the class in FILE (one WNID a line; ImageNet-21k orders)")
        parser.add_argument("--val-per-class", type=int, default=0, metavar="N",
                            help="hold out N train images per class as val, chosen by the seeded key hash "
                                 "(datasets without a val split, e.g. ImageNet-21k)")
        parser.add_argument("--layout", choices=("ilsvrc2012", "kaggle", "imagefolder", "in21k"), default=None,
                            help="how SOURCE is laid out (default: detected)")
    parser.add_argument("--resize", type=_resize, default=ResizeSpec.parse("longer:512"), metavar="SPEC",
                        help="longer:N | shorter:N | none (default longer:512); never upscales")
    parser.add_argument("--quality", type=_quality, default=90, help="JPEG quality of re-encoded images (default 90)")
    parser.add_argument("--reencode", choices=("auto", "always"), default="auto",
                        help="auto: keep baseline RGB JPEGs that need no resize byte for byte (default); "
                             "always: re-encode every image")
    parser.add_argument("--shard-size", type=_byte_size, default=parse_byte_size(DEFAULT_SHARD_SIZE), metavar="SIZE",
                        help="target bytes per shard (default 512MB; KB/MB/GB = 1000^n, KiB/MiB/GiB = 1024^n)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the key hash that spreads samples over shards")
    parser.add_argument("--max-pixels", type=_positive_int, default=PIL_MAX_IMAGE_PIXELS,
                        help=f"reject images with more pixels (default {PIL_MAX_IMAGE_PIXELS:,}, PIL's limit)")
    parser.add_argument("--max-reject-rate", type=_rate, default=0.05,
                        help="fail (exit 1) when more than this fraction of samples is rejected (default 0.05)")
    parser.add_argument("--exif-transpose", action="store_true",
                        help="apply the EXIF orientation to the pixels (and boxes) before resizing; "
                             "default: pixels as stored, as torchvision and TFDS read ImageNet")
    parser.add_argument("--verify-inputs", action="store_true",
                        help="check the official archives against their published MD5 sums first (reads every byte)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous build in OUT")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        source=args.source, out=args.out, layout=getattr(args, "layout", None),
        boxes=tuple(getattr(args, "boxes", ())), splits=tuple(getattr(args, "splits", ())),
        classes_file=getattr(args, "classes_file", None), relabel=getattr(args, "relabel", False),
        label_map=getattr(args, "label_map", None), val_per_class=getattr(args, "val_per_class", 0),
        exif_transpose=args.exif_transpose, resize=args.resize, quality=args.quality, reencode=args.reencode,
        shard_size=args.shard_size, seed=args.seed, max_pixels=args.max_pixels,
        max_reject_rate=args.max_reject_rate, verify_inputs=args.verify_inputs, overwrite=args.overwrite,
        progress=args.progress,
    )


def _beam_parser():
    """A parser that knows every Beam pipeline option (the same set Beam itself parses)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # noqa: SLF001  (what PipelineOptions.get_all_options does)
    return parser


def beam_options(beam_args: list[str]):
    """PipelineOptions from the arguments the tool did not take; local defaults when no --runner.

    Raises UsageError for an argument Beam does not know either (a typo).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = _beam_parser()
    known, unknown = parser.parse_known_args(beam_args)
    if unknown:
        options = [a for a in parser._option_string_actions if a.startswith("--")]  # noqa: SLF001
        hints = []
        for arg in unknown:
            close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1)
            hints.append(f"{arg}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise UsageError("unrecognised arguments: " + ", ".join(hints))
    args = list(beam_args)

    def given(name: str) -> bool:
        return any(a == name or a.startswith(name + "=") for a in beam_args)

    if not known.runner:
        args.append("--runner=FnApiRunner")
        if not given("--direct_running_mode"):
            args.append("--direct_running_mode=multi_processing")
        if not given("--direct_num_workers"):
            args.append(f"--direct_num_workers={cpu_count()}")
    if not given("--default_sdk_harness_log_level"):
        args.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions(args)


def is_local_runner(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in StandardOptions.LOCAL_RUNNERS


def local_runner(options, worker_command: Optional[str] = None):
    """The FnApiRunner object for a local build, or None to let Beam create the runner.

    The FnApiRunner gives its worker processes no pipeline options, so they would log at
    INFO whatever --default_sdk_harness_log_level says (dozens of lines per build). Handing
    the options to the workers through the runner's provision info fixes that.

    worker_command: the command that starts a worker (pipeline.workers: workers started ahead
    of time) instead of Beam's `python -m apache_beam.runners.worker.sdk_worker_main`. The
    FnApiRunner takes its own command in multi-processing mode, so the runner is given the
    command as its environment and runs in its default mode, which then only means "use that
    environment", with --direct_num_workers parallel workers all the same.
    """
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    if options.view_as(StandardOptions).runner != "FnApiRunner":
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.job import utils as job_utils
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    # Only what the workers need: the whole option set does not parse back in the worker.
    worker_options = {"default_sdk_harness_log_level": options.get_all_options()["default_sdk_harness_log_level"]}
    info = beam_provision_api_pb2.ProvisionInfo(retrieval_token="unused-retrieval-token",
                                                pipeline_options=job_utils.dict_to_struct(worker_options))
    provision = fn_runner.ExtendedProvisionInfo(info)
    direct = options.view_as(DirectOptions)
    if worker_command is None or direct.direct_running_mode != "multi_processing":
        return fn_runner.FnApiRunner(provision_info=provision)
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    direct.direct_running_mode = "in_memory"
    _quiet_running_mode_warning()
    return fn_runner.FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(worker_command),
                                 provision_info=provision)


def _quiet_running_mode_warning() -> None:
    """The FnApiRunner warns that in_memory with several workers gives no parallelism; with a
    subprocess environment it does (that is what multi_processing itself sets up)."""
    import logging

    logger = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner")
    if not any(isinstance(f, _RunningModeWarningFilter) for f in logger.filters):
        logger.addFilter(_RunningModeWarningFilter())


class _RunningModeWarningFilter:
    def filter(self, record) -> bool:
        return not record.getMessage().startswith("If direct_num_workers is not equal to 1")
