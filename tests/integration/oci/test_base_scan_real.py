"""The base scan on the real Debian base, and the Docker engine's own handling of the entry
classes the scan's rules cite (rootfs.py's table): the rules are checked against the engine,
not against our memory of it."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "unit" / "oci"))
from ocifixtures import image_config, write_docker_archive  # noqa: E402

pytestmark = pytest.mark.docker

_CHILD = """
import json, sys
from mlbuild._oci.base import open_base
from mlbuild._oci.rootfs import rootfs_facts
from mlbuild._platforms import parse_platform
from pathlib import Path
base = open_base(sys.argv[1], parse_platform("linux/amd64"), cache_dir=Path(sys.argv[2]))
lines = []
facts = rootfs_facts(base, "3.11", None, warn=lines.append, allow_unsafe=False)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"python": facts.python, "real": facts.python_real, "passwd": facts.passwd.decode(),
                  "group": facts.group.decode(), "lines": lines, "peak_kib": peak}))
"""


def test_real_debian_base_scans_clean_with_bounded_memory(base_image, tmp_path: Path) -> None:
    env = {**os.environ, "MLBUILD_ALLOW_UNSAFE_BASE": ""}  # strict, whatever the shell says
    out = subprocess.run([sys.executable, "-c", _CHILD, f"docker:{base_image}", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr  # no error class in a real Debian base
    got = json.loads(out.stdout)
    assert (got["python"], got["real"]) == ("/usr/bin/python3", "/usr/bin/python3.11")
    assert got["passwd"].startswith("root:x:0:0:") and got["group"].startswith("root:x:0:")
    # At most the one summary note (Debian's own setuid programs); devices under /dev,
    # absolute symlinks and setgid directories give nothing.
    lines = got["lines"]
    assert len(lines) <= 1, lines
    for line in lines:
        assert line.startswith("note: the base image has ") and "/usr/bin/su" in line, line
    assert got["peak_kib"] / 1024 < 100, f"peak RSS {got['peak_kib'] / 1024:.0f} MiB"


def _layer(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, (data if kind == tarfile.REGTYPE else b"")


def _load(tmp_path: Path, name: str, layer: bytes, image_tags: list[str]) -> subprocess.CompletedProcess[str]:
    tag = f"mlbuild-test-hostile-{name}:{secrets.token_hex(4)}"
    image_tags.append(tag)
    archive = write_docker_archive(tmp_path / f"{name}.tar", [layer], tag=tag, config=image_config([layer]))
    return subprocess.run(["docker", "load", "-i", str(archive)], capture_output=True, text=True, timeout=120)


def _files(tag: str) -> dict[str, str]:
    """Path -> symlink target ('' for others) of what the engine made of the image."""
    cid = subprocess.run(["docker", "create", tag, "none"], check=True, capture_output=True, text=True).stdout.strip()
    try:
        export = subprocess.run(["docker", "export", cid], check=True, capture_output=True, timeout=120).stdout
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        return {m.name: m.linkname if m.issym() else "" for m in tar}


def test_engine_behaviour_behind_the_rules(tmp_path: Path, docker_client, image_tags: list[str]) -> None:
    # Hard link to nothing: the engine refuses the image, so the scan's error loses nothing.
    hl = _load(tmp_path, "hardlink", _layer(_entry("ok"), _entry("b", tarfile.LNKTYPE, "nowhere/file")), image_tags)
    assert hl.returncode != 0 and "no such file" in hl.stderr, hl.stderr
    # ../evil: loaded, clamped to /evil; so the opt-out reads it there.
    dd = _load(tmp_path, "dotdot", _layer(_entry("ok"), _entry("../evil")), image_tags)
    assert dd.returncode == 0, dd.stderr
    files = _files(image_tags[-1])
    assert "evil" in files and not any(".." in n.split("/") for n in files)
    # A symlink climbing above /: loaded as written; a warning, not an error.
    sl = _load(tmp_path, "symlink", _layer(_entry("ok"), _entry("a", tarfile.SYMTYPE, "../../../../etc/shadow")), image_tags)
    assert sl.returncode == 0, sl.stderr
    assert _files(image_tags[-1])["a"] == "../../../../etc/shadow"
