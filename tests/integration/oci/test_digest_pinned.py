"""The iris example's oci image, pinned layer by layer on a synthetic base.

Pinned from main before the builder's restructuring (issue 8), so a refactor that moves code
around must give the same bytes. A deliberate change to what the image holds (the runtime, the
env scrubbing, labels...) updates the pins in the same commit and says why in its message; the
failure message names the layers that moved, so an accidental change is found at once.

The base is the synthetic Debian-like one of tests/unit/oci/ocifixtures.py (byte-identical on
every machine, unlike a debootstrapped one); the envs are installed from the example's lock
into an empty mlbuild cache, as on a fresh machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
IRIS = REPO / "examples" / "iris-sklearn"

pytestmark = [pytest.mark.slow]

# created_by (without the "mlbuild <version>: " prefix) -> layer digest
PINNED_LAYERS = {
    "step 0": "sha256:60e5261fbb1d070bb99acb93c954c8634c0c22a3ac4f7a4228120d10e14998b7",
    "step 1": "sha256:03688ddab321885ee62526f1280818ca626ddff41cc306e8f4273b98233c5f65",
    "user mlbuild (uid 10001)": "sha256:ee06b7ed608d075a42701a09bcc51ac4c3e95727bb4856f52c2d4ba176f7fb1e",
    "COPY server-env/ /opt/mlbuild/server-env/": "sha256:2bb1a5e3422dd8d10780da28fa32ec15308741a3d9469ca5ec7aed04a66e9889",
    "COPY model-env/ /opt/mlbuild/model-env/ (numpy 2.4.6)": "sha256:4407b6a0f9562744787de9dbdd8fbb6d702ac553458dd03b9b024fd901d9c393",
    "COPY model-env/ /opt/mlbuild/model-env/ (scikit-learn 1.9.1)": "sha256:423a2932250c55e42433bb73898b248a7b252634a3946edc21aa0a03c215e3c1",
    "COPY model-env/ /opt/mlbuild/model-env/ (scipy 1.17.1)": "sha256:98b96b001b6a273f1a288a4e3c87864384f39e56f7f62a3bb34357dcc0d3d492",
    "COPY model-env/ /opt/mlbuild/model-env/": "sha256:1955dde6d89c6cf33004b6492d43d1daaaaada6ba3d8261d50d2ebcf92975e11",
    "COPY runtime/ /opt/mlbuild/runtime/": "sha256:294d6da5b5e1e2072004d9de26bc4f7147ac693347e796b8f4aa5c5b051a83f2",
    "COPY model/artifacts/ /opt/mlbuild/model/": "sha256:e14b44dd5481f3335096d7c5ab426c1318606312480112b125509ef2fa72e82d",
    "COPY model/code/ /opt/mlbuild/model/": "sha256:b16ef7931b3ec9b88102cdeb1c8d66ef2f5bea67fc4115ff449f1090af576b8e",
}
PINNED_DIGEST = "sha256:bacd7dc123b5a51bf7d9e4cbe138da3d5146f84014e91fd659fa9efebcff2a65"

_BUILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from ocifixtures import debian_like_layers, write_docker_archive
    import mlbuild
    model, work = sys.argv[2], Path(sys.argv[3])
    base = write_docker_archive(work / "base.tar", debian_like_layers())
    out = work / "layout"
    r = mlbuild.build_image(model, tag="iris:pin", backend="oci", base_image=f"docker-archive:{base}",
                            output=str(out), quiet=True)
    blob = lambda d: json.loads((out / "blobs" / "sha256" / d.split(":")[1]).read_bytes())
    manifest = blob(r.digest)
    history = [h for h in blob(manifest["config"]["digest"])["history"] if not h.get("empty_layer")]
    layers = [[h.get("created_by", "").split(": ", 1)[-1], l["digest"]] for h, l in zip(history, manifest["layers"])]
    print(json.dumps({"digest": r.digest, "layers": layers}))
    """
)


def test_iris_oci_image_is_byte_identical_to_the_pinned_one(tmp_path: Path) -> None:
    dropped = ("SOURCE_DATE_EPOCH", "MLBUILD_SOURCE_URL", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    # The revision label is the checkout's commit otherwise: fixed here, so the pin does not
    # depend on which commit of this repository runs the test.
    env["GITHUB_SHA"] = "0" * 40
    env["MLBUILD_CACHE_DIR"] = str(tmp_path / "cache")  # envs installed afresh, layers written afresh
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(REPO / "tests" / "unit" / "oci"), str(IRIS), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = dict(built["layers"])
    moved = {what: (PINNED_LAYERS.get(what), layers.get(what))
             for what in PINNED_LAYERS.keys() | layers.keys() if PINNED_LAYERS.get(what) != layers.get(what)}
    assert not moved, f"layers that moved (pinned, built): {json.dumps(moved, indent=1)}"
    assert [what for what, _ in built["layers"]] == list(PINNED_LAYERS), "layer order changed"
    assert built["digest"] == PINNED_DIGEST, "same layers, other config or manifest (labels, env, history?)"
