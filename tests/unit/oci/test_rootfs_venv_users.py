"""Facts read from base layers, and the venv / user layers written from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlbuild._backends.oci_users import user_entries
from mlbuild._backends.oci_venv import is_venv_own, venv_entries
from mlbuild._errors import BuildError, ConfigError
from mlbuild._oci.base import open_base
from mlbuild._oci.rootfs import RootfsFacts, rootfs_facts, scan_rootfs
from mlbuild._platforms import parse_platform
from ocifixtures import GROUP, PASSWD, debian_like_layers, image_config, layer_tar, write_docker_archive

AMD64 = parse_platform("linux/amd64")


def _base(tmp_path: Path, layers=None, env=None):
    layers = layers or debian_like_layers()
    path = write_docker_archive(tmp_path / "b.tar", layers, config=image_config(layers, env=env))
    return open_base(str(path), AMD64)


def test_finds_python_through_symlinks_and_applies_whiteouts(tmp_path: Path) -> None:
    base = _base(tmp_path)
    facts = rootfs_facts(base, "3.11", None)
    assert facts == RootfsFacts("/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin", PASSWD, GROUP)
    fs = scan_rootfs(base)
    assert fs.kind("/tmp/gone") is None  # .wh.gone in the second layer deleted it
    assert fs.resolve("/bin/python3") == "/usr/bin/python3.11"  # /bin -> usr/bin, python3 -> python3.11


def test_default_path_when_config_has_none(tmp_path: Path) -> None:
    # docker import sets no PATH: the engine's default applies; /usr/local/bin comes first.
    layers = debian_like_layers() + [layer_tar([("usr/local/bin/python3", "/usr/bin/python3.11")])]
    facts = rootfs_facts(_base(tmp_path, layers, env=["PYTHON_VERSION=3.11.2"]), "3.11", None)
    assert (facts.python, facts.home, facts.python_real) == ("/usr/local/bin/python3", "/usr/local/bin", "/usr/bin/python3.11")


def test_opaque_directory_hides_lower_layers(tmp_path: Path) -> None:
    layers = debian_like_layers() + [layer_tar([("usr/lib/python3.11/.wh..wh..opq", b""), ("usr/lib/python3.11/new.py", b"")])]
    with pytest.raises(ConfigError, match=r"/usr/bin/python3 is not Python 3\.11 \(no /usr/lib/python3\.11/os\.py\)"):
        rootfs_facts(_base(tmp_path, layers), "3.11", None)


def test_wrong_python_and_no_python(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not Python 3\.12"):
        rootfs_facts(_base(tmp_path), "3.12", None)
    nopy = [layer_tar([("etc/passwd", PASSWD)])]
    with pytest.raises(ConfigError, match="no python3 on its PATH"):
        rootfs_facts(_base(tmp_path, nopy), "3.11", None)


def test_corrupt_layer_is_named(tmp_path: Path) -> None:
    layers = debian_like_layers()
    layers[1] = b"\x1f\x8b" + b"\0" * 600  # claims gzip, is not
    base = _base(tmp_path, layers)
    with pytest.raises(BuildError, match=r"member 1/layer.tar"):
        rootfs_facts(base, "3.11", None)


def test_facts_are_cached_by_base(tmp_path: Path) -> None:
    base = _base(tmp_path)
    first = rootfs_facts(base, "3.11", tmp_path / "cache")
    cached = list((tmp_path / "cache" / "rootfs").iterdir())
    assert len(cached) == 1
    # Prove the second call reads the cache: make the layers unreadable.
    (tmp_path / "b.tar").write_bytes(b"")
    assert rootfs_facts(base, "3.11", tmp_path / "cache") == first


FACTS = RootfsFacts("/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin", PASSWD, GROUP)


def test_venv_entries_match_python_m_venv() -> None:
    entries = {e.path: e for e in venv_entries("/opt/mlbuild/model-env", FACTS, python_minor="3.11", python_version="3.11.2")}
    cfg = entries["/opt/mlbuild/model-env/pyvenv.cfg"].source
    assert cfg == (
        b"home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n"
        b"executable = /usr/bin/python3.11\ncommand = /usr/bin/python3 -m venv --without-pip /opt/mlbuild/model-env\n"
    )
    # What `python3 -m venv` makes on Debian: python3 -> the base's, the other names -> python3.
    assert entries["/opt/mlbuild/model-env/bin/python3"].target == "/usr/bin/python3"
    assert entries["/opt/mlbuild/model-env/bin/python"].target == "python3"
    assert entries["/opt/mlbuild/model-env/bin/python3.11"].target == "python3"
    assert entries["/opt/mlbuild/model-env/lib64"].target == "lib"
    assert entries["/opt/mlbuild/model-env/include/python3.11"].kind == "dir"
    slim = RootfsFacts("/usr/local/bin/python", "/usr/local/bin/python3.11", "/usr/local/bin", b"", b"")
    links = {e.path.rsplit("/", 1)[1]: e.target for e in venv_entries("/e", slim, python_minor="3.11", python_version=None) if e.kind == "symlink"}
    assert links == {"python": "/usr/local/bin/python", "python3": "python", "python3.11": "python", "lib64": "lib"}
    assert is_venv_own("bin/python3.11", "3.11") and not is_venv_own("bin/uvicorn", "3.11")


def test_user_lines_appended_once() -> None:
    files = {e.path: e.source for e in user_entries(FACTS)}
    assert files["/etc/passwd"] == PASSWD + b"mlbuild:x:10001:10001:mlbuild:/opt/mlbuild/model:/usr/sbin/nologin\n"
    assert files["/etc/group"] == GROUP + b"mlbuild:x:10001:\n"
    already = RootfsFacts(FACTS.python, FACTS.python_real, FACTS.home, files["/etc/passwd"], files["/etc/group"])
    assert {e.path: e.source for e in user_entries(already)} == files
    no_newline = RootfsFacts(FACTS.python, FACTS.python_real, FACTS.home, b"root:x:0:0::/root:/bin/sh", b"root:x:0:")
    assert {e.path: e.source for e in user_entries(no_newline)}["/etc/group"] == b"root:x:0:\nmlbuild:x:10001:\n"


def test_uid_taken_by_someone_else() -> None:
    taken = RootfsFacts(FACTS.python, FACTS.python_real, FACTS.home, PASSWD + b"app:x:10001:10001::/:/bin/sh\n", GROUP)
    with pytest.raises(BuildError, match=r"already has 'app' with id 10001"):
        user_entries(taken)


def test_whiteout_of_a_top_level_dot_name(tmp_path: Path) -> None:
    """A layer deleting /.hidden writes ".wh..hidden" at the root ("./.wh..hidden" with a ./
    prefix, as tar -C dir . writes it): the leading dots are part of the name."""
    added = layer_tar([("./.hidden", b"x"), ("./.profile", b"x"), ("./.keep", None)])
    (tmp_path / "before").mkdir(), (tmp_path / "after").mkdir()
    before = scan_rootfs(_base(tmp_path / "before", debian_like_layers() + [added]))
    assert (before.kind("/.hidden"), before.kind("/.profile"), before.kind("/.keep")) == ("file", "file", "dir")
    deleted = layer_tar([("./.wh..hidden", b""), (".wh..profile", b"")])
    after = scan_rootfs(_base(tmp_path / "after", debian_like_layers() + [added, deleted]))
    assert (after.kind("/.hidden"), after.kind("/.profile"), after.kind("/.keep")) == (None, None, "dir")
