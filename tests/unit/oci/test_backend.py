"""OciBackend.build on a synthetic base with Docker media types and small fake envs: no engine,
no network. Checks what lands in which layer and what the config says."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from mlbuild._errors import BuildError, ConfigError
from mlbuild._lock import Lock
from mlbuild._oci.image import Descriptor, build_manifest
from mlbuild._oci.layout import Blob, BuiltImages, DockerEntry, write_layout
from mlbuild._oci.mediatypes import DOCKER
from mlbuild._platforms import parse_platform
from mlbuild._spec import load_spec
from ocifixtures import GROUP, PASSWD, debian_like_layers, image_config, sha
from support.plans import Envs, oci_build, plan_for

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
    options = dict(tag="echo:1", envs=Envs(server, env, "sha256:" + "2" * 64), base_image=f"oci:{base}")
    return model, lock, options, tmp_path


def _layer_members(layout: Path, digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(layout / "blobs" / "sha256" / digest.split(":")[1], "r:gz") as tar:
        for m in tar:
            out[m.name] = (m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
    return out


def test_layers_and_config(setup) -> None:
    model, lock, options, tmp = setup
    result = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
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
    again = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    assert again.digest == result.digest
    (model / "predict.py").write_text((model / "predict.py").read_text() + "\n# changed\n")
    changed = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    new_layers = json.loads((out / "blobs" / "sha256" / changed.digest.split(":")[1]).read_bytes())["layers"]
    assert [l["digest"] for l in new_layers[:-1]] == [l["digest"] for l in layers[:-1]]
    assert new_layers[-1]["digest"] != layers[-1]["digest"]


def test_refusals(setup) -> None:
    model, lock, options, tmp = setup

    def backend_build(spec, lock, options):
        return oci_build(plan_for(spec, lock, **options), output=tmp / "out", cache_dir=tmp / "cache")

    old_lock = Lock(lock.path, "3.12", lock.platforms, "uv", "0" * 64, (), lock.digest)
    with pytest.raises(ConfigError, match=r"mlbuild.lock was locked for Python 3\.12 but the image has Python 3\.11"):
        backend_build(load_spec(model), old_lock, options)
    (model / "mlbuild.toml").write_text('system_packages = ["libgomp1"]\n')
    with pytest.raises(BuildError, match=r"cannot install system packages \(libgomp1\)"):
        backend_build(load_spec(model), lock, options)
    (model / "mlbuild.toml").unlink()
    (model / "Dockerfile.j2").write_text('{% extends "Dockerfile.j2" %}\n')
    with pytest.raises(BuildError, match="custom Dockerfile template needs the docker backend"):
        backend_build(load_spec(model), lock, options)
    assert not (tmp / "out").exists()


# ---------------------------------------------------------------------------- env split

SITE = "lib/python3.11/site-packages"


def _dist(root: Path, name: str, version: str, files: dict[str, bytes], scripts: dict[str, bytes] | None = None) -> None:
    """An installed distribution as install_env leaves it: files, dist-info, RECORD (with hashes)."""
    import base64
    import hashlib

    info = f"{name}-{version}.dist-info"
    rows = []
    for rel, data in {**files, f"{info}/METADATA": f"Name: {name}\nVersion: {version}\n".encode()}.items():
        p = root / SITE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(data)}")
    for script, data in (scripts or {}).items():
        p = root / "bin" / script
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o755)
        rows.append(f"../../../bin/{script},sha256=x,{len(data)}")
    rows.append(f"{info}/RECORD,,")
    (root / SITE / info / "RECORD").write_text("".join(r + "\n" for r in sorted(rows)))


def _split_model_env(root: Path, *, small_text: bytes = b"s = 1\n") -> Path:
    _dist(root, "big_pkg", "1.0", {"big_pkg/__init__.py": b"", "big_pkg/data.bin": b"b" * 5000},
          scripts={"bigtool": b"#!/opt/mlbuild/model-env/bin/python\n"})
    _dist(root, "alpha", "3.0", {"alpha/core.so": b"a" * 3000, "alpha/sub/x.py": b"x = 1\n"})
    _dist(root, "small", "2.0", {"small.py": small_text})
    (root / SITE / "loose.py").write_text("# owned by no RECORD\n")
    return root


def _manifest(out: Path, digest: str) -> dict:
    return json.loads((out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def _files(members: dict) -> set[str]:
    return {n for n, (m, _) in members.items() if not m.isdir()}


def test_model_env_split_by_distribution(setup, monkeypatch) -> None:
    model, lock, options, tmp = setup
    env = _split_model_env(tmp / "split-env")
    options = {**options, "envs": Envs(options["envs"].server_env, env, options["envs"].server_lock_digest)}
    result = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache", dist_layer_min_bytes=2000)
    out = tmp / "out"
    manifest = _manifest(out, result.digest)
    layers = manifest["layers"]
    # base x2, user, server env, alpha, big-pkg (by name, not by size), the rest, runtime, code
    assert len(layers) == 2 + 7
    alpha, big, rest = (_layer_members(out, l["digest"]) for l in layers[4:7])
    mp = f"opt/mlbuild/model-env/{SITE}"
    assert _files(alpha) == {f"{mp}/alpha/core.so", f"{mp}/alpha/sub/x.py", f"{mp}/alpha-3.0.dist-info/METADATA", f"{mp}/alpha-3.0.dist-info/RECORD"}
    assert _files(big) == {f"{mp}/big_pkg/__init__.py", f"{mp}/big_pkg/data.bin", f"{mp}/big_pkg-1.0.dist-info/METADATA",
                           f"{mp}/big_pkg-1.0.dist-info/RECORD", "opt/mlbuild/model-env/bin/bigtool"}
    assert big["opt/mlbuild/model-env/bin/bigtool"][0].mode == 0o755
    assert {f"{mp}/small.py", f"{mp}/loose.py", f"{mp}/small-2.0.dist-info/RECORD", "opt/mlbuild/model-env/pyvenv.cfg",
            "opt/mlbuild/model-env/lib64"} <= _files(rest)
    assert not _files(rest) & (_files(alpha) | _files(big))
    # Each layer carries its parents, as its own explicit directory entries.
    assert alpha[f"{mp}/alpha"][0].isdir() and alpha[f"{mp}"][0].isdir() and alpha[f"{mp}"][0].mode == 0o755
    config = _manifest(out, manifest["config"]["digest"])
    created = [h["created_by"] for h in config["history"] if not h.get("empty_layer")][-5:-2]
    assert created[0].endswith("COPY model-env/ /opt/mlbuild/model-env/ (alpha 3.0)")
    assert created[1].endswith("(big-pkg 1.0)") and created[2].endswith("COPY model-env/ /opt/mlbuild/model-env/")

    # The same files as one layer: nothing lost or added by the split.
    whole = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "one", cache_dir=tmp / "cache", dist_layer_min_bytes=10**9)
    one_layers = _manifest(tmp / "one", whole.digest)["layers"]
    assert len(one_layers) == 2 + 5
    assert _files(_layer_members(tmp / "one", one_layers[4]["digest"])) == _files(alpha) | _files(big) | _files(rest)


def test_distribution_layer_is_shared_between_envs_and_rebuilds_skip_the_walk(setup, monkeypatch) -> None:
    import mlbuild._backends.oci_layers as backend_mod
    import mlbuild._oci.cache as cache_mod

    model, lock, options, tmp = setup
    written: list[set[str]] = []
    real_write = cache_mod.write_layer

    def counting_write(entries, dest, **kw):
        entries = list(entries)
        written.append({e.path for e in entries})
        return real_write(entries, dest, **kw)

    monkeypatch.setattr(cache_mod, "write_layer", counting_write)

    def backend_build(spec, lock, options):
        return oci_build(plan_for(spec, lock, **options), output=tmp / "out", cache_dir=tmp / "cache",
                         dist_layer_min_bytes=2000)

    first_env = _split_model_env(tmp / "env-a")
    opts_a = {**options, "envs": Envs(options["envs"].server_env, first_env, options["envs"].server_lock_digest)}
    a = backend_build(load_spec(model), lock, opts_a)

    # Another model: another lock, another env directory (other inodes and mtimes), same big_pkg
    # and alpha, another version of the small part.
    second_env = _split_model_env(tmp / "env-b", small_text=b"s = 2\n")
    other_lock = dataclasses.replace(lock, digest="sha256:" + "3" * 64)
    opts_b = {**options, "envs": Envs(options["envs"].server_env, second_env, options["envs"].server_lock_digest)}
    written.clear()
    b = backend_build(load_spec(model), other_lock, opts_b)
    la, lb = _manifest(tmp / "out", a.digest)["layers"], _manifest(tmp / "out", b.digest)["layers"]
    assert [l["digest"] for l in la[4:6]] == [l["digest"] for l in lb[4:6]]  # alpha, big_pkg: one blob each
    assert la[6]["digest"] != lb[6]["digest"]  # the rest differs (small.py)
    mp = f"/opt/mlbuild/model-env/{SITE}"
    assert not [w for w in written if f"{mp}/big_pkg/data.bin" in w or f"{mp}/alpha/core.so" in w]
    assert [w for w in written if f"{mp}/small.py" in w]  # the changed part was written

    # Code-only rebuild: the env's layers come from the group cache, the env is not even walked.
    monkeypatch.setattr(backend_mod, "split_env", lambda *a, **k: pytest.fail("the env was split again"))
    (model / "predict.py").write_text((model / "predict.py").read_text() + "\n# changed\n")
    c = backend_build(load_spec(model), other_lock, opts_b)
    assert [l["digest"] for l in _manifest(tmp / "out", c.digest)["layers"][:-1]] == [l["digest"] for l in lb[:-1]]


def test_layers_to_write_compress_largest_first(setup, monkeypatch) -> None:
    import mlbuild._backends.oci_layers as backend_mod
    import mlbuild._oci.cache as cache_mod

    model, lock, options, tmp = setup
    env = _split_model_env(tmp / "split-env")
    options = {**options, "envs": Envs(options["envs"].server_env, env, options["envs"].server_lock_digest)}
    order: list[int] = []  # bytes of each env layer, in the order they were started
    real_write = cache_mod.write_layer

    def recording_write(entries, dest, **kw):
        entries = list(entries)
        if any("-env/" in e.path for e in entries):
            order.append(sum(len(e.source) if isinstance(e.source, bytes) else e.source.stat().st_size
                             for e in entries if e.kind == "file"))
        return real_write(entries, dest, **kw)

    monkeypatch.setattr(cache_mod, "write_layer", recording_write)
    pools: list[int] = []
    real_pool = backend_mod.ThreadPoolExecutor

    def one_worker_pool(max_workers: int):
        pools.append(max_workers)
        return real_pool(max_workers=1)  # one at a time: the submission order is the start order

    monkeypatch.setattr(backend_mod, "ThreadPoolExecutor", one_worker_pool)
    monkeypatch.setattr(backend_mod.os, "cpu_count", lambda: 3)
    oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache", dist_layer_min_bytes=2000)
    assert pools == [3]  # min(4 env layers to write, 3 CPUs)
    assert len(order) == 4 and order == sorted(order, reverse=True) and order[0] >= 5000  # big_pkg first


def test_split_env_rules(tmp_path: Path) -> None:
    from mlbuild._backends.oci_venv import split_env
    from mlbuild._oci.tarlayer import tree_entries

    root = _split_model_env(tmp_path / "env")
    # numpy and a namespace sibling both claim one file: it belongs to neither big layer.
    _dist(root, "ns_one", "1", {"ns/shared.py": b"1" * 3000, "ns/one.py": b"o"})
    _dist(root, "ns_two", "1", {"ns/shared.py": b"1" * 3000, "ns/two.py": b"t" * 3000})
    entries = tree_entries(root, "/env")
    parts = split_env(entries, root, "/env", python_minor="3.11", min_bytes=2000)
    assert [(p.dist, p.version) for p in parts] == [("alpha", "3.0"), ("big-pkg", "1.0"), ("ns-two", "1"), (None, None)]
    by = {p.dist: {e.path for e in p.entries} for p in parts}
    sp = f"/env/{SITE}"
    assert f"{sp}/ns/shared.py" in by[None] and f"{sp}/ns/two.py" in by["ns-two"]
    assert f"{sp}/ns" in by[None]  # a directory shared by two layers' files stays in the shared one
    assert f"{sp}/alpha/sub" in by["alpha"] and f"{sp}/alpha" in by["alpha"]
    assert "/env/bin" in by["big-pkg"]  # only big_pkg's script lives there
    assert sorted(e.path for p in parts for e in p.entries) == sorted(e.path for e in entries)  # each once
    assert parts[1].size == 5000 + len(b"#!/opt/mlbuild/model-env/bin/python\n") + len(b"Name: big_pkg\nVersion: 1.0\n") + \
        (root / SITE / "big_pkg-1.0.dist-info" / "RECORD").stat().st_size
    assert parts[1].record_hashes[f"{sp}/big_pkg/data.bin"].startswith("sha256=")
    # Input order, and the cap: only the largest keep their own layer.
    assert split_env(list(reversed(entries)), root, "/env", python_minor="3.11", min_bytes=2000)[0].entries == \
        tuple(e for e in reversed(entries) if e.path in by["alpha"])
    capped = split_env(entries, root, "/env", python_minor="3.11", min_bytes=2000, max_layers=1)
    assert [p.dist for p in capped] == ["big-pkg", None]
    assert [p.dist for p in split_env(entries, root, "/env", python_minor="3.11", min_bytes=10**9)] == [None]


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What cp -p / rsync -t / an archive with fixed timestamps do: same inode, size and mtime."""
    before = path.stat()
    assert len(data) == before.st_size
    with open(path, "r+b") as f:  # in place: the inode stays
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_file_rewritten_with_same_size_and_mtime_rebuilds_its_layer(setup) -> None:
    model, lock, options, tmp = setup
    weights = model / "weights.bin"
    weights.write_bytes(b"\x01" * 4096)
    first = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    _rewrite_keeping_size_and_mtime(weights, b"\x02" * 4096)  # new weights of the same shape
    second = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    layers = _manifest(tmp / "out", second.digest)["layers"]
    assert second.digest != first.digest
    shipped = {m: data for m, (_, data) in
               ((n, v) for l in layers[-2:] for n, v in _layer_members(tmp / "out", l["digest"]).items())}
    assert shipped["opt/mlbuild/model/weights.bin"] == b"\x02" * 4096  # not the stale cached layer


def test_big_unrecorded_env_file_rewritten_in_place_rebuilds_its_layer(setup) -> None:
    model, lock, options, tmp = setup
    big = options["envs"].model_env / "lib/python3.11/site-packages/blob.bin"
    size = (1 << 20) + 1  # above the hash-by-content limit: identified by stat
    big.write_bytes(b"\x01" * size)
    first = oci_build(plan_for(load_spec(model), lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    _rewrite_keeping_size_and_mtime(big, b"\x02" * size)
    # Another lock (so not the whole-env group cache, which trusts a lock's env as written once):
    # the part's own key must see the new bytes.
    other_lock = dataclasses.replace(lock, digest="sha256:" + "3" * 64)
    second = oci_build(plan_for(load_spec(model), other_lock, **options), output=tmp / "out", cache_dir=tmp / "cache")
    assert second.digest != first.digest
    layers = _manifest(tmp / "out", second.digest)["layers"]
    members = _layer_members(tmp / "out", layers[4]["digest"])
    assert members["opt/mlbuild/model-env/lib/python3.11/site-packages/blob.bin"][1][:1] == b"\x02"
