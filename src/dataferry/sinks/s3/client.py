"""An S3 client from the standard AWS variables, and S3 failures as dataferry errors.

Endpoint, region and credentials come from where every AWS tool reads them:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` (or
``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the shared config files. A plain
``http://`` endpoint is refused unless ``AWS_ALLOW_HTTP`` is true (a local
server): credentials and data would cross the network in clear otherwise.

botocore is imported here only, lazily: a local destination never loads it.
Messages never carry credentials (botocore's own never do; we add none).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..._exceptions import AuthenticationError, ConfigError, DestinationError, TransientError

ALLOW_HTTP_ENV = "AWS_ALLOW_HTTP"
_TRUE = {"1", "true", "yes", "on"}
# Parallel part uploads share one connection pool.
MAX_CONNECTIONS = 32

# S3 error codes: wrong credentials (exit 3), no permission or no bucket (exit 7).
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_DENIED_CODES = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_NO_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "RequestTimeTooSkewed",
}


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client() -> Any:
    """A thread-safe botocore S3 client configured from the environment."""
    endpoint = endpoint_url()
    if endpoint is not None:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"AWS_ENDPOINT_URL: expected an http:// or https:// URL, got {endpoint!r}"
            )
        if (
            endpoint.startswith("http://")
            and os.environ.get(ALLOW_HTTP_ENV, "").lower() not in _TRUE
        ):
            raise ConfigError(
                f"AWS_ENDPOINT_URL {endpoint} is plain http: credentials and data would cross "
                f"the network in clear; use https, or set {ALLOW_HTTP_ENV}=true for a local server"
            )
    try:
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError:
        raise ConfigError(
            "s3:// destinations need the S3 client library: pip install 'dataferry[s3]'"
        ) from None

    botocore_log = logging.getLogger("botocore")
    if botocore_log.level == logging.NOTSET:
        # Its INFO says where credentials came from, on every run: noise for a user.
        botocore_log.setLevel(logging.WARNING)
    try:
        session = botocore.session.Session()
        region = (
            os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or session.get_config_variable("region")
            or "us-east-1"
        )
        config = botocore.config.Config(
            # Custom endpoints (MinIO, SeaweedFS, Ceph) rarely have per-bucket host names.
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=MAX_CONNECTIONS,
            # The engine checks sha256 end to end; a CRC per request would cost CPU for nothing.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.create_client("s3", region_name=region, endpoint_url=endpoint, config=config)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"AWS_PROFILE: {exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"S3 client configuration: {exc}") from None


def request_failures() -> tuple[type[Exception], ...]:
    """What a failed S3 request raises (for best-effort calls that may fail)."""
    import botocore.exceptions as bex

    return (bex.BotoCoreError, bex.ClientError)


def s3_error(exc: BaseException, where: str, *, starting: bool = False) -> BaseException:
    """The dataferry error for an S3 failure at where (an s3:// URL).

    starting: the first request of a run (checking the bucket): an unreachable
    endpoint is then a destination problem (exit 7), not something to retry.
    Anything not recognised is returned unchanged.
    """
    import botocore.exceptions as bex

    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return AuthenticationError(
            f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIAL_CODES:
            return AuthenticationError(
                f"{where}: the S3 server rejected the credentials ({code}); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if code in _NO_BUCKET_CODES and status == 404:
            return DestinationError(f"{where}: the bucket does not exist ({code}); create it first")
        if code in _DENIED_CODES:
            return DestinationError(
                f"{where}: access denied by the S3 server; these credentials may not write there"
            )
        if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return TransientError(f"{where}: S3 server error ({code or status})")
        return DestinationError(
            f"{where}: S3 request refused ({code or status}: {error.get('Message', '')})"
        )
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError):
        message = f"{where}: cannot reach the S3 endpoint {endpoint_url() or '(AWS default)'}"
        return DestinationError(message) if starting else TransientError(message)
    if isinstance(exc, bex.ReadTimeoutError | bex.ConnectionClosedError | bex.HTTPClientError):
        return TransientError(f"{where}: S3 connection failed ({type(exc).__name__})")
    if isinstance(exc, bex.BotoCoreError):
        return DestinationError(f"{where}: S3 request failed: {exc}")
    return exc
