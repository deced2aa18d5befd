"""Hostile base images: each malformed or risky layer entry gives its exact error or warning
line (naming the layer and the entry), the opt-out works, the normal base gives no line, a
gzip bomb is scanned with bounded memory (measured in a child process), symlink chains cost
bounded work, and the model's memory stays within what its budget charges."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from mlbuild._errors import BuildError
from mlbuild._oci.base import BaseImage, open_base
from mlbuild._oci.rootfs import SMALL_FILE_MAX, UNSAFE_BASE_ENV, rootfs_facts, scan_rootfs
from mlbuild._platforms import parse_platform
from ocifixtures import (
    GROUP,
    PASSWD,
    debian_like_layers,
    gzip_layer_of_empty_files,
    image_config,
    sha,
    symlink_chain_layer,
    write_docker_archive,
)
from support.plans import Envs, oci_build, plan_for

AMD64 = parse_platform("linux/amd64")
REPO = Path(__file__).resolve().parents[3]
HINT = f"set {UNSAFE_BASE_ENV}=1"


# ---------------------------------------------------------------- building layers


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, link, mode, size
    return info


def raw_layer(*members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """An uncompressed layer written entry by entry, exactly as given (tarfile does not clean
    names on writing, so ``../evil`` stays ``../evil``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info, data = m if isinstance(m, tuple) else (m, b"")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def file_(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, mode=mode), data


def symlink(name: str, target: str) -> tarfile.TarInfo:
    return _info(name, tarfile.SYMTYPE, link=target, mode=0o777)


def hardlink(name: str, target: str) -> tarfile.TarInfo:
    return _info(name, tarfile.LNKTYPE, link=target)


def device(name: str, major: int, minor: int, kind: bytes = tarfile.CHRTYPE) -> tarfile.TarInfo:
    info = _info(name, kind, mode=0o666)
    info.devmajor, info.devminor = major, minor
    return info


def short(layer_blob: bytes) -> str:
    return sha(layer_blob)[:19]  # sha256: + 12 hex, as the lines name a layer


def base_with(tmp_path: Path, *extra: bytes) -> BaseImage:
    layers = debian_like_layers() + list(extra)
    path = write_docker_archive(tmp_path / f"base-{len(list(tmp_path.iterdir()))}.tar", layers, config=image_config(layers))
    return open_base(f"docker-archive:{path}", AMD64)


def facts_and_lines(base: BaseImage, cache: Path | None = None, **kw):
    lines: list[str] = []
    facts = rootfs_facts(base, "3.11", cache, warn=lines.append, **kw)
    return facts, lines


@pytest.fixture(autouse=True)
def _strict(monkeypatch) -> None:
    monkeypatch.delenv(UNSAFE_BASE_ENV, raising=False)  # a developer's shell must not turn errors off


# ---------------------------------------------------------------- the normal base


def test_normal_base_gives_no_line(tmp_path: Path) -> None:
    facts, lines = facts_and_lines(base_with(tmp_path))
    assert (facts.python_real, facts.passwd, facts.group) == ("/usr/bin/python3.11", PASSWD, GROUP)
    assert lines == []


def test_normal_entries_give_no_line(tmp_path: Path) -> None:
    """What real Debian layers hold: absolute symlinks, relative ones that stay inside, hard
    links to earlier files, the standard /dev nodes, setuid programs in system directories
    (one summary note), setgid directories, FIFOs."""
    layer = raw_layer(
        file_("usr/bin/mawk"), symlink("etc/alternatives/awk", "/usr/bin/mawk"),
        symlink("usr/bin/awk", "/etc/alternatives/awk"),
        symlink("usr/lib/x86_64-linux-gnu/libz.so", "../../../lib/x86_64-linux-gnu/libz.so.1"),
        hardlink("usr/bin/python3.11-hl", "usr/bin/python3.11"),
        device("dev/null", 1, 3), device("dev/zero", 1, 5), device("dev/loop0", 7, 0, tarfile.BLKTYPE),
        file_("usr/bin/su", mode=0o4755), file_("usr/sbin/unix_chkpwd", mode=0o2755),
        _info("var/mail", tarfile.DIRTYPE, mode=0o2775),
        _info("run/initctl", tarfile.FIFOTYPE),
    )
    fs = scan_rootfs(base_with(tmp_path, layer))
    assert fs.warnings == [
        "note: the base image has 2 setuid/setgid files in system directories (/usr/bin/su, /usr/sbin/unix_chkpwd); "
        "run the image with no-new-privileges (Kubernetes: allowPrivilegeEscalation: false) so they cannot raise privileges"
    ]
    assert fs.resolve("/usr/bin/awk") == "/usr/bin/mawk"
    assert fs.kind("/usr/bin/python3.11-hl") == "file" and fs.kind("/run/initctl") == "fifo"


# ---------------------------------------------------------------- errors (with the opt-out)


@pytest.mark.parametrize("name", ["../evil", "/../../x", "usr/../../etc/passwd"])
def test_name_leaving_the_root_is_an_error(tmp_path: Path, name: str) -> None:
    layer = raw_layer(file_("ok"), file_(name, b"pwned:x:0:0::/:/bin/sh\n"))
    with pytest.raises(BuildError) as info:
        rootfs_facts(base_with(tmp_path, layer), "3.11", None)
    assert str(info.value) == f"base layer {short(layer)}: entry '{name}' leaves the image root"
    assert HINT in (info.value.hint or "")


def test_name_leaving_the_root_opted_out_is_read_where_engines_put_it(tmp_path: Path, monkeypatch) -> None:
    # Docker 20.10 (overlay2) loads ../etc/passwd as /etc/passwd; mlbuild must then read what runs.
    layer = raw_layer(file_("../etc/passwd", b"pwned:x:0:0::/:/bin/sh\n"))
    monkeypatch.setenv(UNSAFE_BASE_ENV, "1")
    facts, lines = facts_and_lines(base_with(tmp_path, layer))
    assert lines == [
        f"warning: base layer {short(layer)}: entry '../etc/passwd' leaves the image root "
        f"(read as /etc/passwd, as engines do: {UNSAFE_BASE_ENV}=1)"
    ]
    assert facts.passwd == b"pwned:x:0:0::/:/bin/sh\n"


def test_hard_link_to_nothing_is_an_error(tmp_path: Path) -> None:
    layer = raw_layer(file_("ok"), hardlink("etc/hosts", "nowhere/file"))
    with pytest.raises(BuildError) as info:
        scan_rootfs(base_with(tmp_path, layer))
    assert str(info.value) == f"base layer {short(layer)}: hard link 'etc/hosts' -> 'nowhere/file' names nothing earlier in the image"
    assert HINT in (info.value.hint or "")
    # Opted out, it is left out (docker load would fail on it anyway).
    fs = scan_rootfs(base_with(tmp_path, layer), allow_unsafe=True)
    assert fs.kind("/etc/hosts") is None
    assert fs.warnings == [
        f"warning: base layer {short(layer)}: hard link 'etc/hosts' -> 'nowhere/file' names nothing earlier "
        f"in the image (left out: {UNSAFE_BASE_ENV}=1)"
    ]


def test_hard_link_leaving_the_root_is_an_error(tmp_path: Path) -> None:
    layer = raw_layer(hardlink("etc/passwd", "../../../etc/shadow"))
    with pytest.raises(BuildError) as info:
        scan_rootfs(base_with(tmp_path, layer))
    assert str(info.value) == f"base layer {short(layer)}: hard link 'etc/passwd' -> '../../../etc/shadow' leaves the image root"


def test_hard_link_to_a_directory_and_a_later_entry_are_errors(tmp_path: Path) -> None:
    to_dir = raw_layer(hardlink("x", "usr/bin"))
    with pytest.raises(BuildError, match=r"hard link 'x' -> 'usr/bin' names a directory$"):
        scan_rootfs(base_with(tmp_path, to_dir))
    before_target = raw_layer(hardlink("a", "b"), file_("b"))  # the target must come first
    with pytest.raises(BuildError, match=r"hard link 'a' -> 'b' names nothing earlier in the image$"):
        scan_rootfs(base_with(tmp_path, before_target))


def test_hard_link_keeps_the_targets_content(tmp_path: Path) -> None:
    layer = raw_layer(file_("etc/passwd-", PASSWD), file_("etc/passwd", PASSWD), hardlink("etc/group", "etc/passwd"))
    facts, lines = facts_and_lines(base_with(tmp_path, layer))
    assert facts.group == PASSWD and lines == []


def test_whiteout_of_dot_dot_is_an_error(tmp_path: Path) -> None:
    layer = raw_layer(file_("usr/lib/.wh...", b""))
    with pytest.raises(BuildError) as info:
        scan_rootfs(base_with(tmp_path, layer))
    assert str(info.value) == f"base layer {short(layer)}: entry 'usr/lib/.wh...' is a whiteout of '..', not of a name"
    # Opted out it is ignored: /usr/lib (and python in it) is still there.
    assert scan_rootfs(base_with(tmp_path, layer), allow_unsafe=True).kind("/usr/lib/python3.11/os.py") == "file"


# ---------------------------------------------------------------- warnings


def test_symlink_climbing_above_the_root_warns_and_stays_inside(tmp_path: Path) -> None:
    layer = raw_layer(symlink("a", "../../../../etc/shadow"))
    fs = scan_rootfs(base_with(tmp_path, layer))
    assert fs.warnings == [f"warning: base layer {short(layer)}: symlink 'a' -> '../../../../etc/shadow' climbs above the image root"]
    # Resolved inside the image, where .. stops at /: the image has no /etc/shadow (the host may).
    assert fs.resolve("/a") is None


def test_passwd_replaced_by_a_climbing_symlink_is_read_inside_the_image(tmp_path: Path) -> None:
    layer = raw_layer(symlink("etc/passwd", "../../../../../../etc/group"))
    facts, lines = facts_and_lines(base_with(tmp_path, layer))
    assert facts.passwd == GROUP  # the image's /etc/group, never a file of the host
    assert lines == [f"warning: base layer {short(layer)}: symlink 'etc/passwd' -> '../../../../../../etc/group' climbs above the image root"]


def test_char_device_outside_dev_warns(tmp_path: Path) -> None:
    layer = raw_layer(device("tmp/mem", 1, 1), device("srv/sda", 8, 0, tarfile.BLKTYPE), device("dev/null", 1, 3))
    facts, lines = facts_and_lines(base_with(tmp_path, layer))
    assert lines == [
        f"warning: base layer {short(layer)}: entry 'tmp/mem' is a char device 1,1 outside /dev",
        f"warning: base layer {short(layer)}: entry 'srv/sda' is a block device 8,0 outside /dev",
    ]


def test_setuid_file_outside_the_system_directories_warns(tmp_path: Path) -> None:
    layer = raw_layer(file_("opt/tool/rootsh", mode=0o4755), file_("usr/local/bin/helper", mode=0o2755), file_("usr/bin/su", mode=0o4755))
    fs = scan_rootfs(base_with(tmp_path, layer))
    assert fs.warnings[:2] == [
        f"warning: base layer {short(layer)}: entry 'opt/tool/rootsh' is setuid/setgid outside the system directories",
        f"warning: base layer {short(layer)}: entry 'usr/local/bin/helper' is setuid/setgid outside the system directories",
    ]
    assert fs.warnings[2].startswith("note: the base image has 1 setuid/setgid files in system directories (/usr/bin/su)")
    assert len(fs.warnings) == 3


def test_setuid_removed_by_a_later_layer_leaves_the_summary(tmp_path: Path) -> None:
    fs = scan_rootfs(base_with(tmp_path, raw_layer(file_("usr/bin/su", mode=0o4755)), raw_layer(file_("usr/bin/.wh.su", b""))))
    assert fs.warnings == []


def test_lines_are_capped_per_class_and_layer(tmp_path: Path) -> None:
    layer = raw_layer(*(device(f"tmp/d{i:02}", 1, 1) for i in range(25)))
    fs = scan_rootfs(base_with(tmp_path, layer))
    assert len(fs.warnings) == 11
    assert fs.warnings[-1] == f"warning: base layer {short(layer)}: 15 more entries like the above (devices)"


def test_control_characters_in_a_name_cannot_forge_a_line(tmp_path: Path) -> None:
    layer = raw_layer(device("tmp/x\nwarning: all good", 1, 1))
    (line,) = scan_rootfs(base_with(tmp_path, layer)).warnings
    assert "\n" not in line and "'tmp/x\\nwarning: all good'" in line


# ---------------------------------------------------------------- caching and the backend


def test_cache_repeats_warnings_and_never_serves_an_opted_out_scan_to_a_strict_build(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    warn_layer = raw_layer(device("tmp/mem", 1, 1))
    base = base_with(tmp_path, warn_layer)
    first = facts_and_lines(base, cache)
    assert first[1] and facts_and_lines(base, cache) == first  # the cache hit says it again
    bad = base_with(tmp_path, raw_layer(file_("../evil")))
    facts_and_lines(bad, cache, allow_unsafe=True)  # cached under the opt-out
    with pytest.raises(BuildError, match="leaves the image root"):
        facts_and_lines(bad, cache, allow_unsafe=False)


def test_backend_reports_base_warnings_through_progress(tmp_path: Path) -> None:
    from mlbuild._lock import Lock
    from mlbuild._spec import load_spec

    model = tmp_path / "echo"
    shutil.copytree(REPO / "tests" / "fixtures" / "models" / "echo", model, ignore=shutil.ignore_patterns("__pycache__"))
    envs = []
    for kind in ("server", "model"):
        site = tmp_path / kind / "lib" / "python3.11" / "site-packages"
        site.mkdir(parents=True)
        (site / f"{kind}_mod.py").write_text("x = 1\n")
        envs.append(tmp_path / kind)
    (model / "mlbuild.lock").write_text("# fake lock\n")
    lock = Lock(model / "mlbuild.lock", "3.11", ("linux/amd64",), "uv", "0" * 64, (), "sha256:" + "1" * 64)
    layer = raw_layer(device("tmp/mem", 1, 1))
    layers = debian_like_layers() + [layer]
    archive = write_docker_archive(tmp_path / "base.tar", layers, config=image_config(layers))
    lines: list[str] = []
    plan = plan_for(load_spec(model), lock, tag="echo:1", envs=Envs(envs[0], envs[1], "sha256:" + "2" * 64),
                    base_image=f"docker-archive:{archive}", progress=lines.append)
    oci_build(plan, output=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert f"warning: base layer {short(layer)}: entry 'tmp/mem' is a char device 1,1 outside /dev" in lines


# ---------------------------------------------------------------- reading layers


def test_entries_under_a_symlinked_directory_land_where_the_link_points(tmp_path: Path) -> None:
    """An extractor writes bin/tool through Debian's /bin -> usr/bin; so does the model."""
    fs = scan_rootfs(base_with(tmp_path, raw_layer(file_("bin/tool")), raw_layer(file_("bin/.wh.python3", b""))))
    assert fs.kind("/usr/bin/tool") == "file" and fs.kind("/bin/tool") is None
    assert fs.kind("/usr/bin/python3") is None  # the whiteout went through the link too


def test_small_file_cap(tmp_path: Path) -> None:
    layer = raw_layer(file_("etc/passwd", b"x" * (SMALL_FILE_MAX + 1)))
    with pytest.raises(BuildError) as info:
        rootfs_facts(base_with(tmp_path, layer), "3.11", None)
    assert str(info.value) == (
        f"base layer {short(layer)}: /etc/passwd is {SMALL_FILE_MAX + 1} bytes; mlbuild reads base files of at most {SMALL_FILE_MAX} bytes"
    )
    # A big file replaced by a small one later is fine: only what the image ends with is read.
    facts, _ = facts_and_lines(base_with(tmp_path, layer, raw_layer(file_("etc/passwd", PASSWD))))
    assert facts.passwd == PASSWD


def test_xz_layers_are_read_and_zstd_is_named(tmp_path: Path) -> None:
    layers = [lzma.compress(l) for l in debian_like_layers()]
    config = json.loads(image_config(debian_like_layers()))
    path = write_docker_archive(tmp_path / "xz.tar", layers, config=json.dumps(config).encode())
    assert rootfs_facts(open_base(str(path), AMD64), "3.11", None).passwd == PASSWD
    zstd = write_docker_archive(tmp_path / "zstd.tar", [b"\x28\xb5\x2f\xfd" + b"\0" * 600])
    with pytest.raises(BuildError, match=r"member 0/layer.tar: a zstd-compressed layer, which mlbuild cannot read"):
        scan_rootfs(open_base(str(zstd), AMD64))


# ---------------------------------------------------------------- the gzip bomb


def gzip_bomb(name: str, size: int, header_type: bytes = tarfile.REGTYPE) -> tuple[bytes, str]:
    """(a .tar.gz layer holding ``name`` = ``size`` zero bytes, its diff_id), built without
    compressing ``size`` bytes: after a full flush deflate starts afresh, so 1 MiB of zeros
    always compresses to the same bytes, repeated (400 MiB -> ~400 KB)."""
    header = _info(name, header_type, size=size).tobuf(tarfile.USTAR_FORMAT if header_type != tarfile.REGTYPE else tarfile.PAX_FORMAT)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = bytes(1 << 20)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH) == block  # the property the trick needs
    n, rest = divmod(size, 1 << 20)
    tail = bytes(rest + (-size) % 512 + 1024)  # file padding, then the tar's end blocks
    deflated = head + block * n + c.compress(tail) + c.flush()
    crc, digest = zlib.crc32(header), hashlib.sha256(header)
    for _ in range(n):
        crc = zlib.crc32(mib, crc)
        digest.update(mib)
    crc, total = zlib.crc32(tail, crc), len(header) + n * len(mib) + len(tail)
    digest.update(tail)
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little")
    return gz, "sha256:" + digest.hexdigest()


_CHILD = """
import resource, sys
from mlbuild._errors import MlbuildError
from mlbuild._oci.base import open_base
from mlbuild._oci.rootfs import rootfs_facts
from mlbuild._platforms import parse_platform
try:
    facts = rootfs_facts(open_base(sys.argv[1], parse_platform("linux/amd64")), "3.11", None)
    print("facts", facts.python_real, len(facts.passwd))
except MlbuildError as exc:
    print("error", exc)
# VmHWM is this process's own peak; ru_maxrss would also count the parent (pytest) when the
# child was started by vfork, as the kernel records the old mm's peak at exec.
try:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak_kib", peak)
"""
PEAK_LIMIT_MIB = 100  # the child imports mlbuild in ~20 MiB; the scan adds ~1 MiB


def _scan_in_child(tmp_path: Path, name: str) -> tuple[str, float, bytes]:
    bomb, diff_id = gzip_bomb(name, 400 << 20)
    assert len(bomb) < 1 << 20  # under 1 MB on disk, 400 MiB inflated
    layers = debian_like_layers()
    config = json.loads(image_config(layers))
    config["rootfs"]["diff_ids"].append(diff_id)
    path = write_docker_archive(tmp_path / "bomb.tar", [*layers, bomb], config=json.dumps(config).encode())
    result, peak_mib = _run_child(path)
    return result, peak_mib, bomb


def _run_child(path: Path) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, f"docker-archive:{path}"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    result, peak = out.stdout.splitlines()
    return result, int(peak.split()[1]) / 1024


def test_gzip_bomb_as_passwd_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """The bomb where mlbuild reads (/etc/passwd): read whole, it took 837 MB (2 GB with the
    facts cache); now the read is refused, and the scan still streams past 400 MiB."""
    result, peak_mib, bomb = _scan_in_child(tmp_path, "etc/passwd")
    assert peak_mib < PEAK_LIMIT_MIB, f"peak RSS {peak_mib:.0f} MiB"
    assert result == (f"error base layer {sha(bomb)[:19]}: /etc/passwd is {400 << 20} bytes; "
                      f"mlbuild reads base files of at most {SMALL_FILE_MAX} bytes")


def test_gzip_bomb_elsewhere_is_streamed_past(tmp_path: Path) -> None:
    result, peak_mib, _ = _scan_in_child(tmp_path, "srv/zeros.bin")
    assert result == f"facts /usr/bin/python3.11 {len(PASSWD)}"
    assert peak_mib < PEAK_LIMIT_MIB, f"peak RSS {peak_mib:.0f} MiB"


def test_many_whiteouts_cost_what_they_delete(tmp_path: Path) -> None:
    """30,000 directories deleted one by one: a scan of the tree per whiteout (4.5e8 prefix
    checks) took ~26 s; walking the children index takes ~1.5 s (mostly reading the tar)."""
    import time

    n = 30_000
    made = raw_layer(*(_info(f"srv/d{i}", tarfile.DIRTYPE, mode=0o755) for i in range(n)), file_("srv/d7/keep"))
    gone = raw_layer(*(file_(f"srv/.wh.d{i}", b"") for i in range(1, n)))
    # No absolute time bound (bench/ owns timing): the same layers, with the whiteouts renamed
    # to plain empty files, are the baseline measured in this run. Deleting must cost about
    # what adding costs (linear), not a scan of the tree per whiteout (~20x the baseline).
    plain = raw_layer(*(file_(f"srv/wh.d{i}", b"") for i in range(1, n)))
    t0 = time.monotonic()
    (tmp_path / "baseline").mkdir()
    scan_rootfs(base_with(tmp_path / "baseline", made, plain))
    baseline = time.monotonic() - t0
    t0 = time.monotonic()
    fs = scan_rootfs(base_with(tmp_path, made, gone))
    deleting = time.monotonic() - t0
    assert deleting < 4 * baseline + 1.0, f"whiteouts {deleting:.2f} s vs the same layer as files {baseline:.2f} s"
    assert fs.kind("/srv/d0") == "dir" and fs.kind("/srv/d7") is None and fs.kind("/srv/d7/keep") is None
    assert sorted(p for p in fs.entries if p.startswith("/srv/")) == ["/srv/d0"]


def test_gzip_bomb_in_a_pax_header_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """tarfile reads a pax header whole: 400 MiB of it was 400 MiB of RAM (and more to parse)."""
    bomb, diff_id = gzip_bomb("", 400 << 20, header_type=tarfile.XHDTYPE)
    layers = debian_like_layers()
    config = json.loads(image_config(layers))
    config["rootfs"]["diff_ids"].append(diff_id)
    path = write_docker_archive(tmp_path / "pax.tar", [*layers, bomb], config=json.dumps(config).encode())
    result, peak_mib = _run_child(path)
    assert peak_mib < PEAK_LIMIT_MIB, f"peak RSS {peak_mib:.0f} MiB"
    assert result == (f"error {path} member 2/layer.tar: not a readable layer tar "
                      f"(an extended header of {400 << 20} bytes, more than the {64 << 10} mlbuild reads)")


def test_model_size_is_capped(tmp_path: Path, monkeypatch) -> None:
    import mlbuild._oci.rootfs as rootfs

    monkeypatch.setattr(rootfs, "MODEL_BYTES_MAX", 1 << 20)  # the real cap is 256 MiB: same code path
    layer = raw_layer(*(file_("srv/" + "n" * 150 + str(i), b"") for i in range(4000)))
    with pytest.raises(BuildError, match=rf"base layer {short(layer)}: more entries than mlbuild reads \(1 MiB of names, at entry 'srv/n+\d+'\)$"):
        scan_rootfs(base_with(tmp_path, layer))


# ---------------------------------------------------------------- PATH_MAX and symlink chains


def _cut(text: str) -> str:
    return "'" + text[:200] + "…'"  # how a long name is shown in a line


def test_name_or_link_target_longer_than_path_max_is_an_error(tmp_path: Path) -> None:
    """Linux refuses both (ENAMETOOLONG: `docker load` fails with "file name too long"), and
    4095 bytes loads; a long target was also what let a chain of links cost hours."""
    target = "x/" * 2048  # 4096 bytes
    for member, line in [
        (symlink("a", target), f"symlink 'a' -> {_cut(target)} has a target of 4096 bytes"),
        (hardlink("h", target), f"hard link 'h' -> {_cut(target)} has a target of 4096 bytes"),
        (file_("d/" * 2048 + "f"), f"entry {_cut('d/' * 2048)} has a name of 4097 bytes"),
        (file_("é/" * 1400 + "f"), f"entry {_cut('é/' * 1400)} has a name of 4201 bytes"),  # bytes, not characters
    ]:
        layer = raw_layer(file_("ok"), member)
        with pytest.raises(BuildError) as info:
            scan_rootfs(base_with(tmp_path, layer))
        assert str(info.value) == f"base layer {short(layer)}: {line}; Linux takes at most 4095 (PATH_MAX)"
        assert HINT in (info.value.hint or "")
        fs = scan_rootfs(base_with(tmp_path, layer), allow_unsafe=True)
        assert fs.warnings == [f"warning: base layer {short(layer)}: {line}; Linux takes at most 4095 (PATH_MAX) "
                               f"(left out: {UNSAFE_BASE_ENV}=1)"]
        assert sorted(p for p in fs.entries if p.startswith(("/a", "/h", "/d", "/é"))) == []
    at_limit = raw_layer(symlink("a", target[:4095]), file_("d/" * 2047 + "f"))  # 4095 bytes each: loads
    fs = scan_rootfs(base_with(tmp_path, at_limit))
    assert fs.warnings == [] and fs.kind("/a") == "symlink" and fs.kind("/" + "d/" * 2047 + "f") == "file"


def test_entry_under_a_directory_that_does_not_resolve_is_an_error(tmp_path: Path) -> None:
    """`docker load` fails on each (ELOOP for the loop, and the chain is more than mlbuild walks)."""
    unresolved = "does not resolve (a symlink loop, or more than 40 links, 4096 path components or 4095 bytes)"
    loop = raw_layer(symlink("l1", "l2"), symlink("l2", "l1"), file_("l1/f"))
    chain = symlink_chain_layer(40, 800, ["s0/f"])  # 40 links of 1,601 components each
    too_many = raw_layer(*(symlink(f"k{i}", f"k{i + 1}") for i in range(41)), _info("k41", tarfile.DIRTYPE), file_("k0/f"))
    links = raw_layer(symlink("l1", "l2"), symlink("l2", "l1"))
    whiteout = raw_layer(file_("l1/.wh.f", b""))  # a whiteout applies to the layers below, where the loop is
    for layers, entry, directory in [([loop], "l1/f", "/l1"), ([chain], "s0/f", "/s0"), ([too_many], "k0/f", "/k0"),
                                     ([links, whiteout], "l1/.wh.f", "/l1")]:
        line = f"entry '{entry}': its directory '{directory}' {unresolved}"
        with pytest.raises(BuildError) as info:
            scan_rootfs(base_with(tmp_path, *layers))
        assert str(info.value) == f"base layer {short(layers[-1])}: {line}"
        fs = scan_rootfs(base_with(tmp_path, *layers), allow_unsafe=True)
        assert fs.warnings == [f"warning: base layer {short(layers[-1])}: {line} (left out: {UNSAFE_BASE_ENV}=1)"]
        assert fs.kind(entry.replace(".wh.", "")) is None
    # 40 links is what the kernel follows, and mlbuild too.
    forty = raw_layer(*(symlink(f"k{i}", f"k{i + 1}") for i in range(40)), _info("k40", tarfile.DIRTYPE), file_("k0/f"))
    fs = scan_rootfs(base_with(tmp_path, forty))
    assert fs.warnings == [] and fs.kind("/k40/f") == "file"


def test_entries_under_a_long_symlink_chain_cost_linear_work(tmp_path: Path) -> None:
    """Two links of 1,601 components each (3,200 components to resolve s0): each entry under
    s0/ re-walked them (N x 3,200 components); the resolved directory is now cached, so the
    work (components processed, counted by the scan) grows by a few units per entry."""
    def work(n: int) -> int:
        layer = symlink_chain_layer(2, 800, [f"s0/f{i}" for i in range(n)])
        fs = scan_rootfs(base_with(tmp_path, layer))
        assert fs.warnings == [] and fs.kind(f"/d/f{n - 1}") == "file" and fs.kind("/s0/f0") is None
        return fs.walk_steps
    small, big = work(100), work(1100)
    assert big - small <= 4 * 1000, (small, big)
    # A symlink entry in between changes what paths resolve to: the cache is dropped, not stale.
    layer = raw_layer(_info("d1", tarfile.DIRTYPE), _info("d2", tarfile.DIRTYPE), symlink("s", "d1"), file_("s/a"),
                      symlink("s", "d2"), file_("s/b"))
    fs = scan_rootfs(base_with(tmp_path, layer))
    assert (fs.kind("/d1/a"), fs.kind("/d2/b"), fs.kind("/d1/b")) == ("file", "file", None)
    mid = raw_layer(_info("d1", tarfile.DIRTYPE), _info("d2", tarfile.DIRTYPE), symlink("s", "d1"), file_("s/a"))
    fs = scan_rootfs(base_with(tmp_path, mid, raw_layer(file_(".wh.s", b""), symlink("s", "d2"), file_("s/b"))))
    assert (fs.kind("/d1/a"), fs.kind("/d2/b"), fs.kind("/d1/b")) == ("file", "file", None)


def test_symlink_walking_is_capped_per_scan(tmp_path: Path, monkeypatch) -> None:
    """Distinct directories under a long chain each need a full walk (3,200 components); the
    scan's total is capped (the real cap is WALK_STEPS_MAX: same code path)."""
    import mlbuild._oci.rootfs_tree as tree

    monkeypatch.setattr(tree, "WALK_STEPS_MAX", 100_000)
    layer = symlink_chain_layer(2, 800, [f"s0/a{i}/f" for i in range(100)])
    with pytest.raises(BuildError, match=rf"^base layer {short(layer)}: more symlink walking than mlbuild does "
                                         r"\(100000 path components, at entry 's0/a\d+/f'\)$"):
        scan_rootfs(base_with(tmp_path, layer), allow_unsafe=True)


_CPU_CHILD = """
import sys, time
from mlbuild._oci.base import open_base
from mlbuild._oci.rootfs import scan_rootfs
from mlbuild._platforms import parse_platform
t0 = time.monotonic()
fs = scan_rootfs(open_base(sys.argv[1], parse_platform("linux/amd64")), allow_unsafe=True)
print(round(time.monotonic() - t0, 2), len(fs.warnings), fs.warnings[-1])
"""


def test_symlink_chain_cannot_stall_the_scan(tmp_path: Path) -> None:
    """The review's shape: 40 chained links of 1,601 components each and 3,000 entries under the
    first (opted out, so the scan goes on). Each entry re-walked 64,000 components (~30 ms):
    ~100 s for this layer, hours for 100k entries; now the walk stops at 4,096 components,
    once, and the answer is cached."""
    layer = symlink_chain_layer(40, 800, [f"s0/f{i}" for i in range(3000)])
    layers = debian_like_layers() + [layer]
    path = write_docker_archive(tmp_path / "chain.tar", layers, config=image_config(layers))
    try:
        out = subprocess.run([sys.executable, "-c", _CPU_CHILD, f"docker-archive:{path}"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the scan took more than 60 s")
    assert out.returncode == 0, out.stderr
    seconds, count, last = out.stdout.split(" ", 2)
    assert float(seconds) < 20 and count == "11"
    assert last.strip() == f"warning: base layer {short(layer)}: 2990 more entries like the above (unsafe entries)"


# ---------------------------------------------------------------- the model's memory

_MEM_CHILD = """
import json, sys, tracemalloc
import mlbuild._oci.rootfs as rootfs
from mlbuild._errors import MlbuildError
from mlbuild._oci.base import BaseLayer, open_layer_tar
path, budget = sys.argv[1], int(sys.argv[2])
rootfs.MODEL_BYTES_MAX = budget
layer = BaseLayer("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "0" * 64, 0, "sha256:" + "0" * 64,
                  lambda: open(path, "rb"), path)
tracemalloc.start()
start = tracemalloc.get_traced_memory()[0]
fs = rootfs.Rootfs()
try:
    with open_layer_tar(layer) as tar:
        fs.apply_layer(tar, path, layer="L")
    result = "ok"
except MlbuildError as exc:
    result = str(exc)
peak = tracemalloc.get_traced_memory()[1] - start
print(json.dumps({"result": result, "peak": peak, "charged": getattr(fs, "charged_peak", None), "n": len(fs.entries)}))
"""
_SLACK = 2 << 20  # the layer stream's buffers (tarfile reads 256 KiB at a time) and the like


def _memory_in_child(layer: Path, budget: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(layer), str(budget)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("shape", ["flat", "deep"])
def test_model_memory_stays_within_its_budget(tmp_path: Path, shape: str) -> None:
    """Python's own count (tracemalloc) of what the scan holds, against MODEL_BYTES_MAX set to
    6 MiB: a layer over it is refused before memory passes ~1.3x the budget. Before, flat (many
    empty files) took 3.4x (every TarInfo kept, each entry's strings twice), and deep (3.8 KB
    names, each making 1,900 implicit parent directories) took ~4 MB per 4 KB charged."""
    budget = 6 << 20
    if shape == "flat":
        names = (f"d/{i:x}" for i in range(50_000))
    else:
        names = (f"a{i}/" + "a/" * 1900 + "f" for i in range(12))
    layer = gzip_layer_of_empty_files(tmp_path / "many.tar.gz", names)
    got = _memory_in_child(layer, budget)
    assert got["result"].startswith("base layer L: more entries than mlbuild reads (6 MiB of names, at entry "), got
    assert got["peak"] < 1.3 * budget + _SLACK, f"peak {got['peak'] / 2**20:.1f} MiB for a budget of 6 MiB"


def test_model_memory_matches_what_the_budget_charges(tmp_path: Path) -> None:
    """A layer the budget takes: the charge (peak of what was counted) is what Python holds,
    within 1.3x either way (so the 256 MiB cap means 256 MiB, and a real base is not refused
    for memory it never uses)."""
    layer = gzip_layer_of_empty_files(tmp_path / "many.tar.gz", (f"usr/share/doc/pkg{i // 50}/f{i}" for i in range(30_000)))
    got = _memory_in_child(layer, 256 << 20)
    assert got["result"] == "ok" and got["n"] > 30_000
    assert got["charged"] is not None, "the scan does not say what it charged"
    assert got["peak"] < 1.3 * got["charged"] + _SLACK and got["charged"] < 1.3 * got["peak"], got
