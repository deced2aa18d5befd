"""The non-root user, as a layer holding the base's /etc/passwd and /etc/group plus one line each.

No ``useradd`` runs: the base's files are read from its layers (``rootfs``) and rewritten with
the user appended, so the result is the same bytes every time.
"""

from __future__ import annotations

from .._errors import BuildError
from .._imagefacts import UID, USER_NAME, passwd_line
from .._oci.rootfs import RootfsFacts
from .._oci.tarlayer import Entry, bytes_entry

__all__ = ["user_entries"]


def _with_line(content: bytes, name: str, uid: int, line: str, what: str) -> bytes:
    for existing in content.decode("utf-8", "replace").splitlines():
        fields = existing.split(":")
        if len(fields) > 2 and (fields[0] == name or fields[2] == str(uid)):
            if fields[0] == name and fields[2] == str(uid):
                return content  # the base already has exactly this user/group
            raise BuildError(
                f"base image {what} already has {fields[0]!r} with id {fields[2]} (mlbuild needs {name} = {uid})",
                hint="use a base image without that user/group",
            )
    if content and not content.endswith(b"\n"):
        content += b"\n"
    return content + line.encode() + b"\n"


def user_entries(facts: RootfsFacts) -> list[Entry]:
    # The same line the docker backend's Dockerfile appends, so both backends give the same user.
    name, uid, line = USER_NAME, UID, passwd_line()
    passwd = _with_line(facts.passwd, name, uid, line, "/etc/passwd")
    group = _with_line(facts.group, name, uid, f"{name}:x:{uid}:", "/etc/group")
    return [bytes_entry("/etc/passwd", passwd), bytes_entry("/etc/group", group)]
