"""Secret redaction: one function that masks every secret aiobatch knows how to recognise, and its log filters.

`redact` masks SAS signatures (raw and URL-encoded), ``AccountKey=`` in connection strings, ``Authorization`` /
Shared Key / bearer values, and any value registered with `register_secret`. Every message and repr in aiobatch
goes through it, and `guard_loggers` puts it on the Azure SDKs' loggers, so their records (network traces
included) are masked before any handler sees them.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

__all__ = ["RedactingFilter", "guard_loggers", "redact", "register_secret"]

_MASK = "***"

# Order matters: the Authorization rule masks whole header values first, so the narrower rules below never
# see a half-masked value.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: SharedKey acct:sig / Bearer token, as a header line, a dict entry or a kwarg.
    (re.compile(r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)"), r"\1" + _MASK),
    # A bare Shared Key or bearer value anywhere else (e.g. in a string-to-sign dump).
    (re.compile(r"(?i)(\bSharedKey(?:Lite)?\s+[^:\s'\"]+:)([A-Za-z0-9+/=%]+)"), r"\1" + _MASK),
    (re.compile(r"(?i)(\bBearer\s+)([A-Za-z0-9._~+/=-]+)"), r"\1" + _MASK),
    # SAS signatures: sig=..., sig%3D... (an encoded URL), sig%253D... (encoded twice).
    (
        re.compile(
            r"(?i)((?:(?<![a-z0-9_])|(?<=%3f)|(?<=%26)|(?<=%253f)|(?<=%2526))sig(?:=|%3d|%253d))"
            r"([^&\s'\"<>;,)\]}]+)"
        ),
        r"\1" + _MASK,
    ),
    # Account keys: AccountKey=... in connection strings, account_key='...' / "accountKey": "..." elsewhere.
    (re.compile(r"(?i)(\baccount_?key['\"]?\s*[:=]\s*['\"]?)([^;\s'\",}]+)"), r"\1" + _MASK),
    # The secret half of a user delegation key, as the service returns it in XML.
    (re.compile(r"(?i)(<Value>)([^<]+)(</Value>)"), r"\1" + _MASK + r"\3"),
)

_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it wherever it appears, even outside any known pattern.

    Settings register account keys when they are created, so a key that leaks into an SDK message (or a
    user's own f-string passed through `redact`) is still masked. Values shorter than 8 characters are
    ignored: masking them would mangle ordinary text.

    Args:
        value: the secret; ``None`` or an empty string is ignored.
    """
    if value and len(value) >= 8:
        _registered.add(value)
        _registered.add(urllib.parse.quote(value, safe=""))
        _registered.add(urllib.parse.quote_plus(value))


def redact(text: str) -> str:
    """Return *text* with every secret aiobatch knows how to recognise replaced by ``***``.

    Masks SAS ``sig`` values (raw, URL-encoded and double-encoded), ``AccountKey=`` in connection strings,
    ``account_key`` / ``accountKey`` assignments, ``Authorization`` header values, Shared Key and bearer
    credentials, user delegation key values, and every value given to `register_secret`.

    Args:
        text: any text: a message, a URL, a repr, a log line.

    Returns:
        The text with secrets masked; everything else is unchanged.

    Example:
        >>> redact("https://a.blob.core.windows.net/c/b?sv=2024&sig=abc%2Bdef%3D&sp=r")
        'https://a.blob.core.windows.net/c/b?sv=2024&sig=***&sp=r'
    """
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message (and formatted traceback) through `redact`.

    Attach it to the handlers that print aiobatch's and the Azure SDK's records; filters on a handler see
    records propagated from every logger below it.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(RedactingFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place with secrets masked; never drops a record."""
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _FailsafeDeserializationFilter(logging.Filter):
    """Demote the SDK's "failsafe deserialization" warning to DEBUG; pass every other record as it is.

    azure-batch logs it, with a traceback, at WARNING whenever an error answer has no JSON body to read -- every
    ``HEAD`` that fails (a task file's properties, ``stderr_tail`` of a task that never ran), a 503 from a proxy
    -- and then raises the ``HttpResponseError`` all the same, which aiobatch translates (and retries when
    transient). So the record reports nothing the caller does not get as an exception; at WARNING it only reaches
    the user's stderr, once per such answer. Demoted, it shows only where its logger is enabled for DEBUG.
    """

    MESSAGE = "Ran into a deserialization error. Ignoring since this is failsafe deserialization"

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the record, demoted to DEBUG if it is that one message (dropped if DEBUG is not wanted)."""
        if record.levelno <= logging.DEBUG or record.getMessage() != self.MESSAGE:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        # The logger's level was checked at WARNING before filters ran; ask again as for a DEBUG record, since
        # handlers below a WARNING-level root often have no level of their own.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


#: The one filter `guard_loggers` attaches (one instance, so attaching twice is a no-op).
_GUARD = RedactingFilter()
#: And the one that keeps the SDK's failsafe-deserialization warning out of the user's output.
_QUIET = _FailsafeDeserializationFilter()
#: Logger namespaces whose records can carry secrets: the Azure SDKs' (azure-core's network trace prints
#: Authorization headers, SAS URLs and task bodies verbatim) and aiobatch's own. The emulator is a service of
#: its own and must keep its logs clean by itself; it is left alone.
_GUARDED = ("azure", "aiobatch")
_UNGUARDED = ("aiobatch.emulator",)


def guard_loggers() -> int:
    """Attach a `RedactingFilter` to every existing ``azure.*`` and ``aiobatch.*`` logger; return how many are guarded.

    A filter on a *handler* only protects that handler, and a filter on a *logger* only sees the records
    created on that very logger (not its children's), so the filter goes on each logger that can emit a
    secret. That way a record is masked when it is made, whatever handlers the application configured --
    even with the root logger at DEBUG and azure-core's network trace on (``logging_enable=True``), which
    logs ``Authorization`` headers, SAS URLs and request bodies verbatim. Loggers are created when their module
    is imported, so `Client` calls this when it opens (after the SDKs are loaded); calling it again is cheap and
    guards loggers created since.

    The ``azure.*`` loggers also get a filter that demotes one SDK record to DEBUG: "Ran into a deserialization
    error. Ignoring since this is failsafe deserialization", logged with a traceback for every error answer
    without a JSON body although the error itself is raised (and handled) anyway.

    Returns:
        The number of loggers carrying the filter.
    """
    guarded = 0
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):  # a PlaceHolder for a namespace with no logger of its own
            continue
        if name.split(".")[0] not in _GUARDED or name.startswith(_UNGUARDED):
            continue
        if _GUARD not in logger.filters:
            logger.addFilter(_GUARD)
        if name.startswith("azure.") and _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
        guarded += 1
    return guarded
