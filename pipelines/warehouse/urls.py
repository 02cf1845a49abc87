"""PostgreSQL URL helpers: swap the database, hide the password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (socket-dir URLs included)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def redact(url: str) -> str:
    """The URL with its password replaced by ***, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
