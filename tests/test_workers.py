"""Workers started ahead of time (pipeline/workers.py): the runner uses them, falls back without
them, and none outlives its driver."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import CLI, REPO, run_cli
from pipeline.procmem import process_tree
from pipeline.workers import WarmWorkers, warm_worker_count


@pytest.mark.parametrize("argv, expected", [
    (["build", "SRC", "--out", "O"], len(os.sched_getaffinity(0))),
    (["build", "SRC", "--out", "O", "--direct_num_workers", "3"], 3),
    (["build", "SRC", "--direct_num_workers=1"], 1),
    (["build", "SRC", "--direct_num_workers=0"], len(os.sched_getaffinity(0))),
    (["demo", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], 2),
    (["build", "SRC", "--runner", "DataflowRunner"], 0),
    (["build", "SRC", "--runner=PortableRunner"], 0),
    (["build", "SRC", "--direct_running_mode=in_memory"], 0),
    (["build", "SRC", "--direct_num_workers", "two"], 0),
    (["build", "--help"], 0),
    (["verify", "x"], 0),
    ([], 0),
])
def test_worker_count_is_read_from_the_raw_arguments(argv, expected):
    assert warm_worker_count(argv) == expected


def _cmdlines(root: int) -> list:
    out = []
    for pid in process_tree(root)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def _run_watched(cmd: list) -> tuple:
    """Run cmd; return (CompletedProcess-like (code, stderr), every command line seen in its tree)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_cmdlines(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        done.set()
        watcher.join()
    return proc.returncode, err, seen


def _pool_folders() -> set:
    import tempfile

    root = tempfile.gettempdir()
    return {d for d in os.listdir(root) if d.startswith("imagenet-shards-workers-")}


def test_a_build_runs_on_the_workers_started_ahead(release, tmp_path):
    before = _pool_folders()
    code, err, seen = _run_watched([*CLI, "build", str(release.root), "--out", str(tmp_path / "out"),
                                    "--max-reject-rate", "0.5", "--no-progress", "--direct_num_workers", "2"])
    assert code == 0, err
    serving = [c for c in seen if "pipeline.workers serve" in c]
    stubs = [c for c in seen if "pipeline.workers attach" in c]
    assert len(serving) == 2 and stubs, seen
    assert not [c for c in seen if "apache_beam.runners.worker.sdk_worker_main" in c], seen  # Beam's own not needed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["splits"].values()) > 0
    assert _pool_folders() <= before  # the pool's sockets and locks are gone


def test_a_worker_short_falls_back_to_beams_own_and_gives_the_same_shards(release, tmp_path):
    # One worker started ahead, two wanted: the second stub becomes Beam's ordinary worker.
    script = ("import sys; from pipeline.workers import WarmWorkers; from pipeline.cli import main\n"
              "with WarmWorkers(1) as w: sys.exit(main(sys.argv[1:], workers=w))")
    args = ["build", str(release.root), "--max-reject-rate", "0.5", "--no-progress", "--direct_num_workers", "2",
            "--shard-size", "120KB"]
    code, err, seen = _run_watched([sys.executable, "-c", script, *args, "--out", str(tmp_path / "mixed")])
    assert code == 0, err
    assert len([c for c in seen if "pipeline.workers serve" in c]) == 1
    assert [c for c in seen if "apache_beam.runners.worker.sdk_worker_main" in c], seen
    plain = run_cli(*args, "--out", tmp_path / "plain", check_code=0)
    assert plain.returncode == 0
    shards = lambda out: {s: [x["sha256"] for x in v["shards"]] for s, v in  # noqa: E731
                          json.loads((tmp_path / out / "manifest.json").read_text())["splits"].items()}
    assert shards("mixed") == shards("plain")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_unused_workers_end_with_their_driver_even_when_it_is_killed():
    script = ("from pipeline.workers import WarmWorkers; import time\n"
              "w = WarmWorkers(2); print(' '.join(str(p.pid) for p in w._procs), flush=True); time.sleep(120)")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in driver.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_closing_the_pool_ends_the_workers_and_removes_its_folder():
    pool = WarmWorkers(2)
    procs = list(pool._procs)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 10
    assert all(p.returncode is not None for p in procs) and not os.path.exists(pool.folder)
