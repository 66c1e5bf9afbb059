"""Local Beam workers started ahead of time, so that a build does not wait for them.

Beam's local runner (the FnApiRunner in multi-processing mode) starts each SDK worker when the
first stage runs: a new interpreter that imports Beam and this project (~1.2 s) while the driver
waits; at the end it stops them one after the other, each interpreter tearing itself down
(~0.3 s). That is a third of a small build's wall time. Here the command line starts the workers
first thing (`pipeline.launch`), so they import while the driver imports, discovers the inputs
and builds the graph; and they leave with os._exit as soon as the runner lets them go.

How it fits Beam without changing it:
  * `WarmWorkers(n)` spawns n `python -m pipeline.workers serve DIR I`. Each binds its Unix
    socket DIR/worker-I.sock at once, imports Beam's worker harness and the project's stages,
    then waits for one connection. It exits when its stdin (a pipe from the driver) closes, so
    it never outlives the driver.
  * The runner is given `WarmWorkers.command` as its worker command (see
    pipeline.options.local_runner). For each worker it wants, the runner launches that command:
    `python -m pipeline.workers attach DIR N`, a stub that claims a free warm worker (an flock
    on DIR/worker-I.lock), sends it the environment Beam gave the stub (control and logging
    endpoints, options, worker id), and waits for its exit status. The warm worker runs
    Beam's own harness (sdk_worker_main.create_harness + run) with that environment.
  * When the stub dies (the runner kills it), the worker sees its socket close and exits.
    When no warm worker can be claimed, the stub becomes an ordinary Beam worker (exec), so
    a build never depends on the warm start.

This module must stay light to import (no Beam): the stub runs it for every worker.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Optional

__all__ = ["WarmWorkers", "cpu_count", "warm_worker_count"]

_BEAM_WORKER = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]

# The modules whose DoFns the workers unpickle: importing them while waiting is the point.
_PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "transforms.archives", "transforms.annotations",
            "transforms.boxes", "transforms.sharding", "transforms.write_shards", "transforms.index",
            "transforms.manifest")


def _socket_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"worker-{index}.sock")


def _lock_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"worker-{index}.lock")


def cpu_count() -> int:
    """The cores this process may run on (the local runner's default worker count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _flag(argv: list, name: str) -> Optional[str]:
    """The value of --name (as '--name V' or '--name=V') in argv, None when absent."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def warm_worker_count(argv: list) -> int:
    """How many local Beam workers the command in argv will want, 0 when it wants none that
    this module can start (another runner, another running mode, help, not a build).

    Read from the raw arguments, before they are parsed (parsing imports Beam): a wrong guess
    costs nothing but idle processes, since the runner only ever asks for the workers it needs.
    """
    if not argv or argv[0] not in ("build", "demo") or "-h" in argv or "--help" in argv:
        return 0
    if _flag(argv, "--runner") is not None:
        return 0
    if (_flag(argv, "--direct_running_mode") or "multi_processing") != "multi_processing":
        return 0
    try:
        count = int(_flag(argv, "--direct_num_workers") or cpu_count())
    except ValueError:
        return 0
    return count if count > 0 else cpu_count()


class WarmWorkers:
    """n worker processes importing Beam now, for the runner to claim later. A context manager."""

    def __init__(self, count: int):
        self.folder = tempfile.mkdtemp(prefix="imagenet-shards-workers-")
        self.count = count
        self._procs = [
            subprocess.Popen([sys.executable, "-m", "pipeline.workers", "serve", self.folder, str(i)],
                             stdin=subprocess.PIPE)
            for i in range(count)
        ]

    @property
    def command(self) -> str:
        """The worker command for the runner (a shell command line, as Beam runs it)."""
        args = (sys.executable, "-m", "pipeline.workers", "attach", self.folder, str(self.count))
        return " ".join(shlex.quote(a) for a in args)

    def close(self) -> None:
        """Let every worker go (closing its stdin ends it) and remove the folder."""
        for proc in self._procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> WarmWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the warm worker -----------------------------------------------------------------------

def _exit_at_eof(stream, code: int) -> None:
    """Block until `stream` ends, then leave at once (daemon threads would not stop the process)."""
    try:
        while stream.read(65536):
            pass
    except OSError:
        pass
    os._exit(code)


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the stub went away")
        data += chunk
    return data


def _send_message(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(struct.pack(">I", len(payload)) + payload)


def _recv_message(conn: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _recv_exactly(conn, 4))
    return _recv_exactly(conn, length)


def serve(folder: str, index: int) -> None:
    """A warm worker: listen, import, wait for a stub, then be the Beam worker it asks for."""
    threading.Thread(target=_exit_at_eof, args=(sys.stdin.buffer, 0), daemon=True).start()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_socket_path(folder, index))  # first: a stub may connect while the imports run
    listener.listen(1)

    with _import_slot(folder, index):
        import importlib

        for name in _PRELOAD:
            importlib.import_module(name)
        from PIL import Image

        Image.init()  # every image plugin registered now, not in the first bundle

    conn, _ = listener.accept()
    listener.close()
    try:
        environment = json.loads(_recv_message(conn))
    except (ConnectionError, struct.error, ValueError):
        os._exit(1)
    # The stub holds the connection open while it lives: when it closes, this worker's job is over.
    threading.Thread(target=_exit_when_closed, args=(conn,), daemon=True).start()
    os.environ.clear()
    os.environ.update(environment)
    code = _run_harness(environment)
    try:
        _send_message(conn, str(code).encode())
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def _import_slot(folder: str, index: int):
    """At most cores - 1 workers import at once, so one core stays with the driver, whose own
    import and graph construction are what the build waits for (on 2 cores: one at a time,
    which still has both ready before the driver needs them)."""
    slots = max(1, cpu_count() - 1)
    with open(os.path.join(folder, f"import-{index % slots}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _exit_when_closed(conn: socket.socket) -> None:
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os._exit(1)


def _run_harness(environment: dict) -> int:
    """What `python -m apache_beam.runners.worker.sdk_worker_main` does, with `environment`."""
    import logging

    from apache_beam.runners.worker import sdk_worker_main

    fn_log_handler, harness, _options = sdk_worker_main.create_harness(environment)
    try:
        harness.run()
        return 0
    except BaseException:  # noqa: BLE001 - reported by Beam's handler, then an exit status
        logging.getLogger(__name__).critical("Python sdk harness failed", exc_info=True)
        return 1
    finally:
        if fn_log_handler:
            fn_log_handler.close()


# --- the stub the runner launches ------------------------------------------------------------

def attach(folder: str, count: int) -> int:
    """Hand this process's environment to a free warm worker and wait for its exit status;
    become an ordinary Beam worker when none can be claimed."""
    for index in range(count):
        lock = open(_lock_path(folder, index), "a")  # noqa: SIM115 - held as long as this process lives
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another stub has this one
            lock.close()
            continue
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(_socket_path(folder, index))
            _send_message(conn, json.dumps(dict(os.environ)).encode())
        except OSError:  # not listening (it failed to start, or has gone): try the next one
            conn.close()
            continue
        try:
            return int(_recv_message(conn))
        except (OSError, ConnectionError, struct.error, ValueError):
            return 1  # the worker died with the stage running: Beam reports the failure
    os.execv(_BEAM_WORKER[0], _BEAM_WORKER)  # no warm worker left: Beam's own, as the runner would


def main(argv: list) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "attach":
        return attach(argv[1], int(argv[2]))
    print("usage: python -m pipeline.workers serve DIR INDEX | attach DIR COUNT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
