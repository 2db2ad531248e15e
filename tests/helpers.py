"""Test helpers: photo trees made with Pillow, and running the CLI in-process or as the installed command."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from typer.testing import CliRunner

from image_analyzer.cli import app

PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small JPEG whose pixels (and so bytes and hash) differ for every seed."""
    image = Image.new("RGB", size, PALETTE[seed % len(PALETTE)])
    for x in range(seed % size[0] + 1):
        image.putpixel((x, seed % size[1]), (seed * 7 % 256, seed * 13 % 256, seed * 29 % 256))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_tree(
    root: Path, layout: Mapping[str, Mapping[str, int]], *, start: int = 0
) -> dict[str, list[Path]]:
    """Create `root/<property>/<category>/img_NN.jpg` files; returns the paths per `property/category`."""
    made: dict[str, list[Path]] = {}
    seed = start
    for property_id, categories in layout.items():
        for category, count in categories.items():
            folder = root / property_id / category
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                path = folder / f"img_{n:02d}.jpg"
                path.write_bytes(jpeg_bytes(seed))
                seed += 1
                made.setdefault(f"{property_id}/{category}", []).append(path)
    return made


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


def invoke(args: Sequence[str], env: Mapping[str, str] | None = None) -> CliResult:
    """Run the CLI in this process (fast); the fake server must run in another thread."""
    runner = CliRunner()
    result = runner.invoke(app, list(args), env=dict(env or {}), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def installed_command() -> str:
    found = shutil.which("image-analyzer", path=str(Path(sys.executable).parent))
    assert found is not None, "image-analyzer is not installed next to this interpreter"
    return found


def run_installed(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the installed `image-analyzer` command as a user would."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGE_ANALYZER_", "S3_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [installed_command(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def property_json_files(folder: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
