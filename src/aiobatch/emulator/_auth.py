"""Shared Key verification, as the Batch service does it, as an aiohttp middleware.

A request without a valid signature is answered with the service's 401/403 error body before any handler runs,
so it never changes state or starts anything.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.typedefs import Middleware

from ._model import ServiceError

#: Headers whose values are signed, in order (the service's list).
SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)

#: How far a request's date may be from the emulator's clock.
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def string_to_sign(request: web.Request, account_name: str, *, lower_query_names: bool) -> str:
    """The canonical string a Shared Key signature covers for this request."""
    headers = {k.lower(): v for k, v in request.headers.items() if v}
    if request.method not in ("GET", "HEAD"):
        headers.setdefault("content-length", "0")
    parts = [request.method, *(headers.get(name, "") for name in SIGNED_HEADERS)]
    text = "\n".join(parts) + "\n"
    ocp = sorted((k, v) for k, v in headers.items() if "ocp-" in k)
    text += "".join(f"{k}:{v}\n" for k, v in ocp)
    raw_path, _, raw_query = request.raw_path.partition("?")
    text += f"/{account_name}{raw_path}"
    query = parse_qs(raw_query)
    if lower_query_names:
        query = {k.lower(): v for k, v in query.items()}
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def sign(key: bytes, text: str) -> str:
    """Base64 HMAC-SHA256 of ``text`` under the decoded account key."""
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode()


def _auth_failed(detail: str) -> ServiceError:
    return ServiceError(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
        "correctly including the signature.",
        [("AuthenticationErrorDetail", detail)],
    )


def verify(request: web.Request, account_name: str, key: bytes, now: dt.datetime) -> None:
    """Check the request's Shared Key signature and date.

    Raises:
        ServiceError: 401 when the Authorization header is missing, 403 when it is wrong or the date is stale.
    """
    header = request.headers.get("Authorization")
    if not header:
        raise ServiceError(
            401,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
            [("HeaderName", "Authorization")],
        )
    scheme, _, credential = header.partition(" ")
    if scheme != "SharedKey":
        raise ServiceError(
            401,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
            [("AuthenticationErrorDetail", "The aiobatch emulator accepts Shared Key authentication only.")],
        )
    name, _, signature = credential.partition(":")
    if name != account_name:
        raise _auth_failed(f"The account name in the Authorization header is not '{account_name}'.")
    date_text = request.headers.get("ocp-date") or request.headers.get("Date")
    if not date_text:
        raise ServiceError(
            403,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
            [("HeaderName", "ocp-date")],
        )
    try:
        sent = parsedate_to_datetime(date_text)
    except (TypeError, ValueError):
        raise _auth_failed("The ocp-date header is not a valid RFC 1123 date.") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=dt.timezone.utc)
    if abs(now - sent) > MAX_CLOCK_SKEW:
        raise _auth_failed(
            "Request date header too old or too far in the future: it must be within 15 minutes of the service's clock."
        )
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise _auth_failed("The signature in the Authorization header is not valid base64.") from None
    for lower in (False, True):
        expected = base64.b64decode(sign(key, string_to_sign(request, account_name, lower_query_names=lower)))
        if hmac.compare_digest(given, expected):
            return
    raise _auth_failed(
        "The MAC signature found in the HTTP request is not the same as any computed signature. Check the "
        "account key and the request's clock."
    )


def shared_key_middleware(
    account_name: str, account_key: str, on_error: Callable[[web.Request, ServiceError], web.StreamResponse]
) -> Middleware:
    """An aiohttp middleware that refuses requests without a valid Shared Key signature."""
    key = base64.b64decode(account_key)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            verify(request, account_name, key, dt.datetime.now(dt.timezone.utc))
        except ServiceError as error:
            return on_error(request, error)
        return await handler(request)

    return middleware
