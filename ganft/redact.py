"""Secrets out of everything ganft writes: log lines, error messages (MLflow's and the database
drivers' included), run tags, reports. ``redact`` replaces with *** the password of a URI
(``scheme://user:PASSWORD@host``, whatever characters it holds: ``/ # ? @ %`` too), a
credential in a query (``?password=...``, ``&token=...``) and an environment- or libpq-style
assignment (``PGPASSWORD=...``, ``password=...``), in any text.

Written as regular expressions rather than ``urllib.parse``: a password holding ``/``, ``#`` or
``?`` makes urlsplit cut the URI in the wrong place (and then the password reaches the log).
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_SECRET_WORDS = r"password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|auth"
# scheme://user:secret@host -- the secret runs to the last "@" of the token that is followed by a host
_URL_SECRET = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)\S*@(?=[^\s@'\"/?#]+)")
_QUERY_SECRET = re.compile(rf"([?&;](?:{_SECRET_WORDS})=)[^&\s#'\"]*", re.IGNORECASE)
_ASSIGNED_SECRET = re.compile(r"(\b[A-Za-z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY)[A-Za-z0-9_]*\s*=\s*)"
                              r"('[^']*'|\"[^\"]*\"|[^\s&;,]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ***."""
    text = _URL_SECRET.sub(lambda m: f"{m.group(1)}{MASK}@", str(text))
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)


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
