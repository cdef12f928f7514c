"""Batch Shared Key signing by hand, for the bare-HTTP ceilings: the least work a client can do per request.

The scheme is the service's documented one (the string to sign: the verb, the standard headers, the ``ocp-*``
headers, then ``/account/path`` and the sorted query parameters), written out here so the ceiling owes nothing
to the SDK or to aiobatch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from urllib.parse import urlsplit

API_VERSION = "2025-06-01"
JSON_TYPE = "application/json; odata=minimalmetadata"


class SharedKeySigner:
    """Signs Batch requests for one account.

    Args:
        account: the account name.
        key: the base64 account key.
    """

    def __init__(self, account: str, key: str) -> None:
        self.account = account
        self._key = base64.b64decode(key)

    def headers(self, method: str, url: str, *, body: bytes = b"", content_type: str = "") -> dict[str, str]:
        """The headers of a signed request: ``ocp-date``, content headers and ``Authorization``."""
        date = formatdate(usegmt=True)
        length = str(len(body)) if body or method not in ("GET", "HEAD") else ""
        standard = ["", "", length, "", content_type, "", "", "", "", "", ""]
        parts = urlsplit(url)
        query = sorted(
            (name, value) for name, _, value in (p.partition("=") for p in parts.query.split("&") if p) if value
        )
        text = f"{method}\n" + "".join(f"{v}\n" for v in standard) + f"ocp-date:{date}\n"
        text += f"/{self.account}{parts.path}" + "".join(f"\n{name}:{value}" for name, value in query)
        signature = base64.b64encode(hmac.new(self._key, text.encode(), hashlib.sha256).digest()).decode()
        headers = {"ocp-date": date, "Authorization": f"SharedKey {self.account}:{signature}"}
        if content_type:
            headers["Content-Type"] = content_type
        if length:
            headers["Content-Length"] = length
        return headers
