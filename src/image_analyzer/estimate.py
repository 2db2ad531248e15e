"""Prompt-token estimates before a request is sent (budget gate, rate limiter, `--dry-run`).

The service counts the text prompt, the response schema and the images. Text is estimated at about four
characters a token (tiktoken would need encoding files it downloads on first use, which an offline
machine may not have); images by the per-model tile/patch formulas in `images.estimate_image_tokens`.
Estimates are reconciled with the `usage` each response returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 12
"""Role markers and message framing the service adds around each request."""


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def schema_tokens(response_format: Mapping[str, Any] | None) -> int:
    if not response_format:
        return 0
    return text_tokens(json.dumps(response_format, separators=(",", ":")))


def prompt_tokens(
    *, texts: Iterable[str], response_format: Mapping[str, Any] | None, image_tokens: Iterable[int]
) -> int:
    return (
        MESSAGE_OVERHEAD_TOKENS
        + sum(text_tokens(t) for t in texts)
        + schema_tokens(response_format)
        + sum(image_tokens)
    )
