"""The include/exclude glob grammar of mlbuild.toml, a leaf: the spec checks globs with it when
it is parsed, the file selection matches with it (_files). Globs are relative to the model
directory, ``/``-separated: ``*`` and ``?`` stay within one path part, ``**`` crosses parts; a
pattern without ``/`` matches at any depth (``*.csv``), a leading or inner ``/`` anchors it, and
a pattern matching a directory covers everything under it.
"""

from __future__ import annotations

import functools
import re

__all__ = ["check_glob", "glob_match"]


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile one include/exclude glob; raises ValueError (saying why) for a bad one."""
    raw = pattern.strip()
    pat = raw.lstrip("/")
    # Like .gitignore: a leading or inner "/" anchors the pattern at the model directory.
    anchored = raw.startswith("/") or "/" in pat.rstrip("/")
    pat = pat.rstrip("/")
    if not pat:
        raise ValueError("the pattern is empty")
    out, i = [], 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        elif pat[i] == "[":
            # As fnmatch: a "]" right after "[" or "[!" is a literal member, not the end.
            j = i + 1
            if j < len(pat) and pat[j] == "!":
                j += 1
            if j < len(pat) and pat[j] == "]":
                j += 1
            end = pat.find("]", j)
            if end == -1:  # no closing bracket: the "[" is a literal character
                out.append(re.escape("["))
                i += 1
                continue
            body = pat[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            # Escape every member but "-" (ranges), so "\", "[", "^", "&&"... stay literal.
            members = "".join(c if c == "-" else re.escape(c) for c in body)
            # A class is one character of one path part: it never matches "/".
            out.append(f"(?!/)[{'^' if negate else ''}{members}]")
            i = end + 1
        else:
            out.append(re.escape(pat[i]))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    # "(?:/.*)?" : a pattern that names a directory covers what is under it.
    try:
        return re.compile(f"^{prefix}{''.join(out)}(?:/.*)?$")
    except re.error as exc:
        raise ValueError(re.sub(r" at position \d+$", "", str(exc))) from None


def check_glob(pattern: str) -> None:
    """Raise ValueError saying why ``pattern`` is not a usable include/exclude glob."""
    _glob_regex(pattern)


def glob_match(pattern: str, relpath: str) -> bool:
    """True when ``relpath`` (posix, relative to the model dir) matches ``pattern``."""
    return bool(_glob_regex(pattern).match(relpath))
