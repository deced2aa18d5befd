"""Build benchmark (issues 3 and 4): mlbuild's image builds against a hand-written Dockerfile,
in one run, for examples/iris-sklearn on the base mlbuild-test/python:3.11-bookworm.

Every time is the wall time of the CLI subprocess (`mlbuild image DIR ... -q --json`, or
`docker build` for the baseline). Phases, docker backend:

  cold          all caches empty: fresh UV_CACHE_DIR and XDG_CACHE_HOME (so uv downloads the
                wheels and mlbuild's env cache is empty) and a cold engine
  cold-wheels   warm wheel cache, empty mlbuild env cache, cold engine
  cold-engine   warm wheel and env caches on the host, cold engine (informative)
  rebuild       after a one-line code change (a comment appended to predict.py)
  nochange      the same build again, nothing changed (informative)

"Cold engine" without touching anyone else's images: every cold phase builds on its own copy
of the base image, `FROM <base>` + a LABEL with a random nonce. Same files, but a new image id,
so the classic builder's layer cache (keyed on the parent image id) and mlbuild's env-image key
(which holds the base id) cannot hit anything built before. --purge also does what a quiet
machine allows: removes every mlbuild-cache/* image and runs `docker builder prune -af` first.

Baseline (same run): a hand-written two-stage Dockerfile FROM the same base: venv + `pip install
--no-index` of the same locked wheels (model lock + mlbuild's server lock; fetched on the host
beforehand with `pip download`, since builds have no network here, and handed to the build as a
wheelhouse image so the build context stays small), then COPY artefacts and code. Cold and
code-only rebuild are timed the same way, and the ratios printed.

OCI backend (when `mlbuild image --backend oci` works): cold with all caches empty, code-only
rebuild into the existing OCI layout directory, size, and reproducibility: two builds from two
copies of the directory made under different umasks, built with different TZ and umask and
separate caches, must give the same manifest digest.

Targets: image <= 450 MB; all-caches-empty cold <= 10 s; code-only rebuild <= 1.5 s;
oci code-only rebuild <= 0.5 s; oci cold <= 0.5x docker cold; oci digests equal.

    python bench/build.py [--json] [--purge] [--no-oci] [--keep]

Exit status: 0 when every phase ran (MISS verdicts included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, REPO, Log, Target, ensure_interpreter, machine, need_program, ratio, table, targets_block  # noqa: E402

DEFAULT_BASE = "mlbuild-test/python:3.11-bookworm"
EXAMPLE = REPO / "examples" / "iris-sklearn"
SERVER_LOCK = REPO / "builder" / "mlbuild" / "_data" / "server.lock"
MB = 1e6
NONCE_LABEL = "org.mlbuild.bench.nonce"


class PhaseFailed(RuntimeError):
    pass


# -- small helpers ----------------------------------------------------------------------------------


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        umask: int | None = None, input: bytes | None = None, timeout: float = 1200) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``argv``; returns (wall seconds, completed). Raises PhaseFailed on a non-zero exit."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=cwd, input=input, capture_output=True, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = (done.stderr or b"").decode(errors="replace")[-2000:] or (done.stdout or b"").decode(errors="replace")[-2000:]
        raise PhaseFailed(f"`{' '.join(argv[:4])} ...` exited {done.returncode}:\n{tail}")
    return seconds, done


def docker(*args: str, check: bool = True, input: bytes | None = None) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, input=input, timeout=600)
    if check and done.returncode != 0:
        raise PhaseFailed(f"docker {' '.join(args[:3])} failed: {done.stderr.decode(errors='replace')[-1000:]}")
    return done.stdout.decode().strip()


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def image_size(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref))


def compressed_size(ref: str) -> int:
    """Bytes of `docker save REF` gzipped at level 6: what a registry would roughly store."""
    proc = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    total = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        total += len(gz.compress(chunk))
    total += len(gz.flush())
    if proc.wait() != 0:
        raise PhaseFailed(f"docker save {ref} failed")
    return total


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def copy_tree(src: Path, dst: Path, umask: int = 0o022) -> Path:
    """A copy whose files are *created* under ``umask`` (modes and mtimes differ from ``src``),
    leaving out caches and bytecode."""
    old = os.umask(umask)
    try:
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = Path(root).relative_to(src)
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                (dst / rel / name).write_bytes((Path(root) / name).read_bytes())
    finally:
        os.umask(old)
    return dst


def touch_code(model_dir: Path) -> None:
    """The one-line code change: a comment appended to predict.py (a new mtime too)."""
    with open(model_dir / "predict.py", "a") as f:
        f.write(f"# bench edit {secrets.token_hex(4)}\n")


def fresh_env(workdir: Path, *, uv_cache: Path, xdg_cache: Path, tz: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MLBUILD_CACHE_DIR", "PIP_CACHE_DIR", "UV_NO_CACHE", "PIP_NO_CACHE_DIR"):
        env.pop(var, None)
    uv_cache.mkdir(parents=True, exist_ok=True)
    xdg_cache.mkdir(parents=True, exist_ok=True)
    env.update(UV_CACHE_DIR=str(uv_cache), XDG_CACHE_HOME=str(xdg_cache))
    if tz:
        env["TZ"] = tz
    return env


def mlbuild_cli() -> list[str]:
    beside = Path(sys.executable).parent / "mlbuild"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlbuild")
    if found is None:
        sys.exit("error: the mlbuild CLI is not installed (pip install -e . in the repository)")
    return [found]


# -- the engine's cold state -------------------------------------------------------------------------


class Engine:
    """Images this run creates, so it removes exactly those (and nothing of anyone else's).

    Everything built on a nonce base inherits its LABEL, so ``label=org.mlbuild.bench.nonce=N``
    finds every image of this run - final images, mlbuild's env images, dangling stages -
    whatever tags the CLI gave them."""

    def __init__(self, base: str, log: Log) -> None:
        self.base = base
        self.log = log
        self.nonces: list[str] = []
        self.tags: list[str] = []  # images not built on a nonce base (the wheelhouse)

    def nonce_base(self) -> str:
        """A copy of the base with a new image id (one LABEL): nothing built before can be a
        cache hit on it."""
        nonce = secrets.token_hex(6)
        tag = f"mlbuild-bench/base:{nonce}"
        dockerfile = f"FROM {self.base}\nLABEL {NONCE_LABEL}={nonce}\n".encode()
        self.nonces.append(nonce)
        docker("build", "-q", "--network", "none", "-t", tag, "-", input=dockerfile)
        return tag

    def track(self, ref: str) -> None:
        self.tags.append(ref)

    def purge_shared_caches(self) -> list[str]:
        removed = [r for r in docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).splitlines()
                   if r.startswith("mlbuild-cache/")]
        if removed:
            docker("rmi", "-f", *removed, check=False)
        docker("builder", "prune", "-af", check=False)
        return removed

    def images_of_run(self) -> list[str]:
        ids: set[str] = set()
        for nonce in self.nonces:
            ids.update(docker("images", "-a", "-q", "--no-trunc", "--filter", f"label={NONCE_LABEL}={nonce}",
                              check=False).split())
        return sorted(ids)

    def cleanup(self) -> None:
        for tag in self.tags:
            docker("rmi", tag, check=False)
        # Children first: retry while something could be removed (a parent goes once its
        # children are gone). -f only untags the ids' several tags; never touches other images.
        todo = self.images_of_run()
        for _ in range(6):
            if not todo:
                break
            docker("rmi", "-f", *todo, check=False)
            todo = self.images_of_run()
        if todo:
            self.log(f"could not remove {len(todo)} images of this run: {' '.join(t[7:19] for t in todo)}")


# -- the baseline: a hand-written Dockerfile ------------------------------------------------------------


def _locked_requirements(lock: Path) -> list[str]:
    """``name==version --hash=...`` per entry of a uv lock, markers evaluated for CPython 3.11 on
    Linux (the target), comments dropped."""
    from packaging.markers import Marker

    target = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    entries, current = [], ""
    for raw in lock.read_text().splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += " " + line.strip().rstrip("\\").strip()
        if not line.endswith("\\"):
            entries.append(current.strip())
            current = ""
    out = []
    for entry in entries:
        spec, _, rest = entry.partition(" --hash")
        rest = ("--hash" + rest) if rest else ""
        name_version, _, marker = spec.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(target):
            continue
        out.append(f"{name_version.strip()} {rest}".strip())
    return out


def _platform_flags() -> list[str]:
    # pip matches --platform tags exactly: list every manylinux tag glibc 2.36 (bookworm) runs.
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [flag for tag in tags for flag in ("--platform", tag)]


def fetch_wheels(model_dir: Path, dest: Path) -> tuple[float, list[str]]:
    """The same locked wheels mlbuild installs (model lock + server lock), downloaded on the host
    for linux/amd64 CPython 3.11 (pip checks the hashes). Returns (seconds, requirement lines)."""
    reqs = _locked_requirements(model_dir / "mlbuild.lock") + _locked_requirements(SERVER_LOCK)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "requirements.txt").write_text("\n".join(reqs) + "\n")
    seconds, _ = run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                      "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
                      "--abi", "cp311", *_platform_flags(),
                      "--disable-pip-version-check", "-r", str(dest / "requirements.txt"), "-d", str(dest)])
    return seconds, reqs


BASELINE_DOCKERFILE = """\
# Hand-written baseline: what a careful user writes without mlbuild.
FROM {wheelhouse} AS wheels
FROM {base} AS build
COPY --from=wheels /wheels /tmp/wheels
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --require-hashes \\
      --disable-pip-version-check --find-links /tmp/wheels -r /tmp/wheels/requirements.txt

FROM {base}
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY model/artifacts/ ./artifacts/
COPY app.py ./
COPY model/*.py ./
ENV BENCH_MODEL_DIR=/app PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
CMD ["/opt/venv/bin/uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8080", "--no-access-log"]
"""


def baseline_context(work: Path, model_src: Path) -> Path:
    ctx = work / "baseline-context"
    copy_tree(model_src, ctx / "model")
    shutil.copyfile(BENCH / "apps" / "baseline_fastapi.py", ctx / "app.py")
    return ctx


def run_baseline(work: Path, engine: Engine, wheels: Path, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wheelhouse = f"mlbuild-bench/wheelhouse:{secrets.token_hex(6)}"
    whctx = work / "wheelhouse-context"
    shutil.copytree(wheels, whctx / "wheels")
    (whctx / "Dockerfile").write_text("FROM scratch\nCOPY wheels /wheels\n")
    engine.track(wheelhouse)
    run(["docker", "build", "-q", "--network", "none", "-t", wheelhouse, str(whctx)])
    base = engine.nonce_base()
    ctx = baseline_context(work, EXAMPLE)
    (ctx / "Dockerfile").write_text(BASELINE_DOCKERFILE.format(wheelhouse=wheelhouse, base=base))
    tag = "mlbuild-bench/baseline-iris:latest"
    argv = ["docker", "build", "-q", "--network", "none", "-t", tag, str(ctx)]
    log("baseline: cold docker build (hand-written Dockerfile)")
    out["cold_s"], _ = run(argv)
    out["size_bytes"] = image_size(tag)
    touch_code(ctx / "model")
    log("baseline: code-only rebuild")
    out["rebuild_s"], _ = run(argv)
    out["context_bytes"] = dir_size(ctx)
    out["dockerfile"] = (ctx / "Dockerfile").read_text()
    return out


# -- mlbuild, docker backend -----------------------------------------------------------------------------


def mlbuild_docker(work: Path, engine: Engine, base: str, args, log: Log) -> dict[str, Any]:
    cli = mlbuild_cli()
    model = copy_tree(EXAMPLE, work / "docker" / "iris-sklearn")
    uv_cache = work / "caches" / "uv"
    phases: dict[str, Any] = {}

    def build(phase: str, env: dict[str, str], nonce_base: str, tag: str) -> dict[str, Any]:
        argv = [*cli, "image", str(model), "-t", tag, "--base", nonce_base, "--backend", "docker", "-q"]
        log(f"docker/{phase}: {' '.join(argv[1:])}")
        seconds, done = run(argv, env=env)
        result = {"seconds": round(seconds, 3), "stdout": done.stdout.decode(errors="replace").strip()[-200:],
                  "image_id": docker("image", "inspect", "--format", "{{.Id}}", tag),
                  "uv_cache_bytes": dir_size(uv_cache) if uv_cache.exists() else 0}
        log(f"docker/{phase}: {seconds:.2f} s")
        return result

    # 1. all caches empty
    env1 = fresh_env(work, uv_cache=uv_cache, xdg_cache=work / "caches" / "xdg-1")
    phases["cold"] = build("cold", env1, engine.nonce_base(), "mlbuild-bench/iris:cold")
    # 2. warm wheel cache (uv), empty mlbuild env cache, cold engine
    env2 = fresh_env(work, uv_cache=uv_cache, xdg_cache=work / "caches" / "xdg-2")
    phases["cold-wheels"] = build("cold-wheels", env2, engine.nonce_base(), "mlbuild-bench/iris:cold-wheels")
    # 2b. warm host caches (wheels + installed envs), cold engine
    base_c = engine.nonce_base()
    phases["cold-engine"] = build("cold-engine", env2, base_c, "mlbuild-bench/iris:latest")
    # 3. one-line code change, everything else warm
    touch_code(model)
    phases["rebuild"] = build("rebuild", env2, base_c, "mlbuild-bench/iris:latest")
    phases["nochange"] = build("nochange", env2, base_c, "mlbuild-bench/iris:latest")
    final = "mlbuild-bench/iris:latest"
    size = {"size_bytes": image_size(final)}
    if not args.no_compressed:
        log("docker: measuring the gzip-compressed size (docker save | gzip -6)")
        size["compressed_bytes"] = compressed_size(final)
    phases["image"] = size
    return phases


# -- mlbuild, oci backend ------------------------------------------------------------------------------------


def oci_available(log: Log) -> bool:
    done = subprocess.run([*mlbuild_cli(), "image", "--help"], capture_output=True, text=True)
    return done.returncode == 0 and "--backend" in done.stdout and "oci" in done.stdout


def layout_digest(layout: Path) -> str | None:
    try:
        index = json.loads((layout / "index.json").read_text())
        return index["manifests"][0]["digest"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def layout_sizes(layout: Path, digest: str | None) -> dict[str, int]:
    """Compressed (sum of blobs the manifest names) and uncompressed (sum of layer tars) sizes."""
    if not digest:
        return {}
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":", 1)[1]).read_bytes())
    if "manifests" in manifest:  # an index: take the first manifest
        return layout_sizes(layout, manifest["manifests"][0]["digest"])
    layers = manifest.get("layers", [])
    compressed = sum(l["size"] for l in layers) + manifest["config"]["size"]
    uncompressed = 0
    for layer in layers:
        path = blobs / layer["digest"].split(":", 1)[1]
        if not layer.get("mediaType", "").endswith("gzip"):  # a base layer kept as a plain tar
            uncompressed += path.stat().st_size
            continue
        d = zlib.decompressobj(31)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(d.decompress(chunk))
    return {"compressed_bytes": compressed, "uncompressed_bytes": uncompressed,
            "layers": len(layers), "plain_tar_layers": sum(not l.get("mediaType", "").endswith("gzip") for l in layers)}


def mlbuild_oci(work: Path, base: str, log: Log) -> dict[str, Any]:
    cli = mlbuild_cli()
    phases: dict[str, Any] = {}
    archive = work / "base.tar"
    log(f"oci: exporting the base once (docker save {base}; not timed, like the engine's base)")
    run(["docker", "save", "-o", str(archive), base])
    base_ref = f"docker-archive:{archive}"
    model = copy_tree(EXAMPLE, work / "oci" / "iris-sklearn")
    out = work / "oci" / "layout"
    env = fresh_env(work, uv_cache=work / "caches" / "uv-oci", xdg_cache=work / "caches" / "xdg-oci")

    def build(phase: str, model_dir: Path, output: Path, env: dict[str, str], umask: int | None = None) -> dict[str, Any]:
        argv = [*cli, "image", str(model_dir), "-t", "mlbuild-bench/iris:oci", "--base", base_ref,
                "--backend", "oci", "--output", str(output), "-q"]
        log(f"oci/{phase}: {' '.join(argv[1:])}")
        seconds, done = run(argv, env=env, umask=umask)
        digest = layout_digest(output)
        log(f"oci/{phase}: {seconds:.2f} s, {digest}")
        return {"seconds": round(seconds, 3), "digest": digest,
                "stdout": done.stdout.decode(errors="replace").strip()[-200:]}

    phases["cold"] = build("cold", model, out, env)
    phases["image"] = layout_sizes(out, phases["cold"]["digest"])
    touch_code(model)
    phases["rebuild"] = build("rebuild", model, out, env)
    phases["nochange"] = build("nochange", model, out, env)

    # reproducibility: two copies made under different umasks, built with different TZ, umask
    # and caches (the wheel cache is shared: it holds the same hash-checked wheels either way)
    repro = {}
    for name, umask, tz in (("a", 0o022, "UTC"), ("b", 0o077, "Pacific/Chatham")):
        copy = copy_tree(EXAMPLE, work / f"repro-{name}" / "sub" / "iris-sklearn", umask=umask)
        renv = fresh_env(work, uv_cache=work / "caches" / "uv-oci", xdg_cache=work / "caches" / f"xdg-repro-{name}", tz=tz)
        time.sleep(1.1)  # different mtimes in the two copies as well
        r = build(f"repro-{name}", copy, work / f"repro-{name}" / "layout", renv, umask=umask)
        repro[name] = {"umask": oct(umask), "tz": tz, "dir": str(copy), "digest": r["digest"], "seconds": r["seconds"]}
    repro["same"] = bool(repro["a"]["digest"]) and repro["a"]["digest"] == repro["b"]["digest"]
    phases["reproducibility"] = repro
    return phases


# -- report ------------------------------------------------------------------------------------------------------


def compute_targets(r: dict[str, Any]) -> list[Target]:
    d, b, o = r.get("docker") or {}, r.get("baseline") or {}, r.get("oci") or {}
    t: list[Target] = []

    def secs(node: dict, phase: str) -> float | None:
        return (node.get(phase) or {}).get("seconds")

    size = (d.get("image") or {}).get("size_bytes")
    t.append(Target("docker image size", "<= 450 MB", None if size is None else round(size / MB, 1),
                    None if size is None else size <= 450 * MB, "docker image inspect Size"))
    cold = secs(d, "cold")
    t.append(Target("docker cold build, all caches empty", "<= 10 s", cold, None if cold is None else cold <= 10,
                    _vs_baseline(cold, b.get("cold_s"))))
    reb = secs(d, "rebuild")
    t.append(Target("docker code-only rebuild", "<= 1.5 s", reb, None if reb is None else reb <= 1.5,
                    _vs_baseline(reb, b.get("rebuild_s"))))
    if o and "error" not in o:
        osize = (o.get("image") or {}).get("uncompressed_bytes")
        t.append(Target("oci image size (uncompressed layers)", "<= 450 MB",
                        None if osize is None else round(osize / MB, 1), None if osize is None else osize <= 450 * MB,
                        "sum of the layers, unpacked"))
        oreb = secs(o, "rebuild")
        t.append(Target("oci code-only rebuild into existing layout", "<= 0.5 s", oreb,
                        None if oreb is None else oreb <= 0.5, "CLI wall time, Python start-up included"))
        x = ratio(secs(o, "cold"), cold)
        t.append(Target("oci cold / docker cold (all caches empty)", "<= 0.5x", None if x is None else round(x, 3),
                        None if x is None else x <= 0.5, f"{secs(o, 'cold')} vs {cold} s"))
        rep = o.get("reproducibility") or {}
        t.append(Target("oci reproducible (2 copies, umask, TZ)", "same digest", None,
                        rep.get("same") if rep else None,
                        f"{_short((rep.get('a') or {}).get('digest'))} / {_short((rep.get('b') or {}).get('digest'))}"))
    return t


def _short(digest: str | None) -> str:
    return str(digest)[:19] if digest else "-"


def _vs_baseline(value: float | None, base: float | None) -> str:
    x = ratio(value, base)
    return "no baseline" if x is None else f"{x:.2f}x baseline ({base:.2f} s)"


def _first_error_line(text: str) -> str:
    """The line that says what failed: mlbuild's own "error: ..." line, else a traceback's last."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if not lines:
        return ""
    said = next((l for l in lines[1:] if l.lower().startswith("error")), None)
    return f"{lines[0]} {said or lines[-1]}" if len(lines) > 1 else lines[0]


def report_text(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [f"mlbuild build benchmark  {m['time_utc']}",
           f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}; docker {r['config'].get('docker')}",
           f"model {r['config']['example']}, base {r['config']['base']}; {r['config']['engine_cold']}", ""]
    d, b, o = r.get("docker") or {}, r.get("baseline") or {}, r.get("oci") or {}
    rows = []
    for phase, what in (("cold", "cold, all caches empty"), ("cold-wheels", "cold, warm wheel cache"),
                        ("cold-engine", "cold engine, warm host caches"), ("rebuild", "code-only rebuild"),
                        ("nochange", "rebuild, nothing changed")):
        sec = (d.get(phase) or {}).get("seconds")
        base_s = {"cold": b.get("cold_s"), "rebuild": b.get("rebuild_s")}.get(phase)
        oci_s = (o.get(phase) or {}).get("seconds") if phase in ("cold", "rebuild", "nochange") else None
        rows.append([what, sec, base_s, ratio(sec, base_s) and round(ratio(sec, base_s), 2), oci_s,
                     ratio(oci_s, sec) and round(ratio(oci_s, sec), 2)])
    out.append(table(["phase (wall s)", "mlbuild docker", "baseline", "docker/base", "mlbuild oci", "oci/docker"], rows))
    out.append("")
    img = d.get("image") or {}
    size_rows = [["mlbuild docker", _mb(img.get("size_bytes")), _mb(img.get("compressed_bytes"))],
                 ["baseline docker", _mb(b.get("size_bytes")), None]]
    if o.get("image"):
        size_rows.append(["mlbuild oci", _mb(o["image"].get("uncompressed_bytes")), _mb(o["image"].get("compressed_bytes"))])
    out.append(table(["image", "size MB", "stored MB"], size_rows))
    out.append("  (size: docker image inspect Size / the OCI layers unpacked, base included; stored: docker save | gzip -6,")
    if o.get("image"):
        out.append(f"   or the OCI blobs as written: {o['image'].get('plain_tar_layers')} of {o['image'].get('layers')} "
                   "layers are plain tars, the base's layers being kept as the base ships them)")
    else:
        out.append("   )")
    out.append(f"  wheels fetched on the host for the baseline in {r['config'].get('wheel_fetch_s')} s (not in its times); "
               f"uv cache after the cold build: {_mb((d.get('cold') or {}).get('uv_cache_bytes'))} MB")
    rep = o.get("reproducibility")
    if rep:
        out.append(f"  oci reproducibility: a (umask {rep['a']['umask']}, TZ {rep['a']['tz']}) {rep['a']['digest']}")
        out.append(f"                       b (umask {rep['b']['umask']}, TZ {rep['b']['tz']}) {rep['b']['digest']}")
    for key in ("baseline", "docker", "oci"):
        if (r.get(key) or {}).get("error"):
            out.append(f"  {key} FAILED: {_first_error_line(r[key]['error'])} (full text in --json)")
    out.append("")
    out.append(targets_block(r["targets"]))
    verdicts = [t["verdict"] for t in r["targets"]]
    out.append("")
    out.append(f"summary: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS, {verdicts.count('n/a')} n/a")
    return "\n".join(out)


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / MB, 1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (PhaseFailed, subprocess.TimeoutExpired)):
        return str(exc)
    import traceback

    return "bench bug: " + "".join(traceback.format_exception(exc)).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE})")
    parser.add_argument("--purge", action="store_true",
                        help="also remove every mlbuild-cache/* image and run `docker builder prune -af` "
                             "first (only on a machine no one else is building on)")
    parser.add_argument("--no-oci", action="store_true", help="skip the OCI backend")
    parser.add_argument("--no-baseline", action="store_true", help="skip the hand-written Dockerfile baseline")
    parser.add_argument("--no-compressed", action="store_true", help="skip the gzip size of the docker image")
    parser.add_argument("--keep", action="store_true", help="keep the images and the work directory")
    args = parser.parse_args(argv)
    log = Log()
    need_program("docker", "install the Docker CLI")
    if not (EXAMPLE / "predict.py").exists():
        sys.exit(f"error: {EXAMPLE} is missing")
    if not image_exists(args.base):
        script = REPO / "scripts" / "build-base-image.sh"
        log(f"base image {args.base} missing: building it with {script}")
        subprocess.run([str(script), args.base], check=True)

    work = Path(tempfile.mkdtemp(prefix="mlbuild-bench-build-"))
    engine = Engine(args.base, log)
    result: dict[str, Any] = {
        "benchmark": "build",
        "machine": machine(),
        "config": {"example": str(EXAMPLE), "base": args.base, "work": str(work),
                   "docker": docker("version", "--format", "{{.Server.Version}}", check=False),
                   "engine_cold": "cold engine = a fresh LABEL-nonce copy of the base per cold phase"
                                  + (" + mlbuild-cache/* removed + builder pruned" if args.purge else "")},
    }
    failed = False
    try:
        if args.purge:
            result["config"]["purged"] = engine.purge_shared_caches()
        if not args.no_baseline:
            try:
                log("baseline: fetching the locked wheels on the host (pip download)")
                fetch_s, reqs = fetch_wheels(EXAMPLE, work / "wheels")
                result["config"]["wheel_fetch_s"] = round(fetch_s, 2)
                result["config"]["baseline_requirements"] = reqs
                result["baseline"] = run_baseline(work, engine, work / "wheels", log)
            except Exception as exc:  # noqa: BLE001 - reported, the other parts still run
                failed = True
                result["baseline"] = {"error": _describe(exc)}
                log(f"baseline FAILED: {exc}")
        try:
            result["docker"] = mlbuild_docker(work, engine, args.base, args, log)
        except Exception as exc:  # noqa: BLE001 - reported, the other parts still run
            failed = True
            result["docker"] = {"error": _describe(exc)}
            log(f"docker FAILED: {exc}")
        if not args.no_oci:
            if oci_available(log):
                try:
                    result["oci"] = mlbuild_oci(work, args.base, log)
                except Exception as exc:  # noqa: BLE001 - reported, the other parts still run
                    failed = True
                    result["oci"] = {"error": _describe(exc)}
                    log(f"oci FAILED: {exc}")
            else:
                result["oci"] = {"error": "the CLI has no --backend oci: skipped"}
    finally:
        if not args.keep:
            engine.cleanup()
            shutil.rmtree(work, ignore_errors=True)
            result["config"]["work"] = "(removed; --keep keeps it and the images)"
    result["targets"] = [t.as_dict() for t in compute_targets(result)]
    result["ok"] = not failed
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report_text(result))
    return 1 if failed else 0


if __name__ == "__main__":
    ensure_interpreter(("packaging", "mlbuild", "pip"))
    sys.exit(main())
