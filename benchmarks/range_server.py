"""A stand-in for an object store on loopback: an HTTP server with byte ranges, directory listings and a delay.

    with RangeServer(folder, delay=0.020) as server:
        server.url("ILSVRC2012_img_train.tar")   # http://127.0.0.1:<port>/ILSVRC2012_img_train.tar
        server.requests()                        # what it answered: method, path, range, status, bytes sent

Python's http.server lists folders (an index page of links, which fsspec's HTTPFileSystem
reads as a listing) but answers every GET with the whole file. This one also serves a single
byte range (`Range: bytes=a-b`, `bytes=a-` or `bytes=-n`) as a 206 with exactly those bytes
(os.sendfile), so that a ranged read costs what the range costs, as on an object store, and it
sends an ETag. Before answering each request it sleeps `delay` seconds: the round trip of a
real network, which requests in flight at once wait out together, as they would there. It
listens on 127.0.0.1 only, with a thread per connection and keep-alive (HTTP/1.1).

The remote benchmark (benchmarks/remote.py) measures builds from it, and the tests build from it
(tests/test_remote.py).
"""
from __future__ import annotations

import dataclasses
import http.server
import os
import re
import sys
import threading
import time
import urllib.parse
from typing import Optional

__all__ = ["RangeServer", "ServedRequest", "HOST"]

HOST = "127.0.0.1"  # loopback only
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclasses.dataclass(frozen=True)
class ServedRequest:
    method: str
    path: str  # the URL's path, unquoted
    range: Optional[str]  # the Range header, as sent
    status: int
    sent: int  # body bytes sent
    at: float = 0.0  # when it came in, in seconds on time.monotonic()


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection serves many requests
    server: _Server

    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass  # the server keeps its own log (requests())

    def _record(self, status: int, sent: int) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.server.record(ServedRequest(self.command, path, self.headers.get("Range"), status, sent, self._came))

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def send_response(self, code, message=None):
        self._status = int(code)
        super().send_response(code, message)

    def copyfile(self, source, outputfile):  # the base class's body of an index page or an error
        data = source.read()
        outputfile.write(data)
        self._body = len(data)

    def _answer(self, send_body: bool) -> None:
        self.server.answering(True)
        try:
            self._answer_now(send_body)
        finally:
            self.server.answering(False)

    def _answer_now(self, send_body: bool) -> None:
        self._came = time.monotonic()
        if self.server.delay:
            time.sleep(self.server.delay)
        path = self.translate_path(self.path)
        if not os.path.isfile(path):  # a folder's index page (or a redirect to its name with a slash), or a 404
            self._status, self._body = 0, 0
            if send_body:
                super().do_GET()
            else:
                super().do_HEAD()
            self._record(self._status, self._body)
            return
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            start, end, status = 0, size, 200
            wanted = self.headers.get("Range")
            if wanted:
                match = _RANGE.match(wanted.strip())
                if match is None or not (match.group(1) or match.group(2)):
                    self._refuse(size)
                    return
                first, last = match.group(1), match.group(2)
                if first:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
                else:  # the last n bytes
                    start = max(0, size - int(last))
                if start >= size or end <= start:
                    self._refuse(size)
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            sent = 0
            if send_body and end > start:
                self.wfile.flush()
                sent = self.connection.sendfile(f, start, end - start)
            self._record(status, sent)

    def _refuse(self, size: int) -> None:
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._record(416, 0)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: str, delay: float):
        self.folder = folder
        self.delay = delay
        self.log: list[ServedRequest] = []
        self.lock = threading.Condition()
        self.in_flight = 0  # requests being answered: each is logged once its last byte is sent
        super().__init__((HOST, 0), lambda *args: _Handler(*args, directory=folder))

    def handle_error(self, request, client_address):
        """A client that closes its connection (a cancelled read-ahead) is no error of the server's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, request: ServedRequest) -> None:
        with self.lock:
            self.log.append(request)

    def answering(self, started: bool) -> None:
        with self.lock:
            self.in_flight += 1 if started else -1
            self.lock.notify_all()


class RangeServer:
    """The server on 127.0.0.1:<a free port>, serving `folder`; stopped on exit."""

    def __init__(self, folder: str, delay: float = 0.0):
        self._folder = os.path.abspath(folder)
        self._delay = delay
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.root = ""

    def start(self) -> RangeServer:
        self._server = _Server(self._folder, self._delay)
        host, port = self._server.server_address[:2]
        assert host == HOST, host
        self.root = f"http://{HOST}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="range-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._delay = seconds
        if self._server is not None:
            self._server.delay = seconds

    def url(self, path: str = "") -> str:
        """The URL of a path below the folder ("" for the folder itself, with its trailing slash)."""
        return f"{self.root}/{urllib.parse.quote(path)}"

    def requests(self) -> list[ServedRequest]:
        """Every request answered so far. A client has its answer just before the server logs it:
        this first waits (up to 5 s) for the requests being answered."""
        assert self._server is not None
        server = self._server
        with server.lock:
            server.lock.wait_for(lambda: server.in_flight == 0, timeout=5.0)
            return list(server.log)

    def clear_log(self) -> None:
        assert self._server is not None
        with self._server.lock:
            self._server.log.clear()
