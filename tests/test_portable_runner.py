"""The build on a distributed runner: Beam's portable job API with SDK workers in processes of their own.

The build runs as the real command line with `--runner PortableRunner --job_endpoint embed
--environment_type EXTERNAL --environment_config ADDRESS`: the driver submits the job to an
embedded job service, whose runner asks a worker pool for workers, the way Flink, Spark and Dataflow
run Python workers. The pool (`python -m apache_beam.runners.worker.worker_pool_main`) is started
here in a process group of its own, and starts each worker as a process that runs `python` from its
PATH; the pool and its workers are stopped with their group at the end of each test, and the test
checks that none of them is left. SOURCE and OUT are on the S3 test server (tests/s3server.py), which
the workers reach through the environment that they inherit from the pool: nothing the workers read
or write goes through the driver's memory or disk.

The reference is the same release built by the local runner (two worker processes, local disk).
Its train split is one shard of more than PIECE_SAMPLES members, which a distributed runner cuts
into pieces, staged in OUT/_pieces/ on the store and assembled by another step: the shards must
still be the local runner's, byte for byte.

The workers that cannot work: a pool whose `python` cannot import apache_beam (its workers die
before they connect), a worker killed in the middle of the build, and workers that cannot import the
project. Each fails the build within a bounded time, with one line that says which runner and what
happened (pipeline/runners.py).
"""
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest
from conftest import CLI, REPO, run_cli
from s3server import s3_server_for_this_process

from benchmarks.output_digests import digests
from pipeline.options import beam_options, is_local_runner, local_workers
from pipeline.sample import make_sample_release
from pipeline.versions import current_version
from transforms.layout import PIECES_DIR
from transforms.pieces import PIECE_SAMPLES

pytestmark = pytest.mark.e2e  # real builds through the command line

# One shard a split: the train split's is cut into pieces on a distributed runner.
BUILD_OPTIONS = ["--no-progress", "--max-reject-rate", "0.5", "--shard-size", "100MB"]
# The manifest's fields that name one build: its id, time and inputs' fingerprint (SOURCE's URL).
PER_BUILD_FIELDS = ("created", "version", "previous", "diff", "fingerprint")
# What a failed build may take at most: the driver's start-up, the runner's, and the time a worker
# has to connect (--worker_start_timeout below).
FAILS_WITHIN = 60
START_TIMEOUT = 5


def portable_runner(address: str) -> list:
    return ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL",
            "--environment_config", address]


POOL_MAIN = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
             "from apache_beam.runners.worker import worker_pool_main; worker_pool_main.main(sys.argv[1:])")


class WorkerPool:
    """Beam's worker pool, started with this interpreter, in a process group of its own. Its workers
    run `python` from the PATH that `env` gives it; its log is `folder/worker-pool.log`."""

    def __init__(self, folder: Path, env: dict):
        self.folder = folder
        self.env = env
        self.log = folder / "worker-pool.log"
        self.process = None
        self.address = None

    def __enter__(self):
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            # Port 0: the pool takes a free port and names it in its log. Its folders are not the driver's.
            # The pool logs its port at INFO, which Beam 2.67's worker_pool_main never gets a handler for
            # (it would go to logging's last resort, which shows warnings only): give it one first.
            self.process = subprocess.Popen(
                [sys.executable, "-c", POOL_MAIN, "--service_port", "0"],
                env={**self.env, "TMPDIR": str(self.folder / "tmp")}, cwd=self.folder, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.address is None:
            found = re.search(r"Started worker pool servicer at port: (\S+)", self.log.read_text())
            if found:
                self.address = found.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the worker pool did not start:\n{self.log.read_text()}")
            else:
                time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        left = self.stop()
        assert left == [], f"processes of the worker pool outlived it: {left}"

    def workers(self) -> list:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> list:
        """Stop the pool and its workers (SIGTERM to the group, SIGKILL after 10 s); return the
        command lines of any process of the group still there."""
        group = self.process.pid  # the leader of a new session: its process id is the group's
        members = [p for p in psutil.process_iter() if _group_of(p) == group]
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(members, timeout=10)
        if alive:
            os.killpg(group, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)
        self.process.wait(timeout=10)
        return [p.cmdline() for p in psutil.process_iter() if _group_of(p) == group]


def _group_of(process):
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


def venv_first_on_path(env: dict) -> dict:
    """The workers' `python` is this interpreter (the venv's, with apache_beam and the project)."""
    return {**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")}


def python_on_path(folder: Path, env: dict, script: str) -> dict:
    """A `python` of its own first on PATH: `script`, a shell script that stands in for it."""
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    clean = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**clean, "PATH": str(folder) + os.pathsep + env.get("PATH", "")}


def start_cli(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple:
    """(exit status, standard error, seconds) of a build; a build still running after `timeout`
    seconds is killed and fails the test."""
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the build was still running after {timeout} s:\n{err}") from None
    return proc.returncode, err, time.monotonic() - started


def the_failure_line(err: str) -> str:
    """The tool's one line about a failed build (its other lines describe the inputs)."""
    lines = [line for line in err.splitlines() if line.startswith("imagenet-shards:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("imagenet-shards: build failed: "), err
    return lines[0]


# --- the S3 server, its source, and the build on the worker pool ----------------------

@pytest.fixture(scope="module")
def s3():
    """The server, with this process's environment and fsspec's config pointed at it for the module."""
    with s3_server_for_this_process() as server:
        yield server


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release with every planted fault, its train split bigger than a piece."""
    made = make_sample_release(tmp_path_factory.mktemp("release"), classes=6, train_per_class=24, val_images=16,
                               test_images=3, seed=1)
    assert len(made.expected["train"]) > PIECE_SAMPLES
    return made


@pytest.fixture(scope="module")
def local_build(release, tmp_path_factory) -> Path:
    """The release built by the local runner with two worker processes: its version folder."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_cli("build", release.root, "--out", out, *BUILD_OPTIONS, "--direct_num_workers", "2", check_code=0)
    return Path(current_version(str(out)))


@pytest.fixture(scope="module")
def s3_source(s3, release):
    """The release's files uploaded: s3://BUCKET/src/<name>."""
    for folder, _, names in os.walk(release.root):
        for name in names:
            path = os.path.join(folder, name)
            s3.fs.put_file(path, f"{s3.bucket}/src/{os.path.relpath(path, release.root)}")
    return s3.url("src")


@pytest.fixture(scope="module")
def portable_build(s3, s3_source, tmp_path_factory):
    """s3:// SOURCE -> s3:// OUT through the portable runner and a worker pool: (the command line's
    exit status, its standard error, the seconds it took, the pool's log, and a local copy of the
    version it published)."""
    folder = tmp_path_factory.mktemp("portable")
    env = venv_first_on_path({**os.environ, **s3.env})
    s3.clear_log()
    with WorkerPool(folder / "pool", env) as pool:
        proc = start_cli(env, "build", s3_source, "--out", s3.url("portable"), *BUILD_OPTIONS,
                         *portable_runner(pool.address))
        code, err, seconds = finish(proc, timeout=300)
        log = pool.log.read_text()
    assert code == 0, err
    latest = s3.fs.cat(f"{s3.bucket}/portable/LATEST").decode().strip()
    copy = folder / "version"
    s3.fs.get(f"{s3.bucket}/portable/{latest}", str(copy), recursive=True)
    return code, err, seconds, log, copy, s3.requests()


# --- the distributed runner gives the local runner's bytes ------------------------------

def test_a_portable_runner_with_a_worker_pool_is_a_distributed_runner():
    options = beam_options(portable_runner("localhost:50000"))
    assert not is_local_runner(options) and local_workers(options) is None
    # Beam's local runner with another's workers (a pool's, or containers) shares nothing with them either
    assert not is_local_runner(beam_options(["--runner", "FnApiRunner", "--environment_type", "DOCKER"]))
    assert is_local_runner(beam_options(["--runner", "FnApiRunner"])) and is_local_runner(beam_options([]))


def test_workers_of_a_worker_pool_write_the_local_runners_bytes(portable_build, local_build):
    """Shards, indexes, rejects and every other file the version holds are byte for byte those of
    the local runner's build of the same release from local disk; the manifests differ only in the
    fields that name the build."""
    _, err, _, log, copy, requests = portable_build
    assert "Starting worker with command" in log  # the pool's own process ran the work
    assert "manifest:" in err and "published:" in err
    # the train shard went through pieces staged on the store, written and read back by the workers
    staged = {r.method for r in requests if f"/{PIECES_DIR}/" in f"/{r.key}"}
    assert {"PUT", "GET"} <= staged, staged
    local, remote = digests(str(local_build)), digests(str(copy))
    assert sorted(remote) == sorted(local)  # the same files, no scratch left over
    assert [path for path in local if path != "manifest.json" and remote[path] != local[path]] == []
    reference = json.loads((local_build / "manifest.json").read_text())
    manifest = json.loads((copy / "manifest.json").read_text())
    for split, s in reference["splits"].items():  # what the manifest lists, by name and digest
        assert manifest["splits"][split]["shards"] == s["shards"], split
        assert manifest["splits"][split]["index"] == s["index"], split
    assert manifest["rejects"] == reference["rejects"]
    for field in PER_BUILD_FIELDS:
        manifest.pop(field, None)
        reference.pop(field, None)
    assert manifest == reference


# --- workers that cannot work fail the build, in bounded time, with one line -----------

def test_a_pool_whose_python_lacks_apache_beam_fails_the_build_with_one_line(release, tmp_path):
    """The issue's case: another `python` first on the pool's PATH. Its workers die before they
    connect; the runner would wait for them forever."""
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter under the venv
    env = python_on_path(tmp_path / "bin", dict(os.environ), f'exec "{base}" -I -S "$@"\n')  # no site-packages
    with WorkerPool(tmp_path / "pool", env) as pool:
        proc = start_cli(env, "build", release.root, "--out", tmp_path / "out", *BUILD_OPTIONS,
                         *portable_runner(pool.address), "--worker_start_timeout", START_TIMEOUT)
        code, err, seconds = finish(proc, timeout=FAILS_WITHIN)
        log = pool.log.read_text()
    assert code == 1, err
    line = the_failure_line(err)
    assert (f"RuntimeError: PortableRunner: no SDK worker connected within {START_TIMEOUT} s of asking the worker "
            f"pool at {pool.address}") in line, line
    assert "apache_beam" in line and "(--worker_start_timeout)" in line
    assert "No module named 'apache_beam'" in log  # what the worker said, where the pool keeps it
    assert seconds < FAILS_WITHIN
    assert not (tmp_path / "out" / "LATEST").exists()


def test_a_worker_killed_in_the_middle_of_the_build_fails_it_with_one_line(s3, s3_source, tmp_path):
    env = venv_first_on_path({**os.environ, **s3.env})
    with WorkerPool(tmp_path / "pool", env) as pool:
        proc = start_cli(env, "build", s3_source, "--out", s3.url("killed"), *BUILD_OPTIONS,
                         *portable_runner(pool.address))
        _when_a_shard_is_written(s3, f"{s3.bucket}/killed/versions", proc)
        for worker in pool.workers():  # the build has seconds of work left: it cannot have finished
            worker.kill()
        code, err, seconds = finish(proc, timeout=FAILS_WITHIN)
    assert code == 1, err
    line = the_failure_line(err)
    assert (f"RuntimeError: PortableRunner: the SDK worker worker_0 of the worker pool at {pool.address} stopped in "
            "the middle of the build") in line, line
    assert "killed, ran out of memory or crashed" in line
    assert seconds < FAILS_WITHIN
    assert not s3.fs.exists(f"{s3.bucket}/killed/LATEST")


def _when_a_shard_is_written(s3, versions: str, build: subprocess.Popen, timeout: float = 120) -> None:
    """Return once the first shard is in the bucket: the worker is connected, and in the middle of
    the build (shards to write, then the duplicate searches, the rejects and the manifest)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and build.poll() is None:
        if s3.fs.exists(versions) and any(path.endswith(".tar") for path in s3.fs.find(versions)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no shard was written (build exit status {build.poll()})")


def test_workers_that_cannot_import_the_project_fail_the_build_with_their_words(release, tmp_path):
    """A `python` with apache_beam but not this project: the worker connects, cannot unpickle the
    build's code, and says so; the line names the runner and the pool besides."""
    base = getattr(sys, "_base_executable", sys.executable)
    site_packages = sysconfig.get_paths()["purelib"]  # the venv's, without its .pth files (the editable install)
    env = python_on_path(tmp_path / "bin", dict(os.environ),
                         f'PYTHONPATH="{site_packages}" exec "{base}" -S "$@"\n')
    with WorkerPool(tmp_path / "pool", env) as pool:  # its folder is not the repository: no project there
        proc = start_cli(env, "build", release.root, "--out", tmp_path / "out", *BUILD_OPTIONS,
                         *portable_runner(pool.address), "--worker_start_timeout", 30)
        code, err, seconds = finish(proc, timeout=FAILS_WITHIN)
    assert code == 1, err
    line = the_failure_line(err)
    assert re.search(r"build failed: ModuleNotFoundError: No module named '(transforms|pipeline)'", line), line
    assert f"[on the SDK worker worker_0 of the PortableRunner's worker pool at {pool.address}]" in line, line
    assert seconds < FAILS_WITHIN
