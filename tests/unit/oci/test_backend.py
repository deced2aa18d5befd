"""OciBackend.build on a synthetic base with Docker media types and small fake envs: no engine,
no network. Checks what lands in which layer and what the config says."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from ocifixtures import GROUP, PASSWD, debian_like_layers, image_config, sha

from mlbuild._backends import BuildOptions, EnvDirs
from mlbuild._errors import BuildError, ConfigError
from mlbuild._lock import Lock
from mlbuild._oci.backend import OciBackend
from mlbuild._oci.image import Descriptor, build_manifest
from mlbuild._oci.layout import Blob, BuiltImages, DockerEntry, write_layout
from mlbuild._oci.mediatypes import DOCKER
from mlbuild._platforms import parse_platform
from mlbuild._spec import load_spec

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"
AMD64 = parse_platform("linux/amd64")


def _docker_family_base(dest: Path) -> Path:
    layers = debian_like_layers()
    gz = [gzip.compress(l, mtime=0) for l in layers]
    config = image_config(layers)
    cdesc = Descriptor.of(DOCKER.config, config)
    ldescs = [Descriptor(DOCKER.layer_gzip, sha(g), len(g)) for g in gz]
    manifest = build_manifest(DOCKER, cdesc, ldescs)
    blobs = [Blob(sha(g), len(g), (lambda g=g: io.BytesIO(g)), "layer") for g in gz]
    blobs.append(Blob(cdesc.digest, cdesc.size, lambda: io.BytesIO(config), "config"))
    images = BuiltImages(DOCKER.manifest, manifest, tuple(blobs), (DockerEntry(cdesc.digest, tuple(d.digest for d in ldescs), AMD64),))
    return write_layout(dest, images, "base:1")


def _fake_env(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if rel.startswith("bin/"):
            p.chmod(0o755)
    return root


@pytest.fixture
def setup(tmp_path: Path):
    model = tmp_path / "echo"
    shutil.copytree(ECHO, model, ignore=shutil.ignore_patterns("__pycache__"))
    base = _docker_family_base(tmp_path / "base")
    server = _fake_env(tmp_path / "server", {
        "lib/python3.11/site-packages/fastapi/__init__.py": "",
        "bin/uvicorn": "#!/opt/mlbuild/server-env/bin/python\n",
        "bin/python": "a file install_env might leave; the venv symlink must win",
    })
    env = _fake_env(tmp_path / "model", {"lib/python3.11/site-packages/mod.py": "x = 1\n"})
    lock_file = model / "mlbuild.lock"
    lock_file.write_text("# fake lock\n")
    lock = Lock(lock_file, "3.11", ("linux/amd64",), "uv", "0" * 64, (), "sha256:" + "1" * 64)
    options = BuildOptions(tag="echo:1", envs=EnvDirs(server, env, "sha256:" + "2" * 64), base_image=f"oci:{base}")
    return model, lock, options, tmp_path


def _layer_members(layout: Path, digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(layout / "blobs" / "sha256" / digest.split(":")[1], "r:gz") as tar:
        for m in tar:
            out[m.name] = (m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
    return out


def test_layers_and_config(setup) -> None:
    model, lock, options, tmp = setup
    result = OciBackend(output=tmp / "out", cache_dir=tmp / "cache").build(load_spec(model), lock, options)
    out = tmp / "out"
    manifest = json.loads((out / "blobs" / "sha256" / result.digest.split(":")[1]).read_bytes())
    assert manifest["mediaType"] == DOCKER.manifest  # the base's family
    assert manifest["config"]["mediaType"] == DOCKER.config
    layers = manifest["layers"]
    assert len(layers) == 2 + 5  # base x2, user, server env, model env, runtime, code
    assert {l["mediaType"] for l in layers} == {DOCKER.layer_gzip}
    user, server, model_env, runtime, code = (_layer_members(out, l["digest"]) for l in layers[2:])

    assert user["etc/passwd"][1] == PASSWD + b"mlbuild:x:10001:10001:mlbuild:/opt/mlbuild/model:/usr/sbin/nologin\n"
    assert user["etc/group"][1] == GROUP + b"mlbuild:x:10001:\n"

    sp = "opt/mlbuild/server-env/lib/python3.11/site-packages"
    assert server[f"{sp}/mlbuild-runtime.pth"][1] == b"/opt/mlbuild/runtime\n"
    assert server["opt/mlbuild/server-env/bin/python"][0].issym()  # the venv's link, not the host file
    assert server["opt/mlbuild/server-env/bin/python"][0].linkname == "python3"
    assert server["opt/mlbuild/server-env/bin/python3"][0].linkname == "/usr/bin/python3"
    assert server["opt/mlbuild/server-env/bin/uvicorn"][0].mode == 0o755
    assert b"home = /usr/bin\n" in server["opt/mlbuild/server-env/pyvenv.cfg"][1]
    assert b"version = 3.11.2\n" in server["opt/mlbuild/server-env/pyvenv.cfg"][1]
    assert "opt/mlbuild/model-env/lib/python3.11/site-packages/mod.py" in model_env
    assert model_env["opt/mlbuild/model-env/lib64"][0].linkname == "lib"
    assert "opt/mlbuild/runtime/mlbuild_runtime/__init__.py" in runtime
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in runtime)
    assert code["opt/mlbuild/model/predict.py"][1] == (model / "predict.py").read_bytes()

    config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    cfg = config["config"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["MLBUILD_MODEL_DIR"] == "/opt/mlbuild/model"
    assert env["MLBUILD_PYTHON"] == "/opt/mlbuild/model-env/bin/python"
    assert env["MLBUILD_LOCK_DIGEST"] == lock.digest and env["PYTHON_VERSION"] == "3.11.2"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # the base's, kept
    assert cfg["Labels"]["org.opencontainers.image.base.name"] == "base:1"  # a name, not a host path
    assert cfg["Cmd"] == ["/opt/mlbuild/server-env/bin/python", "-m", "mlbuild_runtime"]
    assert "Entrypoint" not in cfg
    assert cfg["User"] == "10001:10001" and cfg["WorkingDir"] == "/opt/mlbuild/model"
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["Healthcheck"]["Test"][0] == "CMD" and cfg["Healthcheck"]["StartPeriod"] == 60_000_000_000
    assert cfg["Labels"]["io.mlbuild.lock-digest"] == lock.digest
    assert config["rootfs"]["diff_ids"][:2] == [sha(l) for l in debian_like_layers()]
    assert result.image_id == result.digest and result.platforms == ("linux/amd64",)

    # Same inputs again (warm cache): same digest; code change: only the last layer differs.
    again = OciBackend(output=tmp / "out", cache_dir=tmp / "cache").build(load_spec(model), lock, options)
    assert again.digest == result.digest
    (model / "predict.py").write_text((model / "predict.py").read_text() + "\n# changed\n")
    changed = OciBackend(output=tmp / "out", cache_dir=tmp / "cache").build(load_spec(model), lock, options)
    new_layers = json.loads((out / "blobs" / "sha256" / changed.digest.split(":")[1]).read_bytes())["layers"]
    assert [l["digest"] for l in new_layers[:-1]] == [l["digest"] for l in layers[:-1]]
    assert new_layers[-1]["digest"] != layers[-1]["digest"]


def test_refusals(setup) -> None:
    model, lock, options, tmp = setup
    backend = OciBackend(output=tmp / "out", cache_dir=tmp / "cache")
    old_lock = Lock(lock.path, "3.12", lock.platforms, "uv", "0" * 64, (), lock.digest)
    with pytest.raises(ConfigError, match=r"mlbuild.lock was locked for Python 3\.12 but the image has Python 3\.11"):
        backend.build(load_spec(model), old_lock, options)
    with pytest.raises(ConfigError, match="is locked for linux/amd64, not for all of linux/amd64, linux/arm64"):
        OciBackend(output=tmp / "o2", platforms="linux/amd64,linux/arm64", cache_dir=tmp / "cache").build(load_spec(model), lock, options)
    (model / "mlbuild.toml").write_text('system_packages = ["libgomp1"]\n')
    with pytest.raises(BuildError, match=r"cannot install system packages \(libgomp1\)"):
        backend.build(load_spec(model), lock, options)
    (model / "mlbuild.toml").unlink()
    (model / "Dockerfile.j2").write_text('{% extends "Dockerfile.j2" %}\n')
    with pytest.raises(BuildError, match="custom Dockerfile template needs the docker backend"):
        backend.build(load_spec(model), lock, options)
    assert not (tmp / "out").exists()
