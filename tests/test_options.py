"""Command-line options: the tool's own, and Beam's passed through untouched."""
import pytest
from conftest import run_cli

from pipeline.options import UsageError, beam_options, is_local_runner


def test_no_runner_means_local_multiprocessing_on_all_cores():
    opts = beam_options([]).get_all_options()
    assert opts["runner"] == "FnApiRunner"  # never the DirectRunner's Prism download
    assert opts["direct_running_mode"] == "multi_processing"
    assert opts["direct_num_workers"] >= 1
    assert opts["default_sdk_harness_log_level"] == "WARNING"


def test_worker_count_and_mode_can_be_overridden():
    opts = beam_options(["--direct_num_workers=3", "--direct_running_mode", "in_memory"]).get_all_options()
    assert (opts["direct_num_workers"], opts["direct_running_mode"]) == (3, "in_memory")


def test_dataflow_options_reach_beam_unchanged():
    args = ["--runner", "DataflowRunner", "--project", "my-proj", "--region", "europe-west4",
            "--temp_location", "gs://bucket/tmp", "--setup_file", "./setup.py", "--num_workers", "50",
            "--sdk_container_image", "europe-west4-docker.pkg.dev/my-proj/imagenet-shards/worker:1"]
    options = beam_options(args)
    opts = options.get_all_options()
    assert opts["runner"] == "DataflowRunner"
    assert (opts["project"], opts["region"], opts["temp_location"]) == ("my-proj", "europe-west4", "gs://bucket/tmp")
    assert opts["setup_file"] == "./setup.py" and opts["num_workers"] == 50
    assert opts["direct_running_mode"] != "multi_processing"  # local defaults only without --runner
    assert not is_local_runner(options)


@pytest.mark.parametrize("typo", ["--direct_num_worker=2", "--projet", "--shard_size=1MB"])
def test_an_argument_nobody_knows_is_an_error(typo):
    with pytest.raises(UsageError, match="unrecognised"):
        beam_options([typo, "x"] if "=" not in typo else [typo])


def test_typo_gets_a_suggestion():
    with pytest.raises(UsageError, match="did you mean --direct_num_workers"):
        beam_options(["--direct_num_worker=2"])


MISSPELLED = [
    (["--shard-sise", "1MB"], "unrecognised arguments: --shard-sise 1MB (did you mean --shard-size?)"),
    (["--resise=shorter:256"], "unrecognised arguments: --resise=shorter:256 (did you mean --resize?)"),
    (["--ovewrite"], "unrecognised arguments: --ovewrite (did you mean --overwrite?)"),
    (["--direct_num_worker", "2"], "did you mean --direct_num_workers?"),
]


@pytest.mark.parametrize("typo, suggestion", MISSPELLED)
def test_a_misspelled_option_is_matched_against_the_tools_own_first(typo, suggestion, tmp_path):
    proc = run_cli("build", tmp_path, "--out", tmp_path / "out", *typo, check_code=2)
    assert suggestion in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_version_names_what_decides_the_bytes():
    proc = run_cli("--version", check_code=0)
    assert proc.stdout.startswith("imagenet-shards ") and "apache-beam" in proc.stdout
    assert "libjpeg-turbo" in proc.stdout and proc.stdout.count("\n") == 1
