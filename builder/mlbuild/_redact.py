"""Credentials in URLs: found and masked in one place.

A URL's user-info (``https://user:TOKEN@host/...``) must never reach a lock, a label, a layer or
a log line. The lock refuses such URLs (``_lock``), and every :class:`MlbuildError` masks its
message, hint and details with :func:`mask_url_credentials`, so resolver or installer output
quoted in an error cannot leak one either. Standard library only; imports nothing of mlbuild.
"""

from __future__ import annotations

import re

__all__ = ["URL_USERINFO", "mask_url_credentials", "find_credential_url"]

# scheme://userinfo@ : the userinfo is everything between "//" and the first "@" before any "/".
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@'\"<>]+)@")


def mask_url_credentials(text: str) -> str:
    """``text`` with the user-info of every URL replaced by ``****`` (``https://****@host/...``).

    All of it, the user name too: in ``https://TOKEN@github.com`` or
    ``https://TOKEN:x-oauth-basic@host`` the secret *is* the user name."""
    return URL_USERINFO.sub(r"\1****@", text)


def find_credential_url(text: str) -> str | None:
    """The first URL in ``text`` that carries credentials, masked for showing, or None.

    Any user-info counts, except a bare user name on an ssh URL (``git+ssh://git@host/...``
    authenticates with a key, not with what the URL says)."""
    for m in URL_USERINFO.finditer(text):
        scheme, userinfo = m.group(1).lower(), m.group(2)
        if scheme.endswith("ssh://") and ":" not in userinfo:
            continue
        rest = re.match(r"[^\s'\"<>]*", text[m.end():]).group(0)  # host/path...
        rest = re.split(r"[?#]", rest, maxsplit=1)[0]  # a query may hold a token as well
        return f"{m.group(1)}****@{rest}"
    return None
