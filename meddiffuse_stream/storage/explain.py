"""Storage failures the user can fix, in one line: which URL, which endpoint, which variable or option to check.

Recognised: no credentials, credentials refused (403: unknown key, wrong secret, no permission), a bucket that does
not exist, and an endpoint that never answered (connection refused, a host that does not resolve, a TLS failure:
see :mod:`.contact` for when that is final). Anything else is left as it is. Values of storage options and
variables are never shown (they may be secrets), only their names — and the endpoint URL, which is not one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .contact import unreachable_kind, wrapped_errors
from .errors import StorageAccessError, StorageError, StorageNotFoundError, StorageUnreachableError
from .retry import ShardReadError

__all__ = ["EndpointSettings", "explain_failure"]

_S3 = ("s3", "s3a")
_KEYS_OPTIONS = 'storage_options "key" / "secret"'
_KEYS_VARIABLES = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
_ENDPOINT_PLACES = 'AWS_ENDPOINT_URL or storage_options["client_kwargs"]["endpoint_url"]'
_CODE_SAYS = {
    "InvalidAccessKeyId": "the access key is unknown there",
    "SignatureDoesNotMatch": "the secret does not match the access key",
    "AccessDenied": "this identity may not do that",
}
_CODE = re.compile(r"\b(InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|NoSuchBucket)\b")


@dataclass(frozen=True)
class EndpointSettings:
    """Where a location's requests go and where its identity comes from, named as the user would set them."""

    protocol: str
    endpoint: str | None  # the URL requests go to, when one is configured
    endpoint_setting: str  # the option or variable that set it (or where to set one)
    credentials: str  # the options or variables the identity comes from, or "" when none is configured

    @classmethod
    def of(
        cls, protocol: str, storage_options: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> EndpointSettings:
        environ = os.environ if environ is None else environ
        client = storage_options.get("client_kwargs") or {}
        candidates: list[tuple[str, Any]] = [
            ('storage_options["endpoint_url"]', storage_options.get("endpoint_url")),
            ('storage_options["client_kwargs"]["endpoint_url"]', client.get("endpoint_url")),
        ]
        if protocol in _S3:
            candidates += [(name, environ.get(name)) for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")]
        setting, endpoint = next(((n, str(v)) for n, v in candidates if v), (_ENDPOINT_PLACES, None))
        return cls(protocol, endpoint, setting, _credentials(storage_options, environ) if protocol in _S3 else "")

    @property
    def shown(self) -> str:
        """The endpoint for a message: its URL, or the filesystem's default."""
        return f"endpoint {self.endpoint}" if self.endpoint else f"the default {self.protocol} endpoint"


def _credentials(options: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    if options.get("anon"):
        return "anon=True"
    if options.get("key") or options.get("secret"):
        return _KEYS_OPTIONS
    if environ.get("AWS_ACCESS_KEY_ID") or environ.get("AWS_SECRET_ACCESS_KEY"):
        return _KEYS_VARIABLES
    if environ.get("AWS_PROFILE"):
        return "the profile named by AWS_PROFILE"
    return ""


def explain_failure(error: BaseException, what: str, settings: EndpointSettings) -> StorageError | None:
    """A one-line :class:`.errors.StorageError` for ``error`` (raised while reaching ``what``), or ``None`` when it
    is not a failure of settings the user can fix (the caller then raises ``error`` unchanged). Retries that ran
    out (:class:`~.retry.ShardReadError`) are left as they are: that message already names the endpoint and the
    policy's settings."""
    if isinstance(error, StorageError | ShardReadError) or not isinstance(error, Exception):
        return None
    chain = list(wrapped_errors(error))
    names = {type(item).__name__ for item in chain}
    text = " ".join(str(item) for item in chain)
    code = _s3_code(chain, text)
    where = f"{what} ({settings.shown})"
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return StorageAccessError(
            f"{where}: no credentials found: set {_KEYS_VARIABLES} (or {_KEYS_OPTIONS}), or anon=True for a "
            "public bucket"
        )
    if code == "NoSuchBucket" or "bucket does not exist" in text.lower():
        bucket = urlsplit(what).netloc or what
        return StorageNotFoundError(
            f"{where}: bucket {bucket!r} does not exist there: check the bucket name in the URL, and that "
            f"{settings.endpoint_setting} names the server that holds it"
        )
    if any(isinstance(item, PermissionError) for item in chain) or code in _CODE_SAYS:
        return StorageAccessError(f"{where}: access denied{_why(code)}: {_check_keys(settings)}")
    kind = unreachable_kind(error)
    if kind is not None:
        return StorageUnreachableError(f"{where}: {_unreachable(kind, settings, text)}")
    return None


def _s3_code(chain: list[BaseException], text: str) -> str | None:
    for item in chain:
        response = getattr(item, "response", None)
        if isinstance(response, dict):
            found = (response.get("Error") or {}).get("Code")
            if found:
                return str(found)
    match = _CODE.search(text)
    return match.group(1) if match else None


def _why(code: str | None) -> str:
    if code in _CODE_SAYS:
        return f" ({code}: {_CODE_SAYS[code]})"
    return f" ({code})" if code else " (403)"


def _check_keys(settings: EndpointSettings) -> str:
    """What to check for a refused identity: the settings it came from, named as the user set them."""
    rights = "and what this identity may do in the bucket"
    if settings.protocol not in _S3:
        return f"check the credentials in storage_options or the environment, {rights}"
    used = settings.credentials
    if used == "anon=True":
        return f"anonymous access (anon=True) is refused: drop anon=True and set {_KEYS_VARIABLES}"
    if used == _KEYS_OPTIONS:
        return f"check {used} (they take precedence over {_KEYS_VARIABLES}) {rights}"
    if used:
        return f"check {used} {rights}"
    return f"no key is configured (an instance role or config file answered?): set {_KEYS_VARIABLES}, {rights}"


def _unreachable(kind: str, settings: EndpointSettings, text: str) -> str:
    if kind == "refused":
        return (
            f"connection refused, and this endpoint has not answered since the process started: check the host "
            f"and port in {settings.endpoint_setting}, and that the server is running"
        )
    if kind == "unresolved":
        host = urlsplit(settings.endpoint).hostname if settings.endpoint else None
        named = f"the host {host!r}" if host else "the endpoint's host"
        return f"{named} does not resolve: check the host name in {settings.endpoint_setting}"
    reason = (
        "the server does not speak TLS"
        if re.search(r"wrong version number|record layer|invalidcontenttype", text, re.IGNORECASE)
        else "its certificate is not trusted"
        if re.search(r"certificate|issuer", text, re.IGNORECASE)
        else "the handshake failed"
    )
    return (
        f"TLS failure ({reason}): for a server without TLS use an http:// endpoint in {settings.endpoint_setting}; "
        'for a private certificate authority set AWS_CA_BUNDLE (or storage_options["client_kwargs"]["verify"]) '
        "to its certificate file"
    )
