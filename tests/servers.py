"""Real services the storage and distribution tests talk to, each on the loopback address only.

- `MotoS3`: moto's S3-compatible server (`python -m moto.server`) in a child process on
  127.0.0.1 and a free port; `env()` gives the AWS_* variables that point boto3, s3fs and DALI's
  AWS SDK client at it (dummy credentials).
- `http_server(folder)`: a loopback `http.server` serving a folder, in a thread.

The fixtures in conftest.py start them once per session and stop them at its end.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen | None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with code {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


class MotoS3:
    """moto's S3 server in a child process on the loopback address (start / stop, or `with`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The variables that point boto3 / s3fs / DALI at this server with dummy credentials."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint}

    def start(self) -> MotoS3:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(self.port, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns its URL `s3://name`."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)
        return f"s3://{name}"

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:       # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def http_server(folder: str | Path) -> Iterator[str]:
    """Serve `folder` over HTTP on the loopback address; yields the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(folder))
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
