"""The command line: parse, run, report.

  imagenet-shards build SOURCE --out OUT [options] [Beam pipeline options]
  imagenet-shards demo [--out DIR] [options]
  imagenet-shards verify OUT [--sample N] [--workers N]
  imagenet-shards report OUT [--output FILE]

Exit status: 0 success, 1 the build failed (including too many rejects), 2 bad usage
or unusable input.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import apache_beam as beam

import pipeline
from pipeline.console import Console, default_log_path, root_cause
from pipeline.driver import run_build
from pipeline.local_runner import tune_malloc
from pipeline.options import UsageError, add_build_arguments, config_from_args
from pipeline.reading.report import add_report_arguments, run_report
from pipeline.reading.verify import add_verify_arguments, run_verify
from pipeline.sample import make_sample_release
from pipeline.stopping import Terminated, stop_cleanly_on_signals
from transforms.image import codec_versions
from transforms.records import SourceError

__all__ = ["main"]

log = logging.getLogger("imagenet_shards")


# Where the tool's own words go: the terminal, while Beam's and the workers' output goes to the log
# (pipeline/console.py). main() opens it for the run.
_console = Console(default_log_path(), verbose=True)


def _say(msg: str = "") -> None:
    _console.say(msg)


# --- demo ----------------------------------------------------------------------------

READING_EXAMPLE = """\
How to read it (webdataset and pyarrow):

  import json, pyarrow.parquet as pq, webdataset as wds
  root = "{out}"                                            # the dataset; LATEST names its current version
  root += "/" + open(f"{{root}}/LATEST").read().strip()
  manifest = json.load(open(f"{{root}}/manifest.json"))
  shards = [f"{{root}}/{{s['path']}}" for s in manifest["splits"]["train"]["shards"]]
  for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
      image, label = sample["jpg"], int(sample["cls"])      # PIL image, class index
  index = pq.read_table([f"{{root}}/{{p}}" for p in manifest["splits"]["val"]["index"]])
  row = index.slice(0, 1).to_pylist()[0]                    # one seek + one read:
  with open(f"{{root}}/{{row['shard']}}", "rb") as f:
      f.seek(row["offset"]); jpeg = f.read(row["size"])
"""


def run_demo(args, beam_args: list[str]) -> int:
    base = os.path.abspath(args.out)
    source = os.path.join(base, "ILSVRC2012")
    out = os.path.join(base, "shards")
    _say(f"writing a miniature ILSVRC2012 release (official layout, planted faults) to {source}")
    release = make_sample_release(source, classes=10, train_per_class=12, val_images=40, test_images=6)
    planted = sum(1 for split in release.expected.values() for e in split.values() if e.outcome != "kept")
    _say(f"  {sum(len(v) for v in release.expected.values())} members, {planted} planted to be rejected")
    args.source, args.out, args.overwrite = source, out, True
    config = config_from_args(args)
    code = run_build(config, beam_args, _console, tool_options=args.tool_options)
    if code == 0:
        _say("")
        _say(READING_EXAMPLE.format(out=out))
    return code


# --- entry point ---------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagenet-shards",
        description="ImageNet archives -> WebDataset shards + Parquet index, on Apache Beam. "
                    "Arguments the tool does not know are passed to Beam as pipeline options.")
    parser.add_argument("--version", action=_PrintVersion)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shards from a folder of official ILSVRC2012 archives")
    build.set_defaults(tool_options=tuple(add_build_arguments(build)))
    demo = sub.add_parser("demo", help="build the bundled miniature ILSVRC2012 sample")
    out = demo.add_argument("--out", default="demo-out", help="folder for the sample and its shards (default demo-out)")
    # The sample plants faults on purpose (~7% rejects), and is small: small shards show the sharding.
    demo.set_defaults(max_reject_rate=0.25, shard_size=1_000_000,
                      tool_options=(*out.option_strings, *add_build_arguments(demo, with_source=False)))
    verify = sub.add_parser("verify", help="check a finished dataset against its manifest (hashes, offsets, "
                                           "members, decoding, keys, counts)")
    add_verify_arguments(verify)
    report = sub.add_parser("report", help="write a self-contained HTML report of a dataset")
    add_report_arguments(report)
    for reader in (verify, report):  # they run no Beam: nothing to send to a log
        reader.set_defaults(log_file=None, verbose=True)
    return parser


class _PrintVersion(argparse.Action):
    """--version: print the versions on one line and exit (argparse's own action wraps the line)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show the versions that decide the output, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _version() -> str:
    """The tool's version and the versions that decide its output bytes."""
    codecs = codec_versions()
    return (f"imagenet-shards {pipeline.__version__} (apache-beam {beam.__version__}, PIL {codecs['pil']}, "
            f"libjpeg-turbo {codecs['libjpeg_turbo']})")


def _setup_logging() -> None:
    # apache_beam installs a root handler on import; ours replaces it (force=True).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)


def main(argv: Optional[list[str]] = None) -> int:
    """The command line (the `imagenet-shards` console script)."""
    tune_malloc()
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    global _console
    _console = Console(args.log_file or default_log_path(), verbose=args.verbose)
    stop_cleanly_on_signals(_say)
    with _console:
        _setup_logging()  # after the console: the log handler writes to its standard error, the log
        return _run(args, beam_args)


def _run(args, beam_args: list[str]) -> int:
    """Run the command; turn what can go wrong into a line on the terminal and an exit status."""
    try:
        if args.command == "demo":
            return run_demo(args, beam_args)
        if args.command in ("verify", "report"):
            if beam_args:
                raise UsageError(f"unrecognized arguments: {' '.join(beam_args)}")
            if args.command == "verify":
                return run_verify(args, _say, _console.terminal)
            return run_report(args, _say)
        return run_build(config_from_args(args), beam_args, _console, tool_options=args.tool_options)
    except (UsageError, SourceError) as e:
        _say(f"imagenet-shards: error: {e}")
        return 2
    except Terminated:
        _say("imagenet-shards: stopped (SIGTERM); nothing was published, the scratch files are removed")
        return 143
    except KeyboardInterrupt:
        _say("imagenet-shards: interrupted; nothing was published, the scratch files are removed")
        return 130
    except Exception as e:  # the build failed: one line here, the whole traceback in the log
        log.error("build failed", exc_info=True)
        cause = root_cause(e)
        if cause.startswith("TarDamaged:"):
            cause += "; --accept-damaged-archives builds from what can be read and lists the damage in the manifest"
        if "No space left on device" in cause:
            cause += "; free some space and run the same command again: it resumes from the shards it completed"
        where = "" if _console.verbose else f" (details: {_console.log_path})"
        _say(f"imagenet-shards: build failed: {cause}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
