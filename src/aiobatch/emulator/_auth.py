"""Authentication, as the Batch service does it, as an aiohttp middleware: Shared Key and Entra ID bearer tokens.

A request that does not authenticate is answered with the service's 401/403 error body before any handler runs,
so it never changes state or starts anything.

Shared Key signatures are verified exactly. Bearer tokens are checked the way Azurite checks them for storage: a
well-formed JWT whose audience is Batch's, within its lifetime, from any issuer. The token's signature is not
verified (the emulator has no tenant's signing keys) and no role assignment is simulated: any identity may do
anything. Tokens are accepted over HTTPS only, as azure-core only sends them over HTTPS; a token is a live
credential for the real service and must not cross a plain connection, even on loopback.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote

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

#: The ways a client may authenticate: ``sharedkey`` (the account key) and ``entra`` (Entra ID bearer tokens).
AUTH_MODES = ("sharedkey", "entra")

#: The token audience Batch accepts: what azure-batch asks for (scope ``https://batch.core.windows.net//.default``).
#: The form without the trailing slash is refused, as the service refuses it ("It should exactly match (including
#: forward slash) with one of the allowed audiences", recorded in Azure/azure-sdk-for-net#8026 and
#: AzureAD/microsoft-authentication-library-for-js#1735).
BATCH_AUDIENCE = "https://batch.core.windows.net/"

#: Leeway on a token's ``exp`` and ``nbf``: Microsoft's token validation allows five minutes by default.
TOKEN_CLOCK_SKEW = dt.timedelta(minutes=5)

#: Where a client gets a token, as the ``WWW-Authenticate`` challenge of a refused bearer request names it.
AUTHORIZATION_URI = "https://login.microsoftonline.com/common/oauth2/authorize"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def string_to_sign(request: web.Request, account_name: str, *, lower_query_names: bool, path: str | None = None) -> str:
    """The canonical string a Shared Key signature covers for this request (``path``: instead of its raw path)."""
    headers = {k.lower(): v for k, v in request.headers.items() if v}
    if request.method not in ("GET", "HEAD"):
        headers.setdefault("content-length", "0")
    parts = [request.method, *(headers.get(name, "") for name in SIGNED_HEADERS)]
    text = "\n".join(parts) + "\n"
    ocp = sorted((k, v) for k, v in headers.items() if "ocp-" in k)
    text += "".join(f"{k}:{v}\n" for k, v in ocp)
    raw_path, _, raw_query = request.raw_path.partition("?")
    text += f"/{account_name}{raw_path if path is None else path}"
    query = parse_qs(raw_query)
    if lower_query_names:
        query = {k.lower(): v for k, v in query.items()}
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def signed_paths(request: web.Request) -> list[str]:
    """The forms of the request's path a client may have signed: as sent, and every reserved character quoted.

    azure-batch quotes each id in the path (``/jobs/sched%3Ajob-1`` for a job schedule's job ``sched:job-1``) and
    signs that; its HTTP client (yarl, under aiohttp) then sends ``:`` unquoted, as a path may hold it. The service
    accepts the SDK's signature, so the emulator checks both forms.
    """
    raw = request.raw_path.partition("?")[0]
    quoted = quote(unquote(raw), safe="/")
    return [raw] if quoted == raw else [raw, quoted]


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


def check_auth_modes(modes: Iterable[str]) -> tuple[str, ...]:
    """Check the ways clients may authenticate; return them in order, without repeats.

    Args:
        modes: Names from `AUTH_MODES`, or one comma-separated string (``"sharedkey,entra"``).

    Raises:
        ValueError: none given, or a name that is not in `AUTH_MODES`.
    """
    if isinstance(modes, str):
        modes = modes.split(",")
    checked = tuple(dict.fromkeys(mode.strip().lower() for mode in modes))
    unknown = [mode for mode in checked if mode not in AUTH_MODES]
    if unknown or not checked:
        raise ValueError(
            f"auth: {', '.join(map(repr, unknown)) or 'nothing given'}; give one or more of {', '.join(AUTH_MODES)}"
        )
    return checked


def _missing_header(name: str, status: int) -> ServiceError:
    # The service answers a missing Authorization with 401 and a signed request without its date with 403.
    return ServiceError(
        status,
        "MissingRequiredHeader",
        "An HTTP header that's mandatory for this request is not specified.",
        [("HeaderName", name)],
    )


def _wrong_scheme(modes: Iterable[str]) -> ServiceError:
    if "entra" not in modes:
        detail = (
            "This aiobatch emulator accepts Shared Key authentication only. For Entra ID bearer tokens, start it "
            "with --auth entra (or sharedkey,entra) and --cert/--key, so that it serves HTTPS."
        )
    elif "sharedkey" not in modes:
        detail = "This aiobatch emulator accepts Entra ID bearer tokens only (Authorization: Bearer <token>)."
    else:
        detail = "This aiobatch emulator accepts Shared Key or Entra ID bearer tokens (Authorization: Bearer <token>)."
    return ServiceError(
        401,
        "InvalidAuthenticationInfo",
        "Authentication information is not given in the correct format. Check the value of Authorization header.",
        [("AuthenticationErrorDetail", detail)],
    )


def verify(request: web.Request, account_name: str, key: bytes, now: dt.datetime) -> None:
    """Check the request's Shared Key signature and date.

    Raises:
        ServiceError: 401 when the Authorization header is missing or not Shared Key, 403 when it is wrong or the
            date is stale.
    """
    header = request.headers.get("Authorization")
    if not header:
        raise _missing_header("Authorization", 401)
    scheme, _, credential = header.partition(" ")
    if scheme != "SharedKey":
        raise _wrong_scheme(("sharedkey",))
    name, _, signature = credential.partition(":")
    if name != account_name:
        raise _auth_failed(f"The account name in the Authorization header is not '{account_name}'.")
    date_text = request.headers.get("ocp-date") or request.headers.get("Date")
    if not date_text:
        raise _missing_header("ocp-date", 403)
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
    for path in signed_paths(request):
        for lower in (False, True):
            text = string_to_sign(request, account_name, lower_query_names=lower, path=path)
            if hmac.compare_digest(given, base64.b64decode(sign(key, text))):
                return
    raise _auth_failed(
        "The MAC signature found in the HTTP request is not the same as any computed signature. Check the "
        "account key and the request's clock."
    )


def _bearer_failed(detail: str) -> ServiceError:
    # The body is the service's recorded answer to a token it refuses (a 401 AuthenticationFailed whose message,
    # unlike Shared Key's, does not mention a signature); the challenge header follows Entra ID-protected services.
    # The detail never quotes the token.
    description = "".join(c for c in detail if " " <= c <= "~" and c not in '"\\')
    challenge = (
        f'Bearer authorization_uri="{AUTHORIZATION_URI}", error="invalid_token", error_description="{description}"'
    )
    return ServiceError(
        401,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly.",
        [("AuthenticationErrorDetail", detail)],
        headers={"WWW-Authenticate": challenge},
    )


def _shown(value: object) -> str:
    """A claim's value as an error may quote it: short, printable ASCII (it came from the client)."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= 100 else text[:97] + "..."


def _json_segment(segment: str) -> dict[str, Any] | None:
    """A JWT segment decoded (base64url, padding optional) as a JSON object, or None."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _numeric_date(claims: dict[str, Any], name: str) -> dt.datetime | None:
    """A NumericDate claim (seconds since the epoch), None when absent; a token whose claim is not one is refused."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bearer_failed(f"The access token's '{name}' claim is not a number of seconds since 1970.")
    try:
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise _bearer_failed(f"The access token's '{name}' claim is out of range.") from None


def verify_bearer(token: str, now: dt.datetime) -> dict[str, Any]:
    """Check a bearer token's form, audience and lifetime, as Azurite does; not its signature or issuer.

    Args:
        token: The text after ``Bearer `` in the Authorization header.
        now: The emulator's clock.

    Returns:
        The token's claims.

    Raises:
        ServiceError: 401 ``AuthenticationFailed`` for a token that is not a JWT, is for another audience, has
            expired or is not yet valid.
    """
    segments = token.strip().split(".")
    header = _json_segment(segments[0]) if len(segments) == 3 else None
    claims = _json_segment(segments[1]) if len(segments) == 3 else None
    if header is None or claims is None:
        raise _bearer_failed(
            "The access token is not a well-formed JWT (three base64url segments, the first two JSON objects)."
        )
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if BATCH_AUDIENCE not in audiences:
        raise _bearer_failed(
            f"The access token has been obtained from wrong audience or resource '{_shown(audience or '')}'. It should "
            f"exactly match (including forward slash) with one of the allowed audiences '{BATCH_AUDIENCE}'"
        )
    expires = _numeric_date(claims, "exp")
    if expires is None:
        raise _bearer_failed("The access token has no 'exp' claim: a token without an expiry is not accepted.")
    if now > expires + TOKEN_CLOCK_SKEW:
        raise _bearer_failed("Lifetime validation failed. The token is expired.")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and now + TOKEN_CLOCK_SKEW < not_before:
        raise _bearer_failed("Lifetime validation failed. The token is not yet valid ('nbf' is in the future).")
    return claims


def authenticate(request: web.Request, account_name: str, key: bytes, modes: Iterable[str], now: dt.datetime) -> None:
    """Authenticate a request by whichever of `AUTH_MODES` its Authorization header uses, if that one is on.

    Raises:
        ServiceError: the service's 401 or 403 refusal (see `verify` and `verify_bearer`).
    """
    header = request.headers.get("Authorization")
    if not header:
        error = _missing_header("Authorization", 401)
        if "entra" in modes:
            error.headers["WWW-Authenticate"] = f'Bearer authorization_uri="{AUTHORIZATION_URI}"'
        raise error
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and "entra" in modes:
        if not request.secure:
            # Not reachable through `Emulator` (Entra ID needs a certificate), but an app built by hand could be.
            raise _bearer_failed(
                "Bearer tokens are accepted over HTTPS only: start the emulator with --cert and --key."
            )
        verify_bearer(token, now)
        return
    if scheme != "SharedKey":
        raise _wrong_scheme(modes)
    if "sharedkey" not in modes:
        # The service's words for an account whose allowed authentication modes leave Shared Key out
        # (recorded in Azure/BatchExplorer#239).
        raise _auth_failed("The specified type of authentication SharedKey is not allowed for this account.")
    verify(request, account_name, key, now)


def auth_middleware(
    account_name: str,
    account_key: str,
    on_error: Callable[[web.Request, ServiceError], web.StreamResponse],
    modes: Iterable[str] = ("sharedkey",),
) -> Middleware:
    """An aiohttp middleware that refuses requests that do not authenticate by one of ``modes``."""
    key = base64.b64decode(account_key)
    checked = check_auth_modes(modes)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            authenticate(request, account_name, key, checked, dt.datetime.now(dt.timezone.utc))
        except ServiceError as error:
            return on_error(request, error)
        return await handler(request)

    return middleware
