"""Secrets out of everything ganft writes: log lines, error messages (MLflow's and the database
drivers' included), run tags, reports. ``redact`` replaces with *** the password of a URI
(``scheme://user:PASSWORD@host``, whatever characters it holds: ``/ # ? @ %`` too), a
credential in a query (``?password=...``, ``&token=...``) and an environment- or libpq-style
assignment (``PGPASSWORD=...``, ``password=...``), in any text.

Written as regular expressions rather than ``urllib.parse``: a password holding ``/``, ``#`` or
``?`` makes urlsplit cut the URI in the wrong place (and then the password reaches the log).

Patterns cannot catch a password that a database driver quotes out of its URI (an unencoded ``@``
then ``:`` makes the driver read part of it as the host; a space splits it), so the credentials a
user hands ganft (``--storage``, ``--tracking-uri``, any argument, the environment's
``*PASSWORD*`` / ``*TOKEN*`` variables) are also remembered (``remember``) and every occurrence of
them, their URL-encoded and -decoded forms and the pieces an ``@``, ``:`` or space splits them
into, is replaced too.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import quote, unquote

MASK = "***"
_SECRET_WORDS = r"password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|auth"
# scheme://user:secret@host -- the secret runs to the last "@" of the token (an empty host, as in
# SQLAlchemy's socket form postgresql://u:pw@/db?host=/run/postgresql, is a URI too)
_URL_SECRET = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)\S*@")  # host may be empty (socket)
_QUERY_SECRET = re.compile(rf"([?&;](?:{_SECRET_WORDS})=)[^&\s#'\"]*", re.IGNORECASE)
_ASSIGNED_SECRET = re.compile(r"(\b[A-Za-z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY)[A-Za-z0-9_]*\s*=\s*)"
                              r"('[^']*'|\"[^\"]*\"|[^\s&;,]+)", re.IGNORECASE)


_SCHEME = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://")
_ENV_SECRET = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
_KNOWN: set[str] = set()  # remembered secrets and their pieces, longest replaced first
MIN_PIECE = 4  # pieces of a remembered secret shorter than this are left alone (too common to mean it)


def uri_secrets(text: str) -> list[str]:
    """The passwords a URI-like argument holds as the user typed it: ``scheme://user:SECRET@host``
    (the secret runs to the last ``@`` of the argument, spaces and all) and ``password=`` / ``token=``
    query values."""
    out = []
    for m in _SCHEME.finditer(text):
        rest = text[m.end():]
        userinfo = rest.rpartition("@")[0] if "@" in rest else ""
        if ":" in userinfo:
            out.append(userinfo.partition(":")[2])
    out += [v for v in re.findall(rf"(?:{_SECRET_WORDS})=([^&\s#'\"]+)", text, re.IGNORECASE)]
    return [x for x in out if x]


def remember(*texts: str | None) -> None:
    """Remember the credentials in ``texts`` (command-line arguments, store URIs) so that ``redact``
    replaces them wherever they appear, however a driver has quoted or split them."""
    for text in texts:
        for secret in uri_secrets(text or ""):
            for form in {secret, unquote(secret), quote(secret, safe="")}:
                _KNOWN.add(form)
                _KNOWN.update(p for p in re.split(r"[@:\s/]+", form) if len(p) >= MIN_PIECE)


def remember_environment() -> None:
    """Remember the values of the environment's password, secret and token variables."""
    for name, value in os.environ.items():
        if _ENV_SECRET.search(name) and len(value) >= MIN_PIECE:
            _KNOWN.add(value)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ***."""
    text = _URL_SECRET.sub(lambda m: f"{m.group(1)}{MASK}@", str(text))
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
    for secret in sorted(_KNOWN, key=len, reverse=True):  # whole secrets before their pieces
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_argv(argv: list[str]) -> str:
    """A command line, credentials replaced by *** (``--storage URL``, ``--storage=URL``, ...)."""
    return redact(" ".join(argv))


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line (message, arguments, traceback) goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def redact_logging() -> None:
    """Make every handler of the root logger redact what it writes (call after logging is set up)."""
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        handler.setFormatter(RedactingFormatter(fmt._fmt if fmt else None, fmt.datefmt if fmt else None))
