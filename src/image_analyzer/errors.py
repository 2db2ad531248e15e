"""The exception hierarchy, in one place.

Every error the tool raises on purpose is an `ImageAnalyzerError`. Its message is one line that names the
file, flag, bucket or setting at fault and, where there is one, what to do next. The CLI prints that line
and exits with `exit_code`; a traceback is shown only with `--debug`. Foreign exceptions are translated at
the boundary that meets them (`raise SourceError(...) from exc`).
"""

from __future__ import annotations

from collections.abc import Mapping


class ImageAnalyzerError(Exception):
    """Base class. `exit_code` is what the CLI exits with when this ends the run."""

    exit_code = 1


class ConfigError(ImageAnalyzerError):
    """A flag, environment variable or input file is wrong: fix it and run again."""

    exit_code = 2


class SourceError(ImageAnalyzerError):
    """The image source (folder or bucket) cannot be read as a whole."""

    exit_code = 2


class SchemaError(ImageAnalyzerError):
    """A schema set is missing, corrupt, or does not match its CIDs."""

    exit_code = 2


class ModelCallError(ImageAnalyzerError):
    """A model request failed.

    `retryable` says whether sending it again can help (429 rate limit, 5xx, timeouts, connection
    errors); `fatal` says the whole run must stop (bad key, quota exhausted). `retry_after` is the
    server's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        fatal: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        kind: str = "error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.fatal = fatal
        self.status = status
        self.retry_after = retry_after
        self.kind = kind
        self.headers: Mapping[str, str] = headers or {}
        """Response headers (lower-case names), so a 429 still teaches the rate limiter."""


class AnswerError(ImageAnalyzerError):
    """The model answered, but the answer cannot be used (not JSON, schema-invalid, truncated, refused)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class OutputError(ImageAnalyzerError):
    """Output cannot be written (disk full, permission denied, another run holds the lock)."""

    exit_code = 1


class BudgetExceeded(ImageAnalyzerError):
    """The next request would take spend over `--max-cost`."""

    exit_code = 1
