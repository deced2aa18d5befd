"""Install a locked environment on the host, for the image's Python and platform.

The image build reaches no network, so the env is assembled here: ``uv pip install --target``
with the target's ``--python-version``/``--python-platform`` fetches and hash-checks exactly the
locked wheels (``--require-hashes --no-deps``), then the flat target dir is laid out like a venv::

    <target>/lib/python3.X/site-packages/...    (packages, dist-info)
    <target>/bin/...                            (console scripts, #!<env_path_in_image>/bin/python)

``bin/python`` and ``pyvenv.cfg`` are NOT created here: they point at the base image's
interpreter, which only the image build knows (it runs ``python -m venv --without-pip`` at the
same path, which adds exactly those and leaves site-packages alone).

Removed because they vary between runs or must not ship: ``__pycache__``/``*.pyc``,
``direct_url.json`` (holds host paths), ``uv_build.json``; RECORD is rewritten sorted, with the
moved scripts' new paths and hashes.

Sdists are built into wheels on the host by uv. That is right for pure-Python packages (the
wheel is ``py3-none-any``) and wrong for anything compiled (the wheel is for the host's CPU and
Python), so every installed wheel's tags are checked against the target: a mismatch is a
NoWheelError naming the package.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging import tags as _tags
from packaging.utils import canonicalize_name

from ._cache import envs_cache
from ._errors import FetchError, NoWheelError
from ._platforms import Platform, parse_platform
from ._runner import CommandFailed, Runner, SubprocessRunner, uv_binary

__all__ = ["InstalledEnv", "file_digest", "install_env", "installed_env", "target_tags"]

_UNSTABLE_METADATA = frozenset({"direct_url.json", "uv_build.json"})


@dataclass(frozen=True)
class InstalledEnv:
    root: Path
    site_packages: Path
    packages: tuple[tuple[str, str], ...]  # (canonical name, version), sorted


def target_tags(python: str, platform: Platform) -> frozenset[_tags.Tag]:
    """Every wheel tag CPython ``python`` on ``platform`` (Debian bookworm glibc) accepts."""
    version = tuple(int(p) for p in python.split("."))[:2]
    plats = list(platform.wheel_platform_tags())
    interpreter = f"cp{version[0]}{version[1]}"
    found = set(_tags.cpython_tags(python_version=version, abis=[interpreter], platforms=plats))
    found |= set(_tags.compatible_tags(python_version=version, interpreter=interpreter, platforms=plats))
    return frozenset(found)


def install_env(
    requirements_file: Path,
    target: Path,
    *,
    python: str,
    platform: Platform,
    env_path_in_image: str,
    runner: Runner | None = None,
    cache_dir: Path | None = None,
) -> InstalledEnv:
    runner = runner or SubprocessRunner()
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target (same filesystem) and rename at the end: never half-written.
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        flat = work / "flat"
        args: list[str] = [
            uv_binary(), "pip", "install",
            "--target", str(flat),
            "--python-version", python,
            "--python-platform", platform.uv_python_platform(),
            "--require-hashes", "--no-deps", "--link-mode=hardlink",
            "--no-python-downloads", "--quiet",
            "-r", str(requirements_file),
        ]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        try:
            # Bytecode would be compiled for the host's interpreter and vary between runs.
            runner.run(args, env={"UV_COMPILE_BYTECODE": "0"})
        except CommandFailed as exc:
            raise _install_error(exc, requirements_file, python, platform) from None
        except FileNotFoundError:
            raise FetchError("uv not found", hint="reinstall mlbuild (it depends on uv)") from None
        flat.mkdir(exist_ok=True)  # an empty lock installs nothing and uv may not create it

        packages = _check_wheels(flat, python, platform, requirements_file)
        root = work / "env"
        site = root / "lib" / f"python{python}" / "site-packages"
        site.parent.mkdir(parents=True)
        bin_dir = flat / "bin"
        if bin_dir.is_dir():
            bin_dir.rename(root / "bin")
        flat.rename(site)
        _scrub(site)
        _rewrite_scripts(root, site, env_path_in_image)

        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.rename(work / "old")  # not an env: nothing can be reading it
        try:
            root.rename(target)
        except OSError as exc:
            # Another build of the same lock published first: the key is the lock's digest,
            # so its env has our content, and it may be streaming it into an image right now.
            # Keep it, drop ours (the finally below); an env dir is never moved or deleted.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise
        return InstalledEnv(
            root=target,
            site_packages=target / "lib" / f"python{python}" / "site-packages",
            packages=packages,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- errors

def _install_error(exc: CommandFailed, requirements_file: Path, python: str, platform: Platform) -> FetchError:
    output = (exc.result.stderr + "\n" + exc.result.stdout).strip()
    target = f"python {python} on {platform}"
    m = re.search(r"[Hh]ash mismatch for `([^`]+)`", output)
    if m:
        return FetchError(
            f"hash mismatch for {m.group(1)} while installing {requirements_file} for {target}",
            hint="the file downloaded does not match the lock: check the index/proxy, or re-lock "
            "with `mlbuild lock <dir>` if the package was re-published",
            details=output,
        )
    m = re.search(r"Failed to build `([^`]+)`", output) or re.search(
        r"`([^`]+)` can't be installed because it doesn't have a source distribution or wheel", output
    ) or re.search(r"Distribution `([^`]+)` can't be installed", output)
    if m:
        return NoWheelError(
            f"{m.group(1)} has no wheel for {target} and cannot be built from source here",
            hint="pick a version that publishes a wheel for this platform (see its files on PyPI), "
            "or drop the package",
            details=output,
        )
    first = next((ln.strip() for ln in output.splitlines() if ln.strip()), f"uv exited {exc.result.returncode}")
    return FetchError(
        f"installing {requirements_file} for {target} failed: {first}",
        hint="check that the package index is reachable and the lock is current (`mlbuild lock <dir>`)",
        details=output,
    )


# ---------------------------------------------------------------------------- checks

def _dist_infos(site: Path) -> list[Path]:
    return sorted(p for p in site.glob("*.dist-info") if p.is_dir())


def _check_wheels(flat: Path, python: str, platform: Platform, requirements_file: Path) -> tuple[tuple[str, str], ...]:
    accepted = target_tags(python, platform)
    packages = []
    for info in _dist_infos(flat):
        meta = HeaderParser().parsestr((info / "METADATA").read_text(encoding="utf-8", errors="replace"))
        name, version = canonicalize_name(meta["Name"] or info.name), meta["Version"] or "?"
        wheel = HeaderParser().parsestr((info / "WHEEL").read_text(encoding="utf-8", errors="replace"))
        wheel_tags = {t for text in wheel.get_all("Tag") or [] for t in _tags.parse_tag(text)}
        if not wheel_tags & accepted:
            built = (info / "uv_build.json").exists() or any(t.platform.startswith("linux_") for t in wheel_tags)
            how = "it was built from source for this host" if built else "the wheel does not match"
            raise NoWheelError(
                f"{name}=={version} has no wheel for python {python} on {platform}; {how} "
                f"(tags: {', '.join(sorted(map(str, wheel_tags)))})",
                hint="pick a version of it that publishes a manylinux wheel for this Python and "
                "platform, or drop it from the requirements",
            )
        packages.append((name, version))
    return tuple(sorted(packages))


# ---------------------------------------------------------------------------- layout

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _scrub(site: Path) -> None:
    for cache in sorted(site.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for pyc in site.rglob("*.py[co]"):
        pyc.unlink()
    for info in _dist_infos(site):
        for name in _UNSTABLE_METADATA:
            (info / name).unlink(missing_ok=True)


def _rewrite_scripts(root: Path, site: Path, env_path_in_image: str) -> None:
    """Point console scripts at the image's env python and fix up every RECORD to match."""
    shebang = f"#!{env_path_in_image.rstrip('/')}/bin/python"
    new_hashes: dict[str, tuple[str, int]] = {}
    bin_dir = root / "bin"
    if bin_dir.is_dir():
        for script in sorted(bin_dir.iterdir()):
            if not script.is_file():
                continue
            data = script.read_bytes()
            rewritten = _replace_shebang(data, shebang)
            if rewritten != data or script.stat().st_mode & 0o777 != 0o755:
                _replace_file(script, rewritten, 0o755)
            new_hashes[f"bin/{script.name}"] = (_record_hash(rewritten), len(rewritten))

    up = os.path.relpath(root, site)  # ../../.. : from site-packages back to the env root
    for info in _dist_infos(site):
        record = info / "RECORD"
        if not record.exists():
            continue
        lines = []
        for line in record.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            path, _, rest = line.partition(",")
            if path.startswith("bin/"):
                digest, size = new_hashes.get(path, (None, None))
                path = f"{up}/{path}"
                if digest is not None:
                    rest = f"{digest},{size}"
            elif "__pycache__/" in path or path.endswith((".pyc", ".pyo")) or (
                path.startswith(info.name + "/") and path.rsplit("/", 1)[-1] in _UNSTABLE_METADATA
            ):
                continue
            lines.append(f"{path},{rest}")
        # Sorted: the order uv writes may vary with thread scheduling.
        _replace_file(record, "".join(ln + "\n" for ln in sorted(lines)).encode("utf-8"), 0o644)


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write a new file and rename it over ``path``, never writing into the old inode: files
    are hard links into uv's cache (--link-mode=hardlink), which must never change."""
    tmp = path.with_name(f".{path.name}.mlbuild-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _replace_shebang(data: bytes, shebang: str) -> bytes:
    if not data.startswith(b"#!"):
        return data
    lines = data.split(b"\n")
    # Long interpreter paths get the /bin/sh trampoline: "#!/bin/sh", "'''exec' PY "$0" "$@"", "' '''".
    if lines[0].strip() == b"#!/bin/sh" and len(lines) > 2 and lines[1].startswith(b"'''exec'"):
        return b"\n".join([shebang.encode()] + lines[3:])
    if b"python" in lines[0]:
        return b"\n".join([shebang.encode()] + lines[1:])
    return data  # a shell script or such: leave it alone


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def installed_env(
    kind: str,
    requirements_file: Path,
    digest: str,
    *,
    python: str,
    platform: str,
    env_path_in_image: str,
    runner: Runner | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> Path:
    """The root of an installed env for ``requirements_file`` (a lock), from the cache or new.

    The cache is keyed by what determines the env's content - the lock's digest, the platform
    and the Python - and an entry is used as it is when present: install_env renames a finished
    env into place, so an interrupted install never leaves a half env that a build would trust."""
    slug = platform.replace("/", "-")
    key = digest.split(":", 1)[-1][:24]
    final = envs_cache() / f"{kind}-py{python}-{slug}-{key}"
    if final.is_dir():
        return final
    say(f"installing the {kind} env ({requirements_file.name}) for {platform}, Python {python}")
    install_env(
        requirements_file,
        final,
        python=python,
        platform=parse_platform(platform),
        env_path_in_image=env_path_in_image,
        runner=runner,
    )
    return final
