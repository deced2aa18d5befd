"""`mlbuild run IMAGE` and `mlbuild predict IMAGE`: start a built image, wait until it is ready.

Readiness is the server's GET /health/ready (200 once the worker loaded the model). A container
that exits or never gets ready is a RunError whose details hold the container's log tail.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, RunError

__all__ = ["RunningContainer", "run_image", "predict_in_image", "stop_container"]

CONTAINER_PORT = 8080
_LOG_TAIL = 60


@dataclass(frozen=True)
class RunningContainer:
    url: str  # http://127.0.0.1:<host port>
    container_id: str


def _tail(container: Any) -> str:
    """The last log lines, without the access log of our own readiness polling (which would
    otherwise push the model's traceback out of the tail)."""
    try:
        text = container.logs(tail=2000).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the container may already be gone
        return "(no logs: the container is gone)"
    lines = [line for line in text.splitlines() if not ("/health/" in line and "mlbuild.access" in line)]
    return "\n".join(lines[-_LOG_TAIL:])


def _failure_reason(exc: urllib.error.HTTPError) -> str | None:
    """The server's reason when readiness says the model failed to import or load."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return None
    if isinstance(body, dict) and body.get("status") == "failed":
        return str(body.get("reason") or "the model failed to load")
    return None


def _host_port(container: Any, container_port: int) -> int:
    container.reload()
    bindings = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in bindings.get(f"{container_port}/tcp") or ():
        if binding.get("HostIp") in ("0.0.0.0", "127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise RunError(f"container {container.short_id} publishes no port for {container_port}/tcp")


def run_image(
    image: str,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    container_port: int | None = None,
    client_factory: Callable[[], Any] | None = None,
) -> RunningContainer:
    """Start ``image`` detached with its port published on 127.0.0.1 (``port``, or a free one)
    and return once /health/ready answers 200. The container is removed if that never happens."""
    import docker.errors

    from ._backends.docker import engine_client

    client = engine_client(client_factory)
    try:
        attrs = client.images.get(image).attrs
    except docker.errors.ImageNotFound:
        raise RunError(f"image {image} is not in the local engine", hint=f"build it first: mlbuild image DIR -t {image}") from None
    except docker.errors.APIError as exc:  # e.g. "invalid reference format": not a name at all
        raise ConfigError(
            f"{image!r} is not an image the engine can look up: {_explanation(exc)}",
            hint="name a built image (lowercase, as given to `mlbuild image DIR -t TAG`) or a model directory",
        ) from None
    if container_port is None:
        container_port = _image_port(attrs)
    try:
        container = client.containers.create(
            image,
            detach=True,
            environment=dict(env or {}),
            ports={f"{container_port}/tcp": ("127.0.0.1", port)},
            labels={"io.mlbuild.run": "1"},
        )
    except docker.errors.APIError as exc:
        raise RunError(f"could not create a container from {image}: {_explanation(exc)}") from None
    try:
        container.start()
    except docker.errors.APIError as exc:
        # Created but not started (the host port is taken, ...): never leave it behind.
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
        raise RunError(
            f"could not start {image}: {_explanation(exc)}",
            hint="is the host port already in use? choose another with --port, or leave it out for a free one",
        ) from None
    try:
        url = f"http://127.0.0.1:{_host_port(container, container_port)}"
        _wait_ready(container, url, timeout)
    except BaseException:
        stop_container(container.id, client_factory=lambda: client)
        raise
    return RunningContainer(url=url, container_id=container.id)


def _explanation(exc: Any) -> str:
    """The engine's own sentence, on one line."""
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())


def _image_port(attrs: Mapping[str, Any]) -> int:
    exposed = (attrs.get("Config") or {}).get("ExposedPorts") or {}
    for key in sorted(exposed):
        if key.endswith("/tcp"):
            return int(key.split("/", 1)[0])
    return CONTAINER_PORT


def _wait_ready(container: Any, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise RunError(
                f"container {container.short_id} exited with code {code} before it was ready",
                hint="the log tail below says why (import or load() errors show there)",
                details=_tail(container),
            )
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            reason = _failure_reason(exc)
            if reason is not None:
                # FAILED: import or load() raised. The server retries with backoff, but the same
                # code and artefacts fail the same way; say so now rather than at the timeout.
                raise RunError(
                    f"the model in container {container.short_id} failed to load: {reason}",
                    hint="the log tail below has the traceback; fix predict.py or the artefacts and rebuild",
                    details=_tail(container),
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.2)
    raise RunError(
        f"container {container.short_id} was not ready after {timeout:.0f} s ({url}/health/ready: {last})",
        hint="a slow load() needs a longer --timeout; otherwise see the log tail",
        details=_tail(container),
    )


def stop_container(container_id: str, *, client_factory: Callable[[], Any] | None = None, timeout: int = 10) -> None:
    import docker.errors

    from ._backends.docker import engine_client

    client = engine_client(client_factory)
    try:
        container = client.containers.get(container_id)
        container.stop(timeout=timeout)
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def predict_in_image(image: str, input_json: Any, *, timeout: float = 120, client_factory: Callable[[], Any] | None = None) -> Any:
    """Start ``image``, POST ``input_json`` (a JSON value, or JSON text) to /predict, stop it,
    and return the decoded output."""
    body = input_json.encode() if isinstance(input_json, str) else json.dumps(input_json).encode()
    running = run_image(image, timeout=timeout, client_factory=client_factory)
    try:
        request = urllib.request.Request(
            running.url + "/predict", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise RunError(f"POST /predict on {image} answered HTTP {exc.code}", details=detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RunError(f"POST /predict on {image} failed: {exc}") from None
    finally:
        stop_container(running.container_id, client_factory=client_factory)
