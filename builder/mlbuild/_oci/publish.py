"""Sending a written image elsewhere: a registry push (exact bytes), or ``docker load``.

Both start from files already written (an OCI layout / an archive), so what is pushed or
loaded is byte for byte what the build produced and what ``--output`` holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._errors import EngineUnavailableError, PublishError
from .._runner import CommandFailed, Runner
from .mediatypes import INDEX_TYPES

__all__ = ["push_layout", "docker_load"]


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def push_layout(layout: Path, ref_text: str, *, client: Any = None) -> str:
    """Push the image that ``layout``'s index.json names to ``ref_text``; returns its digest.

    Order matters to registries: every blob, then each platform's manifest by digest, then the
    top manifest/index under the tag (a tag never points at something incomplete)."""
    from .reference import parse_reference
    from .registry import RegistryClient

    ref = parse_reference(ref_text)
    index = json.loads((layout / "index.json").read_bytes())
    top = index["manifests"][0]
    own_client = client is None
    client = client or RegistryClient(ref.registry)
    try:
        top_bytes = _blob_path(layout, top["digest"]).read_bytes()
        manifests = [(top["mediaType"], top_bytes)]
        if top["mediaType"] in INDEX_TYPES:
            manifests = [
                (m["mediaType"], _blob_path(layout, m["digest"]).read_bytes())
                for m in json.loads(top_bytes)["manifests"]
            ]
        for _, data in manifests:
            doc = json.loads(data)
            for desc in [doc["config"], *doc["layers"]]:
                client.push_blob(ref.repository, desc["digest"], _blob_path(layout, desc["digest"]), desc["size"])
        if top["mediaType"] in INDEX_TYPES:
            for media_type, data in manifests:
                from .image import sha256_digest

                client.push_manifest(ref.repository, sha256_digest(data), data, media_type)
        return client.push_manifest(ref.repository, ref.tag or ref.digest or "latest", top_bytes, top["mediaType"])
    except OSError as exc:
        raise PublishError(f"cannot read the image to push from {layout}: {exc.strerror or exc}",
                           hint="build again; the layout directory is incomplete") from exc
    finally:
        if own_client:
            client.close()


def docker_load(archive: Path, runner: Runner) -> str:
    """``docker load -i archive``; returns what the engine said it loaded."""
    try:
        runner.run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30)
    except (CommandFailed, OSError) as exc:
        raise EngineUnavailableError(
            "--load needs a Docker engine and none answers",
            hint="start dockerd (or point DOCKER_HOST at one), or write the image with --output FILE.tar and load it elsewhere",
        ) from exc
    try:
        result = runner.run(["docker", "load", "-i", str(archive)], timeout=1800)
    except CommandFailed as exc:
        raise PublishError(f"`docker load` rejected {archive}", hint="see the engine's message below",
                           details=exc.result.stderr or exc.result.stdout) from None
    return result.stdout.strip()
