"""Shared pieces of the benchmark scripts: servers as child processes, generated photo trees, and
measuring one command (wall time, CPU, peak RSS) exactly, with `os.wait4` on that one child.

Nothing here is used by the test suite. Every server started here is a child process that is
terminated (then killed) when its `with` block ends, whatever happens inside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
TOOL = str(VENV_BIN / "image-analyzer")
SERVER_START_TIMEOUT_S = 60.0


# --- photos --------------------------------------------------------------------------------------------


def photo_jpeg(seed: int, width: int, height: int, *, detail: float = 0.15, quality: int = 85) -> bytes:
    """A photo-like JPEG: smooth colour regions plus noise. `detail` is the share of noise; 0.15 gives
    about 1 MB at 12 MP, 0.45 about 3-4 MB (closer to a phone's 12 MP photo)."""
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    small = Image.new("RGB", (32, 24))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(32 * 24)])
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    image = Image.blend(image, noise, detail)
    if detail <= 0.2:
        image = image.filter(ImageFilter.SMOOTH)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class TreeShape:
    properties: int
    categories: int
    images: int
    width: int = 1024
    height: int = 768
    distinct: int = 50
    """Distinct pictures written (cycled). Within one category the images are always distinct, so the
    tool's duplicate detection sends every one of them."""

    @property
    def total(self) -> int:
        return self.properties * self.categories * self.images

    def describe(self) -> str:
        return (
            f"{self.properties} properties x {self.categories} categories x {self.images} images "
            f"({self.width}x{self.height} JPEG)"
        )


CATEGORY_NAMES = (
    "kitchen", "bedroom", "bathroom", "living_room", "dining_room",
    "exterior", "garage", "laundry", "office", "patio",
)  # fmt: skip


def category_name(index: int) -> str:
    base = CATEGORY_NAMES[index % len(CATEGORY_NAMES)]
    return base if index < len(CATEGORY_NAMES) else f"{base}_{index // len(CATEGORY_NAMES)}"


def tree_entries(shape: TreeShape) -> Iterator[tuple[str, int]]:
    """(relative path, picture index) for every image of the tree."""
    number = 0
    for p in range(shape.properties):
        for c in range(shape.categories):
            for i in range(shape.images):
                picture = number % max(shape.distinct, shape.images)
                yield f"{p:05d}/{category_name(c)}/photo_{i:03d}.jpg", picture
                number += 1


def pictures(shape: TreeShape) -> list[bytes]:
    count = max(shape.distinct, shape.images)
    return [photo_jpeg(seed, shape.width, shape.height) for seed in range(count)]


def write_tree(root: Path, shape: TreeShape) -> Path:
    """Write the tree under `root` (created) and return it."""
    data = pictures(shape)
    for relative, picture in tree_entries(shape):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[picture])
    return root


# --- measuring one command -----------------------------------------------------------------------------


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stdout: str = ""
    stderr: str = ""
    started_unix: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def json_stdout(self) -> dict[str, Any]:
        """The last line of stdout that is a JSON object (the tool's `--json` summary)."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                loaded: dict[str, Any] = json.loads(line)
                return loaded
        raise RuntimeError(f"no JSON on stdout of {self.argv[:3]}...; stderr: {self.stderr[-2000:]}")


# Linux charges a child's peak RSS with the pages it shared with its parent before `exec` (the fork's
# copy), so any child of this ~20 MiB Python process would measure at least ~20 MiB from wait4. GNU
# time is a small C program: the command forked from it is charged ~1 MiB at most, and it writes that
# child's own peak RSS (%M, KiB) to a file. Without GNU time, wait4's figure is used (an upper bound).
_GNU_TIME = Path("/usr/bin/time")


def measure_command(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900.0, cwd: Path | None = None
) -> Measured:
    """Run `argv` to completion; wall time, its own CPU (user+sys) and peak RSS from `wait4`.

    Without `cwd` the command runs in an empty temporary folder, so files it writes relative to its
    working directory (the default log file `logs/ai-analyzer.log`) and files it would read from there
    (`.env`, `seed.csv`) stay out of the picture."""
    with scratch_dir("cwd") as scratch:
        return _measure(argv, env=env, timeout=timeout, cwd=cwd or scratch)


def _measure(argv: Sequence[str], *, env: dict[str, str] | None, timeout: float, cwd: Path) -> Measured:
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss_file,
    ):
        wrapper = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] if _GNU_TIME.exists() else []
        started_unix = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            [*wrapper, *argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )
        # A blocking wait4 on this one child: exact wall time, and its own rusage (not the sum of all
        # children this process ever waited for, as RUSAGE_CHILDREN would give).
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            argv=list(argv),
            returncode=process.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mib=_child_rss_kib(rss_file.read(), usage.ru_maxrss) / 1024,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            started_unix=started_unix,
        )


def _child_rss_kib(gnu_time_output: str, fallback_kib: int) -> int:
    """The last line of GNU time's output is %M (it may be preceded by 'Command exited with...')."""
    lines = gnu_time_output.strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].strip().isdigit() else fallback_kib


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for `image-analyzer`: no host OpenAI/AWS settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGE_ANALYZER_", "AWS_"))}
    env.pop("S3_BUCKET_NAME", None)
    env["OPENAI_API_KEY"] = "sk-benchmark"
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


# --- the simulated OpenAI server --------------------------------------------------------------------------


class Sim:
    """A running `sim_server.py`; `stats()` and `reset()` talk to its /sim endpoints."""

    def __init__(self, url: str, args: Sequence[str]) -> None:
        self.url = url
        self.base_url = url + "/v1"
        self.args = list(args)

    def stats(self) -> dict[str, Any]:
        return _http_json(self.url + "/sim/stats")

    def reset(self) -> None:
        _http_json(self.url + "/sim/reset", method="POST")


def _http_json(url: str, method: str = "GET") -> dict[str, Any]:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(request, timeout=30) as response:
        loaded: dict[str, Any] = json.loads(response.read())
        return loaded


@contextlib.contextmanager
def sim_server(*args: str) -> Iterator[Sim]:
    """Start `sim_server.py ARGS` on a free port of 127.0.0.1; stopped when the block ends."""
    argv = [sys.executable, str(HERE / "sim_server.py"), "--host", "127.0.0.1", "--port", "0", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"sim_server.py did not start: {line!r}")
        yield Sim(line.removeprefix("listening on "), args)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- moto's S3 server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto in server mode on 127.0.0.1; yields its endpoint URL, stopped when the block ends."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, **AWS_TEST_ENV}
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError("moto.server exited at start")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("moto.server did not answer in time")
            time.sleep(0.1)
        yield url
    finally:
        _stop(process)


def upload_tree(endpoint: str, bucket: str, shape: TreeShape, *, threads: int = 16) -> None:
    """Create `bucket` on the S3 server and put every image of `shape` into it."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(max_pool_connections=threads, s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=bucket)
    data = pictures(shape)

    def put(entry: tuple[str, int]) -> None:
        client.put_object(Bucket=bucket, Key=entry[0], Body=data[entry[1]], ContentType="image/jpeg")

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, tree_entries(shape)):
            pass


# --- output -------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"ia-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def machine_line() -> str:
    import platform

    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {time.strftime('%Y-%m-%d')}"
    )
