"""Same inputs, same digest: two OCI builds of one model, as two machines would run them.

Each build is its own process, in its own copy of the model directory (other path, other file
mtimes), with its own empty mlbuild cache (so the envs are installed and the layers compressed
from scratch), another umask and another time zone, a few seconds apart. The manifest digests
must be equal, and so must the OCI layouts' index.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"

pytestmark = [pytest.mark.docker, pytest.mark.slow]

_BUILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mlbuild._build import build_directory as build_image
    from mlbuild._backends.oci import OciBackend
    model, base, out = sys.argv[1:4]
    # 1 MiB: the server env then splits into per-distribution layers (pydantic-core, uvloop, ...),
    # so the split itself is shown to depend on nothing but the installed tree.
    r = build_image(model, tag="repro:1", base_image=base, backend=OciBackend(dist_layer_min_bytes=1 << 20), output=out)
    blob = lambda d: json.loads((Path(out) / "blobs" / "sha256" / d.split(":")[1]).read_bytes())
    history = blob(blob(r.digest)["config"]["digest"])["history"]
    server_layers = [h["created_by"] for h in history if "COPY server-env/" in h.get("created_by", "")]
    print(json.dumps({"digest": r.digest, "server_layers": server_layers}))
    """
)


def _build(model: Path, base: Path, out: Path, cache: Path, *, umask: str, tz: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env.update({"TZ": tz, "MLBUILD_CACHE_DIR": str(cache)})
    cmd = f"umask {umask} && exec \"$0\" -c \"$1\" \"$2\" \"$3\" \"$4\""
    proc = subprocess.run(
        ["sh", "-c", cmd, sys.executable, _BUILD, str(model), f"docker-archive:{base}", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_builds_same_digest(saved_base, tmp_path) -> None:
    digests = []
    for i, (umask, tz) in enumerate([("022", "UTC"), ("077", "Pacific/Chatham")]):
        work = tmp_path / f"machine{i}"
        # Another parent path; the same directory name (it is the model name when no config sets one).
        model = work / ("somewhere" if i == 0 else "else/where") / "echo"
        shutil.copytree(ECHO, model, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if i == 1:
            for p in model.rglob("*"):
                os.utime(p, (1_000_000_000, 1_000_000_000))  # other checkout times
            time.sleep(1.5)  # another wall-clock second
        base = work / "images" / f"base-{i}.tar"  # the base file too sits at another path
        base.parent.mkdir(parents=True)
        shutil.copyfile(saved_base, base)
        digests.append(_build(model, base, work / "out", work / "cache", umask=umask, tz=tz))
    assert digests[0]["server_layers"] == digests[1]["server_layers"]
    assert len(digests[0]["server_layers"]) > 2, digests[0]  # split: some distributions, then the rest
    assert digests[0]["digest"] == digests[1]["digest"]
    assert (tmp_path / "machine0" / "out" / "index.json").read_bytes() == (tmp_path / "machine1" / "out" / "index.json").read_bytes()
    # Every blob the image names exists and is equal in both layouts.
    names0 = sorted(p.name for p in (tmp_path / "machine0" / "out" / "blobs" / "sha256").iterdir())
    names1 = sorted(p.name for p in (tmp_path / "machine1" / "out" / "blobs" / "sha256").iterdir())
    assert names0 == names1


def test_source_date_epoch_changes_the_digest_predictably(saved_base, tmp_path) -> None:
    """SOURCE_DATE_EPOCH is an input: set, it changes the digest - and the same value twice
    gives the same digest again (proof that the equality above is not an accident)."""
    model = tmp_path / "echo"
    shutil.copytree(ECHO, model, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cache = tmp_path / "cache"
    base_digest = _build(model, saved_base, tmp_path / "o0", cache, umask="022", tz="UTC")["digest"]
    env_digests = []
    for i in range(2):
        old = os.environ.get("SOURCE_DATE_EPOCH")
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "MLBUILD_CACHE_DIR": str(cache)}
        proc = subprocess.run([sys.executable, "-c", _BUILD, str(model), f"docker-archive:{saved_base}", str(tmp_path / f"e{i}")],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        env_digests.append(json.loads(proc.stdout.strip().splitlines()[-1])["digest"])
        assert os.environ.get("SOURCE_DATE_EPOCH") == old
    assert env_digests[0] == env_digests[1] != base_digest
