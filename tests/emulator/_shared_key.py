"""Hand-made Shared Key requests, for tests that must send what the SDK never would (or what older SDKs did).

The signature follows the Batch service's documented Shared Key scheme, written out here independently of the
emulator's `_auth` module so that the tests check the emulator against the scheme, not against itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

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

JSON_TYPE = "application/json; odata=minimalmetadata"


def rfc1123(when: dt.datetime) -> str:
    return format_datetime(when.astimezone(dt.timezone.utc), usegmt=True)


def signature(
    method: str,
    url: str,
    headers: dict[str, str],
    account: str,
    key: str,
    *,
    lower_query_names: bool = False,
) -> str:
    """``SharedKey <account>:<signature>`` for a request (headers as they will be sent)."""
    lowered = {k.lower(): v for k, v in headers.items() if v}
    text = method + "\n" + "".join(lowered.get(name, "") + "\n" for name in SIGNED_HEADERS)
    text += "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in lowered.items() if "ocp-" in k))
    parts = urlsplit(url)
    text += f"/{account}{parts.path}"
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name.lower() if lower_query_names else name, value)
    text += "".join(f"\n{name}:{query[name]}" for name in sorted(query) if query[name])
    digest = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    account: str,
    key: str,
    body: Any = None,
    date: dt.datetime | None = None,
    sign_method: str | None = None,
    sign_url: str | None = None,
    sign_body: bytes | None = None,
    authorization: str | None = "sign",
    lower_query_names: bool = False,
) -> tuple[int, CIMultiDict[str], Any]:
    """Send one request signed as given; ``sign_*`` sign something other than what is sent (tampering).

    Returns:
        (status, headers (case-insensitive), parsed JSON body or None).
    """
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"ocp-date": rfc1123(date or dt.datetime.now(dt.timezone.utc)), "client-request-id": "x"}
    if data is not None:
        headers["Content-Type"] = JSON_TYPE
    signed_data = data if sign_body is None else sign_body
    to_sign = dict(headers)
    if method not in ("GET", "HEAD"):
        to_sign["Content-Length"] = str(len(signed_data or b""))
    if authorization == "sign":
        headers["Authorization"] = signature(
            sign_method or method, sign_url or url, to_sign, account, key, lower_query_names=lower_query_names
        )
    elif authorization is not None:
        headers["Authorization"] = authorization
    async with session.request(method, URL(url, encoded=True), data=data, headers=headers) as response:
        raw = await response.read()
        parsed = json.loads(raw) if raw and "json" in response.headers.get("Content-Type", "") else None
        return response.status, CIMultiDict(response.headers), parsed
