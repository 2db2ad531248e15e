"""What the S3 source and the S3 output store share: one lazily opened client, and error translation.

aioboto3/botocore are imported inside functions only, so importing this module (and the CLI's `--help`)
stays cheap. Every botocore/aiohttp exception is turned into an `S3Problem`: a kind the caller maps to
one of our exception classes, and a one-line, secret-free message naming the bucket, key or setting.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

DEFAULT_MAX_ATTEMPTS = 5
"""botocore "standard" retry mode: total attempts per request, on throttling, 5xx and dropped connections."""

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0

ProblemKind = Literal[
    "credentials", "missing_bucket", "missing_key", "denied", "unreachable", "invalid", "other"
]

_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "Forbidden"})
_REGION_CODES = frozenset(
    {"PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"}
)
_NO_CREDENTIALS_HINT = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or pass --profile "
    "(or run where an instance role is available)"
)


@dataclass(frozen=True, slots=True)
class S3Connection:
    """Where and as whom to talk S3. Credentials are never here: they come from the AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    def describe_endpoint(self) -> str:
        return redact_url(self.endpoint_url) if self.endpoint_url else "AWS S3"


@dataclass(frozen=True, slots=True)
class S3Problem:
    kind: ProblemKind
    message: str


def redact_url(url: str) -> str:
    """Drop any `user:password@` from an endpoint URL before it goes into a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def s3_url(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def s3_exceptions() -> tuple[type[BaseException], ...]:
    """The foreign exceptions an S3 call can raise, to catch at our boundary (imported lazily)."""
    import aiohttp
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError, OSError)


def client_config(connection: S3Connection, *, pool_size: int, max_attempts: int) -> Any:
    """botocore client config: a pool as large as the download concurrency, and bounded retries."""
    from aiobotocore.config import AioConfig

    options: dict[str, Any] = {}
    if connection.endpoint_url:
        # S3-compatible servers (MinIO, SeaweedFS, moto, R2 on a custom host) all speak path-style,
        # while virtual-host style needs wildcard DNS; and several reject botocore's default
        # aws-chunked CRC trailers, which only AWS needs to see when an operation requires them.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return AioConfig(
        max_pool_connections=pool_size,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        user_agent_extra="image-analyzer",
        **options,
    )


class SharedClient:
    """One aiobotocore S3 client, opened on first use (even under concurrent first calls), closed once."""

    def __init__(self, connection: S3Connection, *, pool_size: int, max_attempts: int = DEFAULT_MAX_ATTEMPTS):
        self.connection = connection
        self._pool_size = pool_size
        self._max_attempts = max_attempts
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        """The endpoint actually used (botocore resolves the AWS one from the region), for messages."""
        if self._client is not None:
            return redact_url(str(self._client.meta.endpoint_url))
        return self.connection.describe_endpoint()

    async def get(self) -> Any:
        """The open client. Raises botocore exceptions (e.g. `ProfileNotFound`) for callers to classify."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._open()
        return self._client

    async def _open(self) -> Any:
        import aioboto3

        session = aioboto3.Session(profile_name=self.connection.profile)
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.connection.endpoint_url,
                region_name=self.connection.region,
                config=client_config(
                    self.connection, pool_size=self._pool_size, max_attempts=self._max_attempts
                ),
            )
        )
        self._stack = stack
        return client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


SOURCE_BUCKET_SETTING = "--bucket / S3_BUCKET_NAME"


def classify(
    exc: BaseException,
    *,
    bucket: str,
    key: str | None = None,
    endpoint: str,
    setting: str = SOURCE_BUCKET_SETTING,
) -> S3Problem:
    """Turn a botocore/aiohttp exception into a kind and a one-line message naming what is at fault.

    `setting` is the flag that chose the bucket, for the messages that say which one to fix.
    """
    from botocore import exceptions as bx

    where = s3_url(bucket, key or "")
    if isinstance(exc, bx.ProfileNotFound):
        return S3Problem("credentials", f"AWS profile {exc.kwargs.get('profile')!r} not found (--profile)")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return S3Problem("credentials", _NO_CREDENTIALS_HINT)
    if isinstance(exc, bx.ClientError):
        return _classify_client_error(
            exc, where=where, bucket=bucket, key=key, endpoint=endpoint, setting=setting
        )
    if isinstance(exc, bx.SSLError):
        return S3Problem("unreachable", f"TLS handshake with S3 endpoint {endpoint} failed (--endpoint-url)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ProxyConnectionError):
        return S3Problem(
            "unreachable", f"cannot connect to S3 endpoint {endpoint}: check --endpoint-url and the network"
        )
    if isinstance(exc, bx.ParamValidationError):
        report = str(exc.kwargs.get("report", exc))
        if "Invalid bucket name" in report:
            return S3Problem("invalid", f"invalid S3 bucket name {bucket!r} ({setting})")
        return S3Problem("invalid", f"invalid S3 request for {where}: {one_line(report)[:200]}")
    if isinstance(exc, bx.BotoCoreError | TimeoutError | OSError):
        return S3Problem("other", f"S3 transfer of {where} from {endpoint} failed: {one_line(exc)}")
    return S3Problem("other", f"S3 request for {where} failed: {type(exc).__name__}: {one_line(exc)}")


def _classify_client_error(
    exc: Any, *, where: str, bucket: str, key: str | None, endpoint: str, setting: str
) -> S3Problem:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = one_line(error.get("Message") or code or status)
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
        return S3Problem("missing_bucket", f"S3 bucket {bucket!r} does not exist at {endpoint} ({setting})")
    if code in ("NoSuchKey", "404", "NotFound"):
        return S3Problem("missing_key", f"{where} does not exist")
    if code in _CREDENTIAL_CODES:
        return S3Problem(
            "credentials",
            f"AWS credentials rejected by {endpoint} ({code}): check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or --profile",
        )
    if code in _DENIED_CODES:
        return S3Problem(
            "denied", f"access denied to {where} at {endpoint}: see the IAM policy in docs/s3.md"
        )
    if code in _REGION_CODES:
        return S3Problem("invalid", f"S3 bucket {bucket!r} is in another region: pass --region ({detail})")
    return S3Problem("other", f"S3 error for {where} at {endpoint}: {code or status} {detail}".rstrip())
