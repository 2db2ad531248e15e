"""The docs that are generated from the code are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_help_output() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_has_exactly_the_two_marked_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- setup:main -->") == 1
    assert readme.count("<!-- setup:test -->") == 1
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_block = readme.split("<!-- setup:test -->", 1)[1].split("```", 2)[1]
    command = test_block.split("\n", 1)[1].strip()
    assert command in ci
