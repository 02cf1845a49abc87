"""PostgreSQL URL helpers: swap the database, hide the password."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (socket-dir URLs included)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


#: scheme://user:<password>@host...: the password runs to the *last* @, so that one written
#: with an unescaped #, /, ? or @ (which a URL parser reads as the end of the host, or as the
#: host itself) is still hidden whole.
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):(?P<secret>.*)@(?P<tail>[^@]*)", re.S
)
#: key=value connection strings, and a URL's query: password=..., sslpassword=... (the client
#: key's passphrase).
_KEYWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(url: str) -> str:
    """The URL with its password replaced by ***, fit for logs and error messages (also when the
    password holds characters it should have had percent-encoded)."""
    if match := _USERINFO.fullmatch(url):
        url = f"{match['head']}:***@{match['tail']}"  # (and any in its query, below)
    return _KEYWORD.sub(lambda m: f"{m['head']}***", url)


def hide_password(text: str, url: str) -> str:
    """`text` (a driver's error message, say) with any piece of `url`'s password taken out: a
    password with an unescaped @ is split by the driver, which then names a piece of it as the
    host."""
    # (A query's value ends at the next &, which the keyword's match runs past: split there.)
    secrets = [m["secret"].strip("'") for m in _KEYWORD.finditer(url)]
    if match := _USERINFO.fullmatch(url):
        secrets.append(match["secret"])
    pieces = {piece for secret in secrets for piece in (secret, *re.split(r"[@/#?:&]", secret))}
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 2:
            text = text.replace(piece, "***")
    return text
