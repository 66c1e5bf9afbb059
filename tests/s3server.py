"""A real S3 API server on loopback for the tests: moto's server, in this process, on a free port.

    with S3Server() as server:           # 127.0.0.1 only, never another address
        server.env                       # environment for subprocesses (the CLI and its Beam workers)
        server.fs                        # an s3fs filesystem on it, for the test itself
        server.requests                  # every request it answered: method, path, range, status, bytes sent

The subprocesses find the server through fsspec's own configuration variables:
fsspec/config.py reads ``FSSPEC_<PROTOCOL>_<KWARG>`` at import and passes the kwarg to the
filesystem's constructor, so ``FSSPEC_S3_ENDPOINT_URL`` becomes ``S3FileSystem(endpoint_url=...)``.
botocore takes the dummy credentials and the region from the standard AWS variables.

The server is moto's WSGI application (what ThreadedMotoServer serves) under werkzeug's
threaded server, wrapped to log what it sends: that is how a test proves that archives are
read by ranged GETs and never downloaded whole, across the Beam worker processes it cannot
instrument.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import urllib.parse
from typing import Iterator, Optional

import fsspec.config
import pytest

HOST = "127.0.0.1"  # loopback only
BUCKET = "imagenet-shards-test"


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    bucket: str
    key: str
    range: Optional[str]  # the Range header, as sent
    status: int
    sent: int  # body bytes the server sent
    query: str = ""  # the query string ("uploads", "partNumber=2&uploadId=..." in a multipart upload)


class _LoggingApp:
    """WSGI middleware: records each request and counts the body bytes of its response."""

    def __init__(self, app, log: list, lock: threading.Condition):
        self._app = app
        self._log = log
        self._lock = lock
        self.pending = 0  # requests whose response is not closed yet

    def __call__(self, environ, start_response):
        with self._lock:
            self.pending += 1
        status = []

        def _start(s, headers, exc_info=None):
            status.append(int(s.split()[0]))
            return start_response(s, headers, exc_info)

        body = self._app(environ, _start)
        path = urllib.parse.unquote(environ.get("PATH_INFO", ""))
        bucket, _, key = path.lstrip("/").partition("/")
        return _CountingBody(body, lambda sent: self._record(Request(
            environ["REQUEST_METHOD"], bucket, key, environ.get("HTTP_RANGE"), status[0] if status else 0, sent,
            environ.get("QUERY_STRING", ""))))

    def _record(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)
            self.pending -= 1
            self._lock.notify_all()


class _CountingBody:
    def __init__(self, body, done):
        self._body = body
        self._done = done
        self._sent = 0

    def __iter__(self):
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            self._done(self._sent)


def _QuietHandler(base):
    """moto's request handler without werkzeug's line per request on stderr (the log is kept above)."""

    class Quiet(base):
        def log_request(self, *args, **kwargs):
            pass

    return Quiet


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>, with one bucket; stopped (and its state dropped) on exit."""

    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self._requests: list[Request] = []
        self._lock = threading.Condition()
        self._app = None
        self._server = None
        self._thread = None
        self.endpoint = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> S3Server:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = self._app = _LoggingApp(DomainDispatcherApplication(create_backend_app), self._requests, self._lock)
        # Port 0: the kernel picks a free port; threaded, so the Beam workers' requests run in parallel.
        self._server = make_server(HOST, 0, app, threaded=True, request_handler=_QuietHandler(MotoRequestHandler))
        host, port = self._server.server_address[:2]
        assert host == HOST, host
        self.endpoint = f"http://{HOST}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()
        self.fs.mkdir(self.bucket)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        # moto keeps its state in process-wide backends: reset them so nothing outlives the server.
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            opener.open(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10).close()
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- clients -----------------------------------------------------------------------

    @property
    def env(self) -> dict:
        """Variables that point botocore and fsspec (s3fs) at this server, and nowhere else."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # no profile or config file of the machine's user may redirect or sign differently
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
            "NO_PROXY": f"{HOST},localhost",
            "no_proxy": f"{HOST},localhost",
        }

    @property
    def fs(self):
        """An s3fs filesystem on this server (no listing cache: builds run in other processes)."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing", token="testing",
                                 skip_instance_cache=True,
                                 use_listings_cache=False)

    def url(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path}".rstrip("/")

    # --- what it served ----------------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request answered so far (waits a moment for responses still being sent)."""
        with self._lock:
            self._lock.wait_for(lambda: self._app.pending == 0, timeout=10)
            return list(self._requests)

    def clear_log(self) -> None:
        with self._lock:
            self._requests.clear()


@contextlib.contextmanager
def s3_server_for_this_process(bucket: str = BUCKET) -> Iterator[S3Server]:
    """A server, with this process's environment and fsspec's config pointed at it until the block
    ends: what a test needs that reads or builds in this process, or in subprocesses it starts."""
    with S3Server(bucket) as server, pytest.MonkeyPatch.context() as mp:
        for name, value in server.env.items():
            mp.setenv(name, value)
        # fsspec read FSSPEC_* at import, long before: set what it would have read from them.
        mp.setitem(fsspec.config.conf, "s3", {**fsspec.config.conf.get("s3", {}), "endpoint_url": server.endpoint})
        yield server
