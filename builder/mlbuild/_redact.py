"""Credentials in URLs: found and masked in one place.

A URL can carry a secret in two places, and neither may reach a lock, a label, a layer or a log
line:

- its user-info, ``https://user:TOKEN@host/...``. All of it is masked, up to the *last* ``@``
  before the host (urllib and pip split there too: in ``https://user:p@ss@host/`` the password
  is ``p@ss``);
- a query or fragment parameter whose key names a secret: ``?private_token=`` (GitLab),
  ``?X-Amz-Signature=&X-Amz-Credential=`` (a presigned S3 URL), ``?sig=`` (Azure SAS), ``?key=``,
  ``#...&token=``. Keys that only pin or locate a file (``#sha256=``, ``#egg=``,
  ``&subdirectory=``) are not secrets and are kept.

The lock refuses such URLs (``_lock``), the spec refuses them in ``[env]`` and ``[labels]``, and
every :class:`MlbuildError` masks its message, hint and details with :func:`mask_url_credentials`,
so resolver or installer output quoted in an error cannot leak one either. Standard library only;
imports nothing of mlbuild.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["URL", "URL_USERINFO", "is_secret_parameter", "mask_url_credentials", "find_credential_url"]

# A URL as it appears in running text: scheme://, then up to a space, a quote, <, > or a backtick
# (resolver output quotes URLs in backticks).
URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*")
# scheme://userinfo@ : the authority ends at the first / ? or #; the greedy userinfo backtracks
# to its last "@", so an "@" in the password is masked with the rest of it.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s'\"<>`]*)@")

# Long words are matched anywhere in a key (private_token, accessToken, client_secret, apikey);
# the short ones only as a whole word of it (sig, AWSAccessKeyId's "key", auth), so that author,
# design or keyword stay what they are.
_SECRET_IN_KEY = re.compile(r"token|signature|secret|passw(?:or)?d|passphrase|credential|apikey|authorization")
_SECRET_WORDS = frozenset({"sig", "key", "auth", "pass", "pwd"})
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# key=value pairs of a query or a fragment: the value runs to the next & ; # or the URL's end.
# A "?" inside a value counts as a separator too: masking more than a server would read as one
# value is the safe side.
_PARAM = re.compile(r"([?#&;])([^=&;#?]*)=([^&;#?]*)")


def is_secret_parameter(key: str) -> bool:
    """True when a query or fragment parameter called ``key`` holds a secret (case-insensitive;
    ``%``-escapes in the key are decoded first)."""
    key = unquote(key)
    lowered = key.lower()
    if lowered.startswith(("x-amz-", "x-goog-")) or _SECRET_IN_KEY.search(lowered):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _KEY_WORDS.findall(key))


def _mask_params(tail: str) -> tuple[str, bool]:
    """``tail`` (a URL's ``?query#fragment``) with the values of secret parameters masked, and
    whether any was."""
    found = False

    def repl(m: re.Match[str]) -> str:
        nonlocal found
        if m.group(3) and is_secret_parameter(m.group(2)):
            found = True
            return f"{m.group(1)}{m.group(2)}=****"
        return m.group(0)

    return _PARAM.sub(repl, tail), found


def _mask_url(url: str) -> tuple[str, bool, bool]:
    """One URL masked, with (has user-info, has a secret parameter)."""
    userinfo = None
    m = URL_USERINFO.match(url)
    if m is not None:
        userinfo = m.group(2)
        url = f"{m.group(1)}****@{url[m.end():]}"
    cut = re.search(r"[?#]", url)
    found = False
    if cut is not None:
        tail, found = _mask_params(url[cut.start():])
        url = url[: cut.start()] + tail
    has_userinfo = userinfo is not None
    if has_userinfo and m.group(1).lower().endswith("ssh://") and ":" not in userinfo:
        # git+ssh://git@host/... authenticates with a key, not with what the URL says.
        has_userinfo = False
    return url, has_userinfo, found


def mask_url_credentials(text: str) -> str:
    """``text`` with the user-info of every URL replaced by ``****`` (``https://****@host/...``)
    and the value of every secret query or fragment parameter too (``?private_token=****``).

    All of the user-info, the user name too: in ``https://TOKEN@github.com`` or
    ``https://TOKEN:x-oauth-basic@host`` the secret *is* the user name."""
    return URL.sub(lambda m: _mask_url(m.group(0))[0], text)


def find_credential_url(text: str) -> str | None:
    """The first URL in ``text`` that carries credentials, masked for showing, or None.

    Credentials are any user-info, except a bare user name on an ssh URL (``git+ssh://git@host/...``
    authenticates with a key, not with what the URL says), and any secret query or fragment
    parameter (see :func:`is_secret_parameter`)."""
    for m in URL.finditer(text):
        masked, has_userinfo, has_param = _mask_url(m.group(0))
        if has_userinfo or has_param:
            return masked
    return None
