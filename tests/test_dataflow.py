"""Dataflow: its options checked before anything runs, `make dataflow`, and the worker image's recipe.

Nothing here reaches the network: the checks of pipeline/runners.py run before a job is submitted,
`make -n` only prints what `make dataflow` would run, and the Dockerfile cannot be built on these
machines (no Docker engine), so its text is checked against the install script that `make install`
runs.
"""
import os
import re
import shlex
import subprocess

import pytest
from conftest import REPO, run_cli

from pipeline.options import UsageError, beam_options

SOURCE, OUT = "gs://my-bucket/imagenet", "gs://my-bucket/imagenet-shards"
COMPLETE = ["--runner", "DataflowRunner", "--project", "my-proj", "--region", "europe-west4",
            "--temp_location", "gs://my-bucket/tmp",
            "--sdk_container_image", "europe-west4-docker.pkg.dev/my-proj/imagenet-shards/worker:1"]

PROJECT = "--runner DataflowRunner needs --project: the Google Cloud project the job runs in"
REGION = ("--runner DataflowRunner needs --region: where the job and its workers run (e.g. europe-west4, the "
          "region of the bucket)")
TEMP = ("--runner DataflowRunner needs --temp_location gs://BUCKET/tmp: a Cloud Storage folder for the job's "
        "temporary and staged files")
IMAGE = ("--runner DataflowRunner needs --sdk_container_image: an image built from the Dockerfile (Beam's stock "
         "image has stock Pillow, not pillow-simd; see README \"Running on Dataflow\")")


def without(args: list, option: str) -> list:
    i = args.index(option)
    return args[:i] + args[i + 2:]


def replaced(args: list, option: str, value: str) -> list:
    i = args.index(option)
    return args[:i + 1] + [value] + args[i + 2:]


def problems(args: list, source: str = SOURCE, out: str = OUT) -> list:
    try:
        beam_options(args, source=source, out=out)
    except UsageError as e:
        return str(e).splitlines()
    return []


def test_complete_dataflow_options_pass_and_reach_beam():
    options = beam_options(COMPLETE, source=SOURCE, out=OUT).get_all_options()
    assert (options["project"], options["region"], options["temp_location"]) == (
        "my-proj", "europe-west4", "gs://my-bucket/tmp")
    assert options["sdk_container_image"].endswith("/worker:1")
    # a staging location stands for the temporary one (Beam takes either for the other)
    assert problems(replaced(COMPLETE, "--temp_location", "gs://b/t")) == []
    assert problems(without(COMPLETE, "--temp_location") + ["--staging_location", "gs://my-bucket/staging"]) == []


@pytest.mark.parametrize("args, source, out, line", [
    (without(COMPLETE, "--project"), SOURCE, OUT, PROJECT),
    (without(COMPLETE, "--region"), SOURCE, OUT, REGION),
    (without(COMPLETE, "--temp_location"), SOURCE, OUT, TEMP),
    (replaced(COMPLETE, "--temp_location", "/tmp/dataflow"), SOURCE, OUT,
     "--runner DataflowRunner needs --temp_location on Cloud Storage (gs://...), not /tmp/dataflow"),
    (COMPLETE + ["--staging_location", "s3://bucket/staging"], SOURCE, OUT,
     "--runner DataflowRunner needs --staging_location on Cloud Storage (gs://...), not s3://bucket/staging"),
    (without(COMPLETE, "--sdk_container_image"), SOURCE, OUT, IMAGE),
    (COMPLETE, SOURCE, "/data/imagenet-shards",
     "--runner DataflowRunner needs --out on Cloud Storage (gs://...), not /data/imagenet-shards: the workers "
     "write the shards"),
    (COMPLETE, "/data/imagenet", OUT,
     "--runner DataflowRunner needs SOURCE where its workers can read it (gs://, s3://, https://), not the local "
     "path /data/imagenet"),
], ids=["project", "region", "temp-location", "temp-location-local", "staging-location-s3", "image", "out", "source"])
def test_each_missing_or_wrong_option_is_one_line(args, source, out, line):
    assert problems(args, source, out) == [line]


def test_every_problem_is_named_at_once():
    assert problems(["--runner", "DataflowRunner"], SOURCE, OUT) == [PROJECT, REGION, TEMP, IMAGE]


def test_other_runners_are_not_held_to_dataflows_rules():
    assert problems(["--runner", "PortableRunner", "--job_endpoint", "embed"], "/data/imagenet", "/data/out") == []
    assert problems([], "/data/imagenet", "/data/out") == []


def test_the_command_line_refuses_incomplete_dataflow_options_with_exit_2_and_one_line(tmp_path):
    """Before anything runs or is written: no network, no output folder, no log of a failure. Every
    problem is named at once: the missing region, and the local OUT and SOURCE the workers cannot reach."""
    out = tmp_path / "out"
    proc = run_cli("build", tmp_path, "--out", out, *without(COMPLETE, "--region"), check_code=2, timeout=120)
    assert proc.stderr == (
        f"imagenet-shards: error: {REGION}\n"
        f"--runner DataflowRunner needs --out on Cloud Storage (gs://...), not {out}: the workers write the shards\n"
        f"--runner DataflowRunner needs SOURCE where its workers can read it (gs://, s3://, https://), not the local "
        f"path {tmp_path}\n")
    assert not (tmp_path / "out").exists()


def test_the_worker_start_timeout_is_a_pipeline_option():
    options = beam_options(["--worker_start_timeout", "7"]).get_all_options()
    assert options["worker_start_timeout"] == 7.0


# --- make dataflow ----------------------------------------------------------------------

def make_n(*args) -> subprocess.CompletedProcess:
    """`make -n` as a user runs it: not as a sub-make of the `make test` that runs these tests (whose
    variables would make it print "Entering directory" and pass its own flags on)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def dataflow_command(printed: str) -> list:
    """The words of the build command that `make -n dataflow` prints (continuation lines joined)."""
    text = printed.replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if "imagenet-shards build" in line]
    return shlex.split(line)


def test_make_dataflow_builds_with_the_right_options():
    proc = make_n("dataflow", "PROJECT=my-proj", "REGION=europe-west4", "BUCKET=my-bucket",
                  f"SOURCE={SOURCE}", "IMAGE=europe-west4-docker.pkg.dev/my-proj/imagenet-shards/worker:1",
                  "ARGS=--num_workers 8")
    assert proc.returncode == 0, proc.stderr
    words = dataflow_command(proc.stdout)
    assert words[:4] == [".venv-dataflow/bin/imagenet-shards", "build", SOURCE, "--out"]
    assert words[4] == OUT  # gs://BUCKET/imagenet-shards by default
    assert words[5] == "--no-progress"
    beam_args = words[6:]  # the rest are Beam's options, each with its value
    pairs = dict(zip(beam_args[::2], beam_args[1::2]))
    assert pairs == {"--runner": "DataflowRunner", "--project": "my-proj", "--region": "europe-west4",
                     "--temp_location": "gs://my-bucket/tmp", "--staging_location": "gs://my-bucket/staging",
                     "--sdk_container_image": "europe-west4-docker.pkg.dev/my-proj/imagenet-shards/worker:1",
                     "--sdk_location": "container", "--machine_type": "n2-standard-4", "--max_num_workers": "32",
                     "--experiments": "shuffle_mode=service", "--num_workers": "8"}
    # and the tool takes them: every option known, none missing
    assert problems(beam_args, SOURCE, OUT) == []
    # the driver's venv is made by the install script, with what Dataflow needs
    if not (REPO / ".venv-dataflow" / ".installed").exists():
        assert "bash packaging/install.sh" in proc.stdout and "--venv .venv-dataflow" in proc.stdout
        assert "--gcp" in proc.stdout


def test_make_dataflow_takes_a_bucket_url_an_out_and_names_a_default_image():
    proc = make_n("dataflow", "PROJECT=p", "REGION=us-central1", "BUCKET=gs://b/", f"SOURCE={SOURCE}",
                  "OUT=gs://other/shards", "MACHINE_TYPE=c2-standard-8", "MAX_WORKERS=100")
    assert proc.returncode == 0, proc.stderr
    words = dataflow_command(proc.stdout)
    pairs = dict(zip(words[6::2], words[7::2]))
    assert words[4] == "gs://other/shards"
    assert pairs["--temp_location"] == "gs://b/tmp" and pairs["--machine_type"] == "c2-standard-8"
    assert pairs["--max_num_workers"] == "100"
    assert pairs["--sdk_container_image"].startswith("us-central1-docker.pkg.dev/p/imagenet-shards/worker:")


def test_make_dataflow_without_its_variables_is_a_usage_error_before_anything_is_installed():
    proc = make_n("dataflow", "PROJECT=p", "REGION=r", f"SOURCE={SOURCE}")
    assert proc.returncode == 2
    assert "usage: make dataflow PROJECT=<project> REGION=<region> BUCKET=<bucket> SOURCE=gs://" in proc.stderr
    assert proc.stdout == ""


# --- one install path: make install and the worker image --------------------------------

def test_make_install_runs_the_install_script():
    proc = make_n("-B", "install")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"bash packaging/install.sh --python \S+ --venv \.venv --editable --extras 'test,readers'",
                     proc.stdout), proc.stdout


def test_the_install_script_parses_and_explains_itself():
    script = REPO / "packaging" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    helped = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--venv DIR" in helped.stdout and "--gcp" in helped.stdout
    wrong = subprocess.run(["bash", str(script), "--venvv", "x"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown option --venvv" in wrong.stderr


def test_the_worker_image_starts_from_beams_sdk_image_and_runs_the_install_script():
    dockerfile = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    assert re.fullmatch(r"3\.\d+", args["PYTHON_VERSION"])
    beam = tuple(int(x) for x in args["BEAM_VERSION"].split("."))
    lowest = re.search(r"^BEAM_LOWEST := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert (2,) <= beam[:1] and beam >= tuple(int(x) for x in lowest.split("."))  # a release setup.py admits
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile
    run = " ".join(re.findall(r"^RUN (.+(?:\n\s+.+)*)", dockerfile, re.M))
    assert "bash /opt/imagenet-shards/packaging/install.sh" in run and "--gcp" in run
    assert '"apache-beam==${BEAM_VERSION}"' in run  # the image's Beam stays the driver's
    assert "--venv" not in run and "--editable" not in run  # the image's own Python, the project copied in
