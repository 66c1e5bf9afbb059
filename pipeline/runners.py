"""Runners other than the local one: what makes a runner distributed, the checks of Dataflow's
options, and a bound on the wait for workers of a worker pool.

Local or distributed. The local runner (Beam's FnApiRunner and the DirectRunner, with their own
worker processes) shares the driver's disk and memory with its workers, and the build uses that:
a progress folder on local disk, the workers' log level through the environment, the work shared
out in one equal segment a worker. A runner whose workers run elsewhere (Dataflow, Flink, Spark,
the portable runner) gets none of that: everything its workers read and write goes through fsspec
(SOURCE, OUT, the pieces of a shard, the indexes, the records of completed shards), and its shards
are cut into small pieces that it can move between workers. A local runner is distributed too when
its workers are a worker pool's (`--environment_type EXTERNAL`) or containers
(`--environment_type DOCKER`): those may run on other machines, and they do not share the
driver's environment.

Dataflow: its options are checked before anything runs, with one line for each problem
(`dataflow_problems`): a project, a region, a temporary location on Cloud Storage, an SDK container
image (the stock image has stock Pillow, not pillow-simd), and SOURCE and OUT that the workers can
reach (OUT on Cloud Storage).

Workers that never come, or die. Beam's in-process runner (the FnApiRunner, which the portable
runner's `--job_endpoint embed` runs too) asks a worker pool (`--environment_type EXTERNAL`) for a
worker, then waits for it to connect, and waits for the answer to each request it sends it, both
without a limit: a pool whose `python` cannot import apache_beam starts workers that die at once,
and a worker that is killed in the middle of a bundle leaves the build waiting forever, with no
message. `watch_workers` puts a handler of such workers in Beam's place that bounds both: a worker
that has not connected after `--worker_start_timeout` seconds, or whose connection closes before
the runner closes it, fails the build with one line that names the runner, the pool and what
happened. (A worker that connects and then fails reports its own error, which Beam passes on.)
The handler relies on the FnApiRunner's worker handlers (`worker_handlers.ExternalWorkerHandler`,
its control connection and the futures of its requests), unchanged from Apache Beam 2.67 to 2.77.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, Iterator, Optional

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from pipeline.console import root_cause

__all__ = ["WorkerWatchOptions", "DEFAULT_WORKER_START_TIMEOUT", "runner_name", "workers_elsewhere",
           "dataflow_problems", "watch_workers"]

# Seconds a worker pool's worker has to connect. Such a worker is a process that the pool starts
# (a second or two to import Beam); a container that must be pulled first takes longer.
DEFAULT_WORKER_START_TIMEOUT = 120.0

# Environments whose workers may run on other machines, and do not share the driver's environment.
_ELSEWHERE = {"EXTERNAL", "DOCKER", common_urns.environments.EXTERNAL.urn, common_urns.environments.DOCKER.urn}


class WorkerWatchOptions(PipelineOptions):
    """The tool's own Beam pipeline option (Beam finds every PipelineOptions class that is imported)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--worker_start_timeout", type=float, default=DEFAULT_WORKER_START_TIMEOUT,
            help="seconds a worker of a worker pool (--environment_type EXTERNAL) has to connect to Beam's "
                 f"in-process runner before the build fails (default {DEFAULT_WORKER_START_TIMEOUT:.0f})")


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name, as the user would write it ("DataflowRunner", "PortableRunner")."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1]


def workers_elsewhere(options: PipelineOptions) -> bool:
    """Whether the runner's workers may be on other machines, whatever the runner: a worker pool's
    (EXTERNAL) or containers (DOCKER)."""
    return (options.view_as(PortableOptions).environment_type or "") in _ELSEWHERE


def _is_dataflow(options: PipelineOptions) -> bool:
    return runner_name(options).lower() in ("dataflowrunner", "dataflow")


def _local_path(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def dataflow_problems(options: PipelineOptions, source: Optional[str] = None, out: Optional[str] = None) -> list[str]:
    """One line for each option that a build on Dataflow lacks or has wrong (none for other runners).
    source and out: the build's SOURCE and OUT, when known."""
    if not _is_dataflow(options):
        return []
    cloud = options.view_as(GoogleCloudOptions)
    problems = []
    if not cloud.project:
        problems.append("--runner DataflowRunner needs --project: the Google Cloud project the job runs in")
    if not cloud.region:
        problems.append("--runner DataflowRunner needs --region: where the job and its workers run "
                        "(e.g. europe-west4, the region of the bucket)")
    locations = {name: value for name, value in (("--temp_location", cloud.temp_location),
                                                 ("--staging_location", cloud.staging_location)) if value}
    if not locations:
        problems.append("--runner DataflowRunner needs --temp_location gs://BUCKET/tmp: a Cloud Storage folder "
                        "for the job's temporary and staged files")
    for name, value in locations.items():
        if not value.startswith("gs://"):
            problems.append(f"--runner DataflowRunner needs {name} on Cloud Storage (gs://...), not {value}")
    worker = options.view_as(WorkerOptions)
    if not (worker.sdk_container_image or worker.worker_harness_container_image):
        problems.append("--runner DataflowRunner needs --sdk_container_image: an image built from the Dockerfile "
                        "(Beam's stock image has stock Pillow, not pillow-simd; see README \"Running on Dataflow\")")
    if out is not None and not out.startswith("gs://"):
        problems.append(f"--runner DataflowRunner needs --out on Cloud Storage (gs://...), not {out}: "
                        "the workers write the shards")
    if source is not None and _local_path(source):
        problems.append(f"--runner DataflowRunner needs SOURCE where its workers can read it (gs://, s3://, "
                        f"https://), not the local path {source}")
    return problems


def watch_workers(options: PipelineOptions) -> None:
    """Bound the in-process runner's wait for worker pools' workers (see the module docstring), for
    the pipelines that this process runs from now on. Other environments are left as they are."""
    if (options.view_as(PortableOptions).environment_type or "") not in (
            "EXTERNAL", common_urns.environments.EXTERNAL.urn):
        return
    timeout = options.view_as(WorkerWatchOptions).worker_start_timeout
    handler = functools.partial(_WatchedExternalWorkerHandler, runner=runner_name(options), start_timeout=timeout)
    worker_handlers.WorkerHandler.register_environment(
        common_urns.environments.EXTERNAL.urn, beam_runner_api_pb2.ExternalPayload)(handler)


class _WatchedExternalWorkerHandler(worker_handlers.ExternalWorkerHandler):
    """Beam's handler of a worker pool's worker, with a bound on the wait for it to connect and a
    failure of every request it has not answered when its connection closes early.

    The connections are Beam's own; the handler wraps three of their methods: the control
    connection's `set_input` (called when the worker connects, with the stream of its answers) and
    `push` (each request sent, which returns the future of its answer), and the data connection's
    `input_elements` (the elements a bundle sends back)."""

    def __init__(self, external_payload, state, provision_info, grpc_server, *, runner: str, start_timeout: float):
        super().__init__(external_payload, state, provision_info, grpc_server)
        self._runner = runner
        self._start_timeout = start_timeout
        self._connected = threading.Event()
        self._closing = False
        self._lost: Optional[str] = None
        self._lock = threading.Lock()
        self._pending: dict = {}  # instruction id -> the future of a request not answered yet
        _override(self.control_conn, "set_input", self._connect)
        _override(self.control_conn, "push", self._push)
        _override(self.data_conn, "input_elements", self._elements)

    def _connect(self, set_input: Callable, answers) -> None:
        set_input(self._watch(answers))
        self._connected.set()

    def _push(self, push: Callable, request):
        future = push(request)
        if future is not None:  # None: the marker that closes the connection
            with self._lock:
                if self._lost is None:
                    self._pending[future.instruction_id] = future
                else:
                    _fail(future, self._lost)
        return future

    def _elements(self, input_elements: Callable, *args, **kwargs) -> Iterator:
        """The data connection's elements; Beam at times notices first that the worker went, and
        then says only "Channel closed prematurely."."""
        try:
            yield from input_elements(*args, **kwargs)
        except RuntimeError as e:
            if self._closing or "closed prematurely" not in str(e):
                raise
            raise RuntimeError(self._lost or self._stopped("its data connection closed")) from e

    def _pool(self) -> str:
        return self._external_payload.endpoint.url

    def start_worker(self) -> None:
        try:
            super().start_worker()
        except Exception as e:  # the pool cannot be reached, or could not start a process
            raise RuntimeError(f"{self._runner}: the worker pool at {self._pool()} did not start an SDK worker: "
                               f"{_one_line(e)}") from e
        if not self._connected.wait(self._start_timeout):
            raise RuntimeError(
                f"{self._runner}: no SDK worker connected within {self._start_timeout:g} s of asking the worker pool "
                f"at {self._pool()} for one (--worker_start_timeout): a worker whose python cannot import apache_beam "
                "and this project dies before it connects, and only the pool's own log shows what it said")

    def _watch(self, answers) -> Iterator:
        """The worker's answers, passed on; notes when they end before the runner closed the connection."""
        how = "its connection closed"
        try:
            for answer in answers:
                with self._lock:
                    self._pending.pop(answer.instruction_id, None)
                if answer.error:  # the worker's own words, then where they come from, on the line that counts
                    answer.error += (f"\n{root_cause(RuntimeError(answer.error))} [on the SDK worker {self.worker_id} "
                                     f"of the {self._runner}'s worker pool at {self._pool()}]")
                yield answer
        except Exception as e:  # gRPC's error when the connection breaks, most often without details
            detail = _one_line(e)
            how = "its connection broke" + (f" ({detail})" if detail != type(e).__name__ else "")
        if not self._closing:
            self._lose(self._stopped(how))

    def _stopped(self, how: str) -> str:
        return (f"{self._runner}: the SDK worker {self.worker_id} of the worker pool at {self._pool()} stopped in the "
                f"middle of the build ({how}): it was killed, ran out of memory or crashed; the pool's log or the "
                "machine's says which")

    def _lose(self, message: str) -> None:
        with self._lock:
            if self._lost is not None:
                return
            self._lost = message
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            _fail(future, message)

    def close(self) -> None:
        self._closing = True
        super().close()


def _override(instance, name: str, wrapper: Callable) -> None:
    """Put a wrapper in place of one object's method: `wrapper(original, *args, **kwargs)`."""
    setattr(instance, name, functools.partial(wrapper, getattr(instance, name)))


def _fail(future, message: str) -> None:
    """Answer a request with an error, as a worker that failed it would: the runner then stops."""
    if not future.is_done():
        future.set(beam_fn_api_pb2.InstructionResponse(instruction_id=future.instruction_id, error=message))


def _one_line(error: BaseException) -> str:
    details = getattr(error, "details", None)  # a grpc.RpcError's own message
    text = details() if callable(details) else str(error)
    lines = (text or type(error).__name__).strip().splitlines()
    return lines[0] if lines else type(error).__name__
