"""`--help` stays fast: it must not import the heavy libraries a run needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("openai", "aioboto3", "aiobotocore", "botocore", "PIL", "jsonschema", "httpx", "httpx2")

PROBE = """
import json, sys
sys.argv = ["image-analyzer", *{args!r}]
from image_analyzer.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})), file=sys.stderr)
"""


HELP_COMMANDS = [
    ["--help"],
    ["run", "--help"],
    ["validate", "--help"],
    ["report", "--help"],
    ["batch", "submit", "--help"],
    ["schemas", "list", "--help"],
]


@pytest.mark.parametrize("args", HELP_COMMANDS)
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    code = PROBE.format(args=args, heavy=set(HEAVY))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert loaded == []
    assert "Usage" in proc.stdout
