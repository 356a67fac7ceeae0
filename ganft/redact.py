"""Secrets out of everything ganft writes: URIs and command lines with their passwords as ***."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(uri: str) -> str:
    """A storage or tracking URI with any password replaced by ***, safe for logs and tags."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_argv(argv: list[str]) -> str:
    """A command line with the password of every URI in it (``--storage URL``, ``--storage=URL``)
    replaced by ***."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        out.append(f"{flag}{eq}{redact(value)}" if "://" in value else arg)
    return " ".join(out)
