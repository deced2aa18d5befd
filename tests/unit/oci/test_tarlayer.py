"""Layer tars are normalized: the same files give the same bytes whatever the host did to them."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from mlbuild._errors import BuildError
from mlbuild._oci.tarlayer import (
    bytes_entry,
    dir_entry,
    file_entry,
    normalize_entries,
    symlink_entry,
    tree_entries,
    write_layer,
)

EPOCH = 1_700_000_000


def _make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(0) + b"\x00\x01" * 1000)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o700)
    (root / "link").symlink_to("pkg/__init__.py")
    os.link(root / "pkg" / "__init__.py", root / "hard.py")
    (root / ("z" * 120)).write_text("long name\n")  # needs a PAX path record


def _layer(root: Path, out: Path):
    return write_layer(tree_entries(root, "/opt/app"), out, epoch=EPOCH)


def _members(blob_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob_path, "r:gz") as tar:
        return tar.getmembers()


def test_digests_describe_the_written_bytes(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    blob = _layer(tmp_path / "src", tmp_path / "l.tgz")
    data = (tmp_path / "l.tgz").read_bytes()
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()


def test_headers_are_normalized(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    blob = _layer(tmp_path / "src", tmp_path / "l.tgz")
    members = _members(blob.path)
    names = [m.name for m in members]
    # Explicit parents, before their children, in sorted order.
    assert names[:3] == ["opt", "opt/app", "opt/app/hard.py"]
    assert names == sorted(names, key=lambda n: n.encode())
    by = {m.name: m for m in members}
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", EPOCH)
        assert not any(k in m.pax_headers for k in ("atime", "ctime", "mtime")), m.pax_headers
    assert by["opt/app/pkg"].isdir() and by["opt/app/pkg"].mode == 0o755
    assert by["opt/app/pkg/__init__.py"].mode == 0o644
    assert by["opt/app/run.sh"].mode == 0o755  # 0700 on the host: executable bit kept, rest fixed
    assert by["opt/app/link"].issym() and by["opt/app/link"].linkname == "pkg/__init__.py"
    assert by["opt/app/hard.py"].isreg() and by["opt/app/hard.py"].size == 6  # not a hard link
    assert by["opt/app/" + "z" * 120].isreg()


def test_gzip_header_has_no_name_and_no_time(tmp_path: Path) -> None:
    blob = write_layer([bytes_entry("/a", b"x")], tmp_path / "named-file.tgz", epoch=EPOCH)
    head = blob.path.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08"
    assert head[3] == 0  # FLG: no FNAME, no comment, no extra
    assert head[4:8] == b"\0\0\0\0"  # MTIME 0


def test_same_bytes_whatever_the_host_timestamps_and_modes(tmp_path: Path) -> None:
    _make_tree(tmp_path / "a")
    _make_tree(tmp_path / "b")
    # Different mtimes, different permission bits (as another umask/checkout would leave them).
    for p in (tmp_path / "b").rglob("*"):
        if not p.is_symlink():
            os.utime(p, (12345, 12345))
    os.chmod(tmp_path / "b" / "pkg" / "__init__.py", 0o600)
    os.chmod(tmp_path / "b" / "pkg" / "sub", 0o700)
    os.chmod(tmp_path / "b" / "run.sh", 0o755)
    one = _layer(tmp_path / "a", tmp_path / "1.tgz")
    two = _layer(tmp_path / "b", tmp_path / "2.tgz")
    assert (one.digest, one.diff_id) == (two.digest, two.diff_id)


def test_entry_order_given_does_not_matter(tmp_path: Path) -> None:
    entries = [bytes_entry("/x/b", b"b"), bytes_entry("/x/a", b"a"), symlink_entry("/y/l", "../x/a"), dir_entry("/w")]
    one = write_layer(entries, tmp_path / "1.tgz", epoch=EPOCH)
    two = write_layer(list(reversed(entries)), tmp_path / "2.tgz", epoch=EPOCH)
    assert one.digest == two.digest
    assert [m.name for m in _members(one.path)] == ["w", "x", "x/a", "x/b", "y", "y/l"]


def test_epoch_is_in_every_header(tmp_path: Path) -> None:
    a = write_layer([bytes_entry("/f", b"1")], tmp_path / "a.tgz", epoch=0)
    b = write_layer([bytes_entry("/f", b"1")], tmp_path / "b.tgz", epoch=1)
    assert a.diff_id != b.diff_id
    assert {m.mtime for m in _members(b.path)} == {1}


def test_duplicate_paths_and_files_under_files_are_errors() -> None:
    with pytest.raises(BuildError, match="two entries for /a"):
        normalize_entries([bytes_entry("/a", b"1"), bytes_entry("/a", b"2")])
    with pytest.raises(BuildError, match="/a is a file"):
        normalize_entries([bytes_entry("/a", b"1"), bytes_entry("/a/b", b"2")])
    with pytest.raises(BuildError, match="invalid path"):
        bytes_entry("/../etc/passwd", b"")


def test_special_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe")
    with pytest.raises(BuildError, match="pipe: not a regular file"):
        tree_entries(tmp_path / "src", "/opt")


def test_unreadable_source_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "gone.txt"
    missing.write_text("x")
    entry = file_entry("/gone.txt", missing)
    missing.unlink()
    with pytest.raises(BuildError, match="gone.txt: could not read"):
        write_layer([entry], tmp_path / "out.tgz", epoch=EPOCH)
    assert not (tmp_path / "out.tgz").exists()


def test_skip_drops_paths(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "src" / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"")
    entries = tree_entries(tmp_path / "src", "/o", skip=lambda rel: "__pycache__" in rel.split("/"))
    assert not any("__pycache__" in e.path for e in entries)


_SUBPROCESS = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from mlbuild._oci.tarlayer import tree_entries, write_layer
    src = Path(sys.argv[1]); src.mkdir()
    (src / "d").mkdir()
    (src / "d" / "f.txt").write_text("hello")
    (src / "x.sh").write_text("#!/bin/sh")
    os.chmod(src / "x.sh", 0o777 & ~os.umask(0) | 0o100)
    print(write_layer(tree_entries(src, "/opt"), Path(sys.argv[2]), epoch=0).digest)
    """
)


def test_same_bytes_across_umask_and_timezone(tmp_path: Path) -> None:
    """Separate processes with another umask and TZ (what two CI machines would differ in)."""
    digests = set()
    for i, (umask, tz) in enumerate([("022", "UTC"), ("077", "Asia/Kolkata"), ("002", "America/New_York")]):
        env = {**os.environ, "TZ": tz}
        cmd = f"umask {umask} && exec {sys.executable} -c '{_SUBPROCESS}' {tmp_path}/src{i} {tmp_path}/out{i}.tgz"
        out = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
