"""Secrets out of every sink: credentials in URIs, secret query parameters and secret environment values are
hidden the same way in errors, logs, tags, params, overlays and reports."""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlparse

_SCHEME_AUTHORITY = re.compile(r"^([A-Za-z][\w+.-]*://)(.*)@", re.DOTALL)
# Query parameters that carry a secret in SQLAlchemy, libpq and HTTP URLs (…?password=…&sslpassword=…).
SECRET_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "token",
    "access_token",
    "auth_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "sig",
    "signature",
)
_SECRET_QUERY = re.compile(r"([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s'\"]*", re.IGNORECASE)
# Environment variables whose values are secrets (PGPASSWORD, MLFLOW_TRACKING_TOKEN, AWS_SECRET_ACCESS_KEY, …):
# never printed or stored. Matched at the end of the name: TOKENIZERS_PARALLELISM=false is no secret, and
# hiding every "false" would garble params and tags.
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|SECRET_KEY|ACCESS_KEY|API_KEY)$", re.IGNORECASE)
_HIDDEN = "***"


def redact(uri: str) -> str:
    """Hide credentials: ``postgresql://user:secret@host/db?sslpassword=x`` -> ``postgresql://***@host/db?sslpassword=***``.

    The one place that decides what a secret looks like; every sink (errors, logs, tags, params, overlays,
    reports) goes through it or :func:`redact_text`. Hidden are: the userinfo (everything between ``//`` and
    the *last* ``@``, so a password holding ``/`` or ``@`` is hidden whole), the values of secret query
    parameters (:data:`SECRET_PARAMS`, any scheme), and the values of secret environment variables
    (``PGPASSWORD``, ``MLFLOW_TRACKING_TOKEN``, …) wherever they appear. File-based stores (``sqlite:``,
    ``file:``, journal paths) keep their userinfo-like ``@`` (a path may hold one).
    """
    if uri.split(":", 1)[0].split("+")[0].lower() not in ("sqlite", "file"):
        uri = _SCHEME_AUTHORITY.sub(rf"\1{_HIDDEN}@", uri)
    return _env_secrets_hidden(_SECRET_QUERY.sub(rf"\1{_HIDDEN}", uri))


def redact_text(text: str, *uris: str | None) -> str:
    """``text`` (an error message, a log line) with every secret hidden: those of ``uris`` wherever they
    appear (raw, percent-encoded or decoded), those of secret environment variables, and any URL-embedded ones.
    """
    from urllib.parse import parse_qsl, quote, unquote

    for uri in uris:
        secrets: set[str] = set()
        found = _SCHEME_AUTHORITY.match(uri or "")
        if found is not None and redact(uri or "") != uri:
            userinfo = found.group(2)
            user, _, password = userinfo.partition(":")
            # a database's user name is no secret (and may be a common word); an http userinfo is a token
            token = not password and urlparse(uri or "").scheme.startswith("http")
            secrets |= {password, userinfo if password or token else password}
        query = urlparse(uri or "").query
        secrets |= {v for k, v in parse_qsl(query, keep_blank_values=False) if k.lower() in SECRET_PARAMS}
        secrets |= {m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(uri or "")}
        secrets |= {unquote(x) for x in secrets} | {quote(x, safe="") for x in secrets}
        for secret in sorted((x for x in secrets if len(x) >= 3), key=len, reverse=True):
            text = text.replace(secret, _HIDDEN)
    text = re.sub(r"([A-Za-z][\w+.-]*://)[^\s'\"]*@", rf"\1{_HIDDEN}@", text)
    return _env_secrets_hidden(_SECRET_QUERY.sub(rf"\1{_HIDDEN}", text))


def _env_secrets_hidden(text: str) -> str:
    # a password given as PGPASSWORD never shows in a URL, but a driver may quote it back in an error
    for name, value in os.environ.items():
        if len(value) >= 4 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, _HIDDEN)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that hides secrets (:func:`redact_text`) in every record it passes, arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact_text(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and record.exc_info[1] is not None:
            # a traceback's last line quotes the exception: format it now, hidden, and drop the original
            import traceback

            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True
