"""Image config, manifest and index documents, serialized as canonical JSON.

Canonical = keys sorted, no insignificant whitespace, UTF-8: the same content always gives the
same bytes, hence the same digest. Every timestamp the build adds comes from the build epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import BuildError
from .._platforms import Platform
from .mediatypes import Family

__all__ = [
    "canonical_json",
    "sha256_digest",
    "rfc3339",
    "Descriptor",
    "Healthcheck",
    "RunConfig",
    "NewLayer",
    "build_config",
    "build_manifest",
    "build_index",
]

# Fields of a base's ``config`` section that carry over. Docker's engine-internal fields
# (Hostname, AttachStdin, Image, ...) are dropped: they are not part of the OCI spec and vary
# with the engine that produced the base.
_KEPT_RUN_FIELDS = ("Env", "Labels", "ExposedPorts", "Volumes", "StopSignal", "Shell")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()  # fields of a base descriptor kept verbatim (urls, ...)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
        if self.platform is not None:
            plat = {"architecture": self.platform.oci_arch, "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def of(cls, media_type: str, data: bytes, **kw: Any) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data), **kw)


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: float = 10
    timeout_s: float = 5
    start_period_s: float = 10
    retries: int = 3

    def to_json(self) -> dict[str, Any]:
        ns = 1_000_000_000
        return {
            "Test": list(self.test),
            "Interval": int(self.interval_s * ns),
            "Timeout": int(self.timeout_s * ns),
            "StartPeriod": int(self.start_period_s * ns),
            "Retries": self.retries,
        }


@dataclass(frozen=True)
class RunConfig:
    """What the image runs and how: laid over the base's config."""

    env: tuple[tuple[str, str], ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    working_dir: str | None = None
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None


@dataclass(frozen=True)
class NewLayer:
    diff_id: str
    created_by: str
    comment: str = ""


def _merge_env(base: Sequence[str], ours: Sequence[tuple[str, str]]) -> list[str]:
    # Base order kept, our values replace same-named ones in place, new ones appended in order.
    merged: dict[str, str] = {}
    for item in base:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in ours:
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def build_config(
    base_config: Mapping[str, Any],
    run: RunConfig,
    new_layers: Sequence[NewLayer],
    *,
    platform: Platform,
    epoch: int,
) -> bytes:
    """The image config: the base's config with ``run`` laid over it and ``new_layers`` added."""
    created = rfc3339(epoch)
    base_run = base_config.get("config") or {}
    cfg: dict[str, Any] = {k: base_run[k] for k in _KEPT_RUN_FIELDS if base_run.get(k) is not None}
    cfg["Env"] = _merge_env(base_run.get("Env") or [], run.env)
    # The base's ENTRYPOINT would swallow our CMD as its arguments: the image runs mlbuild's server.
    cfg.pop("Entrypoint", None)
    if run.cmd:
        cfg["Cmd"] = list(run.cmd)
    if run.user is not None:
        cfg["User"] = run.user
    if run.working_dir is not None:
        cfg["WorkingDir"] = run.working_dir
    if run.exposed_ports:
        ports = dict(base_run.get("ExposedPorts") or {})
        ports.update({p: {} for p in run.exposed_ports})
        cfg["ExposedPorts"] = ports
    if run.labels:
        labels = dict(base_run.get("Labels") or {})
        labels.update(dict(run.labels))
        cfg["Labels"] = labels
    if run.healthcheck is not None:
        cfg["Healthcheck"] = run.healthcheck.to_json()

    base_rootfs = base_config.get("rootfs") or {}
    base_diff_ids = list(base_rootfs.get("diff_ids") or [])
    history = [dict(h) for h in base_config.get("history") or []]
    if sum(1 for h in history if not h.get("empty_layer")) != len(base_diff_ids):
        # A base without (consistent) history: one synthetic entry per base layer, so tools
        # that pair history with layers (docker history, registries' UIs) line up.
        history = [{"created": created, "created_by": "base image layer"} for _ in base_diff_ids]
    for layer in new_layers:
        entry = {"created": created, "created_by": layer.created_by}
        if layer.comment:
            entry["comment"] = layer.comment
        history.append(entry)
    history.append({"created": created, "created_by": "mlbuild: image config", "empty_layer": True})

    doc: dict[str, Any] = {
        "architecture": platform.oci_arch,
        "os": platform.os,
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": base_diff_ids + [lay.diff_id for lay in new_layers]},
        "history": history,
    }
    if platform.variant:
        doc["variant"] = platform.variant
    return canonical_json(doc)


def build_manifest(
    family: Family,
    config: Descriptor,
    layers: Sequence[Descriptor],
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    if config.media_type != family.config:
        raise BuildError(f"config media type {config.media_type} does not belong to the {family.name} family")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": family.manifest,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if annotations and family.name == "oci":  # Docker schema 2 has no annotations field
        doc["annotations"] = dict(annotations)
    return canonical_json(doc)


def build_index(family: Family, manifests: Sequence[Descriptor]) -> bytes:
    """A multi-platform index (OCI) / manifest list (Docker); every entry names its platform."""
    for m in manifests:
        if m.platform is None:
            raise BuildError(f"index entry {m.digest} has no platform")
    ordered = sorted(manifests, key=lambda m: str(m.platform))
    doc = {"schemaVersion": 2, "mediaType": family.index, "manifests": [m.to_json() for m in ordered]}
    return canonical_json(doc)
