r"""The value rules every templated or command-line value passes, one place.

The spec (``_spec``) checks the user's values with these when it loads them; the Dockerfile
render (``_templates``) checks them again on what reaches a template, whoever built it; ``mlbuild
init`` and ``mlbuild.save()`` name models with the same name rule. Each ``*_problem`` function
says why a value is refused (a phrase that fits after the value in a message) or returns None.

Every pattern is anchored with ``\A ... \Z`` and used with ``fullmatch``, so even a caller that
uses ``.match()`` gets a full match: ``re.match(...$)``'s ``$`` also matches before a trailing
newline, which is how ``"bash\n"`` once passed as a package name and became a RUN step. ENV and
LABEL values are free text, so they are checked by what they may not hold (:func:`text_problem`)
and quoted by the template's ``dq`` filter.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ._errors import ConfigError
from ._oci.reference import DEFAULT_REGISTRY_ENV, parse_reference
from ._redact import find_credential_url

__all__ = [
    "ALLOWED", "DEBIAN_PKG_MAX", "DEBIAN_PKG_RE", "ENTRYPOINT_RE", "ENV_NAME_RE", "GLOB_HINT",
    "LABEL_KEY_RE", "LOCAL_BASE_PREFIXES", "NAME_RE", "SUPPORTED_PYTHONS", "TAG_RE", "TEXT_MAX_BYTES",
    "base_image_problem", "credential_problem", "debian_package_problem", "is_local_base",
    "requirements_path_problem", "sanitize_name", "show", "table_item_problem", "text_problem", "unsafe_char",
]

# The server env's lock (mlbuild/_data/server.lock) covers exactly these.
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# Docker reference grammar: path components of lowercase alnum separated by ., _, __ or -s.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"\A{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*\Z")
TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRYPOINT_RE = re.compile(rf"\A{_IDENT}(?:\.{_IDENT})*:{_IDENT}\Z")
# What `apt-get install` takes, and nothing of what it would read as more than a package:
#   name      Debian policy 5.6.1: [a-z0-9][a-z0-9+.-]+ (two chars at least), here also not ending
#             in "-", which apt-get reads as "remove this package"
#   :arch     e.g. libc6:amd64 (multiarch)
#   =version  e.g. curl=7.88.1-10+deb12u5: policy 5.6.12 characters, starting with a digit (an
#             epoch or an upstream version) and not ending in "-" (apt's remove suffix again)
#   /release  e.g. libgomp1/bookworm-backports
# None of these characters is special to the shell in the middle of a word, so the list is
# written into the RUN step as plain words.
DEBIAN_PKG_RE = re.compile(
    r"\A[a-z0-9][a-z0-9+.-]*[a-z0-9+.]"
    r"(?::[a-z0-9]+(?:-[a-z0-9]+)*)?"
    r"(?:=[0-9](?:[A-Za-z0-9.+~:-]*[A-Za-z0-9.+~:])?|/[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)?\Z"
)
DEBIAN_PKG_MAX = 200
LABEL_KEY_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")
# base_image lands in FROM and, in the venvs step, inside a double-quoted shell string that runs
# as root: only characters that are inert in both places (no space, quote, $, `, \, control or
# non-ASCII character), then the reference grammar for anything that is not a local path.
_BASE_IMAGE_RE = re.compile(r"\A[A-Za-z0-9._/:@+-]{1,1024}\Z")
LOCAL_BASE_PREFIXES = ("oci:", "docker-archive:")  # the oci backend's local sources (_oci/base.py)
_LOCAL_BASE_PATHS = ("/", "./", "../")  # a layout directory or an archive file, for the oci backend
# ENV/LABEL values: a Dockerfile line holds at most 64 KiB for Docker's parser (bufio.Scanner's
# default token size); 16 KiB, even with every byte escaped, stays well below that.
TEXT_MAX_BYTES = 16384

# What each config key accepts, for error messages ("bad values name file + key + what is allowed").
ALLOWED: dict[str, str] = {
    "name": "a lowercase image name: letters, digits and . _ - (and / between parts)",
    "version": "an image tag: letters, digits, _ . - (at most 128, not starting with . or -)",
    "entrypoint": "a string 'module:attr', e.g. 'predict:Model' (ASCII letters, digits, _ and .)",
    "python": "one of " + ", ".join(repr(p) for p in SUPPORTED_PYTHONS) + " (a string)",
    "requirements": "a path relative to the model directory, as a string (no control characters)",
    "base_image": "an image reference string, e.g. 'python:3.11-slim' or 'registry.example.com/team/py:3.11' "
    "(or oci:DIR, docker-archive:FILE, docker:REF, /path, ./path); letters, digits and . _ / : @ + - only",
    "system_packages": "a list of Debian package names, e.g. ['libgomp1'], each optionally with "
    ":arch, =version or /release",
    "env": "a table of NAME = \"value\" strings (NAME: letters, digits, _; value: one line of text, "
    f"no control characters, at most {TEXT_MAX_BYTES} bytes)",
    "labels": "a table of \"key\" = \"value\" strings (key: letters, digits, . _ / -; value: one line "
    f"of text, no control characters, at most {TEXT_MAX_BYTES} bytes)",
    "include": "a list of glob strings, e.g. ['artifacts/**']",
    "exclude": "a list of glob strings, e.g. ['data/raw/**']",
    "port": "an integer from 1 to 65535",
}
GLOB_HINT = ("globs use * and ? (within one path part), ** (across parts) and [abc], [a-z], [!abc] "
             "classes with ranges written low-high; for a literal '[' write '[[]'")


def sanitize_name(text: str) -> str:
    """A name NAME_RE accepts, from any text (a directory name, `mlbuild init --name`)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    name = re.sub(r"[._-]{2,}", "-", name).strip("._-")
    return name[:128].rstrip("._-") or "model"  # cut first, strip after: no trailing separator


def show(value: str, limit: int = 80) -> str:
    """``repr`` of a value for a one-line message: escapes every line break, cuts long values."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


# Control characters have no Unicode name; the ones people meet get a word.
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte",
                  "\v": "a vertical tab", "\f": "a form feed", "\x85": "NEXT LINE, a line break",
                  "\x1c": "a file separator, a line break", "\x1d": "a group separator, a line break",
                  "\x1e": "a record separator, a line break"}


def _char(ch: str) -> str:
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch, "a control character")
    return f"U+{ord(ch):04X} ({name})"


def unsafe_char(text: str) -> str | None:
    """The first character no config text may hold, described; None when there is none.

    Control characters (C0 with tab, DEL, C1 with U+0085), U+2028/U+2029 and lone surrogates:
    every one of str.splitlines()' separators is among them, so no parser can see a line break.
    """
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            return _char(ch)
    return None


def text_problem(value: str) -> str | None:
    r"""Why ``value`` cannot be an ENV or LABEL value; None when it can.

    Refused, not escaped: a double-quoted Dockerfile word has no escape for a line break (Docker's
    lexer keeps ``\n`` as a backslash and an n), and a tab or another control character in an
    image's environment is a mistake far more often than data. What *can* be escaped (``"``,
    ``\``, ``$``) is accepted and escaped by the template's ``dq`` filter."""
    bad = unsafe_char(value)
    if bad is not None:
        return f"contains {bad}, which an ENV or LABEL value cannot hold (one line of text, no control characters)"
    if len(value.encode("utf-8")) > TEXT_MAX_BYTES:
        return f"is longer than {TEXT_MAX_BYTES} bytes"
    return None


def credential_problem(value: str) -> str | None:
    """Why ``value`` cannot be baked into an image as an ENV or LABEL value because it carries a
    secret (a URL with user-info or a token parameter, see _redact); None when it does not. The
    URL in the answer is masked. Labels are public and ENV is in every copy of the image."""
    url = find_credential_url(value)
    return None if url is None else f"holds a URL with credentials, {url}"


def table_item_problem(table: str, key: str, value: str) -> str | None:
    """Why ``key = value`` cannot be an entry of the ``env`` or ``labels`` table; None when it can."""
    if table == "env" and not ENV_NAME_RE.fullmatch(key):
        return f"{show(key)} is not a valid environment variable name (letters, digits, _)"
    if table == "labels" and not LABEL_KEY_RE.fullmatch(key):
        return f"{show(key)} is not a valid label key (letters, digits, . _ / -)"
    problem = text_problem(value)
    if problem is not None:
        return f"the value of {key!r}, {show(value)}, {problem}"
    problem = credential_problem(value)
    return None if problem is None else f"the value of {key!r} {problem}"


def requirements_path_problem(value: str) -> str | None:
    """Why ``value`` cannot be the ``requirements`` key; None when it can. The path is opened and
    quoted in the lock step's messages: one plain relative path, nothing that could read as a
    second line (or, written anywhere later, as an option)."""
    bad = unsafe_char(value)
    if bad is not None:
        return f"contains {bad}"
    if not value.strip() or value != value.strip():
        return "is empty or has spaces around it"
    if value.startswith(("/", "~", "-")):
        return "must be a path relative to the model directory (not absolute, not starting with ~ or -)"
    return None


def debian_package_problem(packages: Iterable[str]) -> str | None:
    """Why one of ``packages`` cannot be handed to ``apt-get install``; None when all can."""
    for pkg in packages:
        if len(pkg) > DEBIAN_PKG_MAX or not DEBIAN_PKG_RE.fullmatch(pkg):
            return f"{show(pkg)} is not a Debian package name; expected {ALLOWED['system_packages']}"
    return None


def is_local_base(value: str) -> bool:
    """True for a base the oci backend reads from this machine (``oci:DIR``, ``docker-archive:FILE``,
    a path starting with ``/``, ``./`` or ``../``): no engine or registry knows it by that name."""
    return value.startswith(LOCAL_BASE_PREFIXES + _LOCAL_BASE_PATHS)


def base_image_problem(value: str) -> str | None:
    """Why ``value`` cannot be a base image; None when it can. The same check runs for the
    config key, the --base override (through SpecOverrides) and the render itself."""
    if not _BASE_IMAGE_RE.fullmatch(value):
        bad = unsafe_char(value) or next(
            (repr(c) for c in value if not re.fullmatch(r"[A-Za-z0-9._/:@+-]", c)), "its length")
        return (f"not an image reference: {bad} is not allowed (letters, digits and . _ / : @ + - only, "
                "at most 1024)")
    if value.startswith(LOCAL_BASE_PREFIXES):
        return None if value.partition(":")[2] else "not an image reference: the path after the ':' is missing"
    if value.startswith(_LOCAL_BASE_PATHS):
        return None  # a local layout or archive for the oci backend
    try:  # only the grammar matters: any registry resolves a short name here
        parse_reference(value.removeprefix("docker:"), env={DEFAULT_REGISTRY_ENV: "localhost"})
    except ConfigError as exc:
        return "not an image reference: " + str(exc).split(": ", 1)[-1]
    return None
