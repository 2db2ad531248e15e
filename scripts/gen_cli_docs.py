"""Write docs/cli.md from the CLI's own `--help`, so the reference cannot drift from the code.

.venv/bin/python scripts/gen_cli_docs.py          # rewrite docs/cli.md
.venv/bin/python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import typer
from typer.testing import CliRunner

from image_analyzer.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
WIDTH = 110


def _commands(group: click.Command, path: list[str]) -> list[list[str]]:
    found = [path]
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            found += _commands(group.commands[name], [*path, name])
    return found


def _help(args: list[str]) -> str:
    env = {"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    result = CliRunner().invoke(app, [*args, "--help"], env=env, terminal_width=WIDTH)
    return "\n".join(line.rstrip() for line in result.output.strip().splitlines())


def render() -> str:
    root = typer.main.get_command(app)
    parts = [
        "# Command-line reference\n",
        "Generated from `--help` by `scripts/gen_cli_docs.py`; do not edit by hand.\n",
    ]
    for path in _commands(root, []):
        title = " ".join(["image-analyzer", *path])
        parts.append(f"## `{title}`\n\n```text\n{_help(path)}\n```\n")
    return "\n".join(parts)


def main() -> int:
    os.environ.setdefault("COLUMNS", str(WIDTH))
    text = render()
    if "--check" in sys.argv:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print("docs/cli.md is out of date: run .venv/bin/python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
