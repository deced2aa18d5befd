"""Build plans made by hand for backend tests: the envs are fake directories, nothing installs,
nothing locks. ``plan_for`` is what make_plan would return for them; ``oci_build`` runs the oci
backend and its publishers as _build.build does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbuild._build import build
from mlbuild._files import select_model_files
from mlbuild._imagefacts import source_date_epoch
from mlbuild._plan import BuildPlan, PlatformEnvs

__all__ = ["Envs", "oci_build", "plan_for"]


@dataclass(frozen=True)
class Envs:
    server_env: Path
    model_env: Path
    server_lock_digest: str


def plan_for(
    spec: Any,
    lock: Any,
    *,
    envs: Envs,
    tag: str = "m:1",
    base_image: str | None = None,
    platforms: tuple[str, ...] = ("linux/amd64",),
    progress: Callable[[str], None] | None = None,
    source: str | None = None,
    revision: str | None = None,
) -> BuildPlan:
    return BuildPlan(
        spec=spec,
        lock=lock,
        files=select_model_files(spec),
        tag=tag,
        base_image=base_image or spec.resolved_base_image,
        epoch=source_date_epoch(),
        source=source,
        revision=revision,
        envs=tuple(PlatformEnvs(p, envs.server_env, envs.model_env, envs.server_lock_digest) for p in platforms),
        progress=progress,
    )


def oci_build(plan: BuildPlan, *, output: Path | None = None, push: str | None = None, load: bool = False,
              registry_client: Any = None, **backend_kwargs: Any) -> Any:
    from mlbuild._backends.oci import OciBackend
    from mlbuild._publish import publishers_for

    backend = OciBackend(registry_client=registry_client, **backend_kwargs)
    return build(plan, backend, publishers_for(output=output, push=push, load=load, registry_client=registry_client))
