"""Real `uv pip install --target` for a foreign Python/platform: the files land where an image
expects them, binaries are for the target CPU, sdists behave as documented."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mlbuild._envs import install_env
from mlbuild._errors import FetchError, NoWheelError
from mlbuild._lock import lock
from mlbuild._platforms import parse_platform
from mlbuild._runner import SubprocessRunner
from mlbuild._spec import load_spec

EM_X86_64, EM_AARCH64 = 62, 183


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", path
    little = head[5] == 1
    return struct.unpack("<H" if little else ">H", head[18:20])[0]


@pytest.fixture(scope="module")
def numpy_lock(tmp_path_factory) -> Path:
    """One universal lock of six + numpy, for Python 3.12 on both platforms."""
    root = tmp_path_factory.mktemp("np") / "m"
    root.mkdir()
    (root / "predict.py").write_text("def predict(x):\n    return x\n")
    (root / "requirements.txt").write_text("six\nnumpy>=2\n")
    (root / "mlbuild.toml").write_text('python = "3.12"\n')
    return lock(load_spec(root), platforms=("linux/amd64", "linux/arm64"), runner=SubprocessRunner()).path


@pytest.mark.parametrize("platform,machine,em", [("linux/arm64", "aarch64", EM_AARCH64),
                                                 ("linux/amd64", "x86_64", EM_X86_64)])
def test_numpy_for_each_target_cpu(tmp_path, numpy_lock, platform, machine, em):
    env = install_env(numpy_lock, tmp_path / "env", python="3.12", platform=parse_platform(platform),
                      env_path_in_image="/opt/mlbuild/model-env", runner=SubprocessRunner())
    site = tmp_path / "env" / "lib" / "python3.12" / "site-packages"
    assert env.site_packages == site
    assert [n for n, _ in env.packages] == ["numpy", "six"]
    assert (site / "six.py").is_file()
    sos = sorted((site / "numpy" / "_core").glob("_multiarray_umath.cpython-312-*.so"))
    assert [so.name for so in sos] == [f"_multiarray_umath.cpython-312-{machine}-linux-gnu.so"]
    assert elf_machine(sos[0]) == em
    f2py = (tmp_path / "env" / "bin" / "f2py").read_text()
    assert f2py.startswith("#!/opt/mlbuild/model-env/bin/python\n")
    assert not list(site.rglob("__pycache__")) and not list(site.rglob("direct_url.json"))
    record = (next(site.glob("numpy-*.dist-info")) / "RECORD").read_text()
    assert "../../../bin/f2py," in record


def test_second_install_uses_the_cache(tmp_path, numpy_lock):
    args = dict(python="3.12", platform=parse_platform("linux/arm64"), env_path_in_image="/e",
                runner=SubprocessRunner(), cache_dir=tmp_path / "cache")
    install_env(numpy_lock, tmp_path / "one", **args)
    start = time.monotonic()
    install_env(numpy_lock, tmp_path / "two", **args)
    again = time.monotonic() - start
    assert again < 10, f"cached install took {again:.1f}s"
    a = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*"))
    b = sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*"))
    assert a == b
    rec = "lib/python3.12/site-packages/numpy-{}.dist-info/RECORD"
    version = next((tmp_path / "one" / "lib/python3.12/site-packages").glob("numpy-*.dist-info")).name.split("-")[1][:-5]
    assert (tmp_path / "one" / rec.format(version)).read_bytes() == (tmp_path / "two" / rec.format(version)).read_bytes()


def test_pure_python_sdist_only_package_installs_for_another_platform(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "predict.py").write_text("def predict(x):\n    return x\n")
    (root / "requirements.txt").write_text("docopt==0.6.2\n")  # published as an sdist only
    (root / "mlbuild.toml").write_text('python = "3.12"\n')
    lk = lock(load_spec(root), platforms=("linux/arm64",), runner=SubprocessRunner())
    env = install_env(lk.path, tmp_path / "env", python="3.12", platform=parse_platform("linux/arm64"),
                      env_path_in_image="/e", runner=SubprocessRunner())
    assert env.packages == (("docopt", "0.6.2"),)
    assert (env.site_packages / "docopt.py").is_file()
    assert not list(env.site_packages.rglob("uv_build.json"))


def _c_extension_sdist(where: Path) -> Path:
    src = where / "cext-0.1"
    src.mkdir(parents=True)
    (src / "setup.py").write_text(
        "from setuptools import setup, Extension\n"
        "setup(name='cext', version='0.1', ext_modules=[Extension('cext', ['cext.c'])])\n")
    (src / "cext.c").write_text(
        "#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"cext\", 0, -1, 0};\n"
        "PyMODINIT_FUNC PyInit_cext(void) { return PyModule_Create(&m); }\n")
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: cext\nVersion: 0.1\n")
    sdist = where / "cext-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname="cext-0.1")
    return sdist


def test_compiled_sdist_without_a_wheel_is_a_no_wheel_error(tmp_path):
    sdist = _c_extension_sdist(tmp_path / "src")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    req = tmp_path / "mlbuild.lock"
    req.write_text(f"cext @ {sdist.as_uri()} \\\n    --hash=sha256:{digest}\n")
    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(NoWheelError) as info:
        install_env(req, tmp_path / "env", python=host_py, platform=parse_platform("linux/amd64"),
                    env_path_in_image="/e", runner=SubprocessRunner())
    # uv builds it for the host (cp3X-linux_x86_64); the tag check catches that.
    assert "cext==0.1 has no wheel for python" in info.value.message
    assert "built from source for this host" in info.value.message
    assert info.value.exit_code == 4
    assert not (tmp_path / "env").exists()


def test_hash_mismatch_is_a_fetch_error_naming_the_package(tmp_path):
    req = tmp_path / "mlbuild.lock"
    req.write_text("six==1.17.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(FetchError) as info:
        install_env(req, tmp_path / "env", python="3.11", platform=parse_platform("linux/amd64"),
                    env_path_in_image="/e", runner=SubprocessRunner())
    assert type(info.value) is FetchError
    assert "hash mismatch for six==1.17.0" in info.value.message


def test_server_lock_installs_for_every_supported_python_on_arm64(tmp_path):
    from mlbuild._server_env import server_lock_path

    for py in ("3.10", "3.13"):
        env = install_env(server_lock_path(), tmp_path / py, python=py, platform=parse_platform("linux/arm64"),
                          env_path_in_image="/opt/mlbuild/server-env", runner=SubprocessRunner())
        names = {n for n, _ in env.packages}
        assert {"fastapi", "uvicorn", "uvloop", "httptools", "prometheus-client"} <= names
        so = next((env.site_packages / "uvloop").glob("loop.cpython-*.so"))
        assert elf_machine(so) == EM_AARCH64


def test_installed_host_env_imports(tmp_path):
    """The amd64 env for this host's Python really works: import six from it."""
    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = tmp_path / "m"
    root.mkdir()
    (root / "predict.py").write_text("def predict(x):\n    return x\n")
    (root / "requirements.txt").write_text("six\n")
    (root / "mlbuild.toml").write_text(f'python = "{host_py}"\n')
    lk = lock(load_spec(root), runner=SubprocessRunner())
    env = install_env(lk.path, tmp_path / "env", python=host_py, platform=parse_platform("linux/amd64"),
                      env_path_in_image="/e", runner=SubprocessRunner())
    out = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import six; print(six.__file__)",
                          str(env.site_packages)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(env.site_packages / "six.py")


def test_hardlinked_install_never_changes_uv_s_cache(tmp_path, numpy_lock):
    """Envs are hard links into uv's cache (fast, no copy); what mlbuild rewrites (scripts,
    RECORD) is written as new files, so a second install from the same cache is pristine."""
    args = dict(python="3.12", platform=parse_platform("linux/amd64"), runner=SubprocessRunner(),
                cache_dir=tmp_path / "cache")
    install_env(numpy_lock, tmp_path / "one", env_path_in_image="/one/env", **args)
    install_env(numpy_lock, tmp_path / "two", env_path_in_image="/two/env", **args)
    site_one = tmp_path / "one" / "lib" / "python3.12" / "site-packages"
    site_two = tmp_path / "two" / "lib" / "python3.12" / "site-packages"
    shared = site_one / "six.py"
    assert shared.stat().st_nlink > 1  # linked, not copied
    assert shared.stat().st_ino == (site_two / "six.py").stat().st_ino
    # Rewritten per install: never linked, each with its own shebang.
    for env, prefix in ((tmp_path / "one", "/one/env"), (tmp_path / "two", "/two/env")):
        script = env / "bin" / "f2py"
        assert script.stat().st_nlink == 1
        assert script.read_text().startswith(f"#!{prefix}/bin/python\n")
        record = next((env / "lib" / "python3.12" / "site-packages").glob("numpy-*.dist-info")) / "RECORD"
        assert record.stat().st_nlink == 1
    # And the cache still holds uv's own files: nothing of ours leaked into it.
    cached_records = [p for p in (tmp_path / "cache").rglob("RECORD") if "numpy" in str(p.parent)]
    for record in cached_records:
        assert "../../../bin/f2py" not in record.read_text()
