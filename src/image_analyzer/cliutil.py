"""Small helpers for command bodies that live outside `cli.py` (nothing may import `cli`)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def guarded(work: Callable[[], int], *, debug: bool) -> int:
    """Run a command body: our errors become one line on stderr and their exit code, never a traceback."""
    from image_analyzer.errors import ImageAnalyzerError

    try:
        return int(work())
    except ImageAnalyzerError as exc:
        if debug:
            raise
        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except Exception as exc:
        if debug:
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
        return 1


def error_line(message: str) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"error: {first_line}\n")


def given(**flags: object) -> dict[str, object]:
    """Only the flags the user gave, so the environment and defaults fill in the rest."""
    return {
        name: value
        for name, value in flags.items()
        if value is not None and value != [] and value is not False
    }
