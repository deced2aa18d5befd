"""The docker backend against the real engine: layout, user, labels, no network, layer reuse.

One echo image (with a model template that probes the build's network) is built per module and
shared; the other tests rebuild on top of the cached env image, which takes about a second.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest
from mlbuild._errors import BuildError, EngineUnavailableError, RunError

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "tests" / "fixtures" / "models"

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Runs in the build (as root, before USER): records the interfaces and the result of a connect,
# and fails the build if anything but loopback is there or the connect succeeds.
NETWORK_PROBE = textwrap.dedent(
    """\
    {% extends "Dockerfile.j2" %}
    {% block code %}
    {{ super() }}
    RUN ["/opt/mlbuild/server-env/bin/python", "-c", "import json, os, socket, sys; ifaces = sorted(os.listdir('/sys/class/net')); err = None\\ntry:\\n    socket.create_connection(('192.0.2.1', 80), timeout=3).close()\\nexcept OSError as exc:\\n    err = type(exc).__name__ + ': ' + str(exc)\\nopen('/opt/mlbuild/build-network.json', 'w').write(json.dumps({'interfaces': ifaces, 'connect_error': err}))\\nsys.exit(0 if ifaces == ['lo'] and err else 'network reachable during the build')"]
    {% endblock %}
    """
)


@pytest.fixture(scope="module")
def echo_build(docker_client, base_image, copy_model):
    from mlbuild._build import build_directory as build_image

    model = copy_model(MODELS / "echo")
    (model / "Dockerfile.j2").write_text(NETWORK_PROBE)
    lines: list[str] = []
    result = build_image(model, tag="mlbuild-test/echo-probe:it", base_image=base_image, progress=lines.append)
    yield model, result, lines
    docker_client.images.remove(result.tag, force=True)


def test_result_and_labels(echo_build, docker_client, base_image):
    model, result, lines = echo_build
    assert result.backend == "docker" and result.base_image == base_image
    assert result.lock_digest.startswith("sha256:") and result.size_bytes > 50_000_000
    image = docker_client.images.get(result.tag)
    assert image.id == result.image_id
    labels = image.attrs["Config"]["Labels"]
    assert labels["io.mlbuild.lock-digest"] == result.lock_digest
    assert labels["io.mlbuild.version"]
    assert labels["org.opencontainers.image.title"] == "echo"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.created"] == "2000-01-01T00:00:00Z"  # the fixed epoch
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["/opt/mlbuild/server-env/bin/python", "-m", "mlbuild_runtime"]
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "MLBUILD_PYTHON=/opt/mlbuild/model-env/bin/python" in config["Env"]
    assert any(line.startswith("Step ") for line in lines)  # progress was reported


def test_build_ran_without_network(echo_build, read_file_in_image):
    _, result, _ = echo_build
    probe = json.loads(read_file_in_image(result.tag, "/opt/mlbuild/build-network.json"))
    assert probe["interfaces"] == ["lo"]
    assert probe["connect_error"]  # the connect failed


def test_runs_as_non_root_with_the_designed_layout(echo_build, run_in_image):
    _, result, _ = echo_build
    assert run_in_image(result.tag, "-u", entrypoint="id").strip() == "10001"
    script = (
        "import os, shutil, json; "
        "walk = [os.path.join(d, f) for top in ('/opt/mlbuild',) for d, _, fs in os.walk(top) for f in fs]; "
        "print(json.dumps({"
        "'pip': [p for p in walk if '/pip/' in p or p.endswith('.whl')], "
        "'compilers': [c for c in ('gcc', 'cc', 'g++', 'clang') if shutil.which(c)], "
        "'pth': open([p for p in walk if p.endswith('mlbuild-runtime.pth')][0]).read().strip(), "
        "'model': sorted(os.listdir('/opt/mlbuild/model')), "
        "'template_shipped': os.path.exists('/opt/mlbuild/model/Dockerfile.j2'), "
        "'cwd': os.getcwd()}))"
    )
    facts = json.loads(run_in_image(result.tag, "-c", script, entrypoint="/opt/mlbuild/server-env/bin/python"))
    assert facts["pip"] == [] and facts["compilers"] == []
    assert facts["pth"] == "/opt/mlbuild/runtime"
    assert "predict.py" in facts["model"] and not facts["template_shipped"]
    assert facts["cwd"] == "/opt/mlbuild/model"


def test_run_image_serves_predictions(echo_build):
    from mlbuild._run import predict_in_image, run_image, stop_container

    _, result, _ = echo_build
    running = run_image(result.tag, timeout=120)
    try:
        assert httpx.get(running.url + "/health/ready", timeout=10).status_code == 200
        response = httpx.post(running.url + "/predict", json={"a": [1, 2]}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == {"a": [1, 2]}
    finally:
        stop_container(running.container_id)
    assert predict_in_image(result.tag, '{"b": "x"}') == {"b": "x"}


def test_code_only_change_rebuilds_only_the_top_layer(docker_client, base_image, copy_model, image_tags):
    from mlbuild._build import build_directory as build_image

    model = copy_model(MODELS / "echo")
    image_tags.append("mlbuild-test/echo-layers:it")
    first = build_image(model, tag=image_tags[0], base_image=base_image)
    before = docker_client.images.get(first.image_id).attrs["RootFS"]["Layers"]
    (model / "predict.py").write_text((model / "predict.py").read_text() + "\n# a code-only change\n")
    second = build_image(model, tag=image_tags[0], base_image=base_image)
    after = docker_client.images.get(second.image_id).attrs["RootFS"]["Layers"]
    assert second.image_id != first.image_id
    assert len(after) == len(before)
    assert after[:-1] == before[:-1]  # base, venvs, server env, model env, runtime: reused
    assert after[-1] != before[-1]  # the code layer


def test_network_use_in_a_build_step_fails_with_the_step_and_log(base_image, copy_model, image_tags):
    from mlbuild._build import build_directory as build_image

    model = copy_model(MODELS / "echo")
    (model / "Dockerfile.j2").write_text(
        '{% extends "Dockerfile.j2" %}\n{% block code %}\n{{ super() }}\n'
        "RUN python3 -c \"import socket; socket.create_connection(('192.0.2.1', 80), timeout=3)\"\n"
        "{% endblock %}\n"
    )
    image_tags.append("mlbuild-test/echo-netfail:it")
    with pytest.raises(BuildError) as info:
        build_image(model, tag=image_tags[0], base_image=base_image)
    assert "Step" in str(info.value) and "socket.create_connection" in str(info.value)
    assert "unreachable" in (info.value.details or "").lower()
    assert "without network" in (info.value.hint or "")


def test_python_mismatch_with_the_base_is_explained(base_image, copy_model, image_tags):
    from mlbuild._build import build_directory as build_image

    model = copy_model(MODELS / "echo")
    image_tags.append("mlbuild-test/echo-py312:it")
    with pytest.raises(BuildError) as info:
        build_image(model, tag=image_tags[0], base_image=base_image, python="3.12")
    assert "has Python 3.11 but the model wants 3.12" in (info.value.details or "")


def test_image_that_cannot_load_is_a_run_error_with_the_log(base_image, copy_model, image_tags):
    from mlbuild._build import build_directory as build_image
    from mlbuild._run import run_image

    model = copy_model(MODELS / "load_raises")
    image_tags.append("mlbuild-test/load-raises:it")
    build_image(model, tag=image_tags[0], base_image=base_image)
    with pytest.raises(RunError) as info:
        run_image(image_tags[0], timeout=60)
    assert "missing.bin" in (info.value.details or "")


def test_no_engine_is_engine_unavailable(monkeypatch, tmp_path):
    from mlbuild._backends.docker import engine_client

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EngineUnavailableError) as info:
        engine_client()
    assert str(info.value) == f"no Docker engine answers at unix://{tmp_path}/no-engine.sock"
    assert "DOCKER_HOST" in info.value.hint


def test_context_file_that_cannot_be_read_is_a_build_error_naming_it(tmp_path):
    """Against the real engine: the read error raised inside the streamed request body must come
    out as itself, not as the engine 'stopped answering'."""
    from mlbuild._backends.docker import DockerBackend
    from mlbuild._context import BuildContext, ContextEntry

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * (3 << 20))  # past the first chunk: the request is under way
    gone = tmp_path / "gone.bin"
    context = BuildContext([
        ContextEntry("Dockerfile", data=b"FROM scratch\nCOPY a.bin z.bin /\n"),
        ContextEntry("a.bin", source=weights),
        ContextEntry("z.bin", source=gone),
    ])
    with pytest.raises(BuildError) as info:
        DockerBackend().build_context(context, tag="mlbuild-test/unreadable:it", network_mode="none",
                                      platform="linux/amd64", say=lambda _line: None)
    assert not isinstance(info.value, EngineUnavailableError)
    assert str(info.value).startswith(f"{gone}: could not read it into the build context")


def test_container_whose_start_fails_is_removed(docker_client, base_image):
    """The host port is taken: the engine creates the container, then cannot start it. Nothing
    may stay behind in "Created"."""
    import socket

    from mlbuild._run import run_image

    def ours() -> set[str]:
        return {c.id for c in docker_client.containers.list(all=True, filters={"label": "io.mlbuild.run=1"})}

    before = ours()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RunError) as info:
            run_image(base_image, port=port, timeout=5)
    assert str(info.value).startswith(f"could not start {base_image}: ")
    assert "\n" not in str(info.value) and "--port" in (info.value.hint or "")
    assert ours() == before


def test_predict_target_that_is_not_an_image_name_is_one_line(docker_client, tmp_path, monkeypatch):
    from mlbuild._errors import ConfigError
    from mlbuild._serve import predict_once

    with pytest.raises(ConfigError) as info:
        predict_once("UPPER:bad", "1")
    assert str(info.value).startswith("'UPPER:bad' is not an image the engine can look up: ")
    assert "\n" not in str(info.value) and "mlbuild image DIR -t TAG" in (info.value.hint or "")

    with pytest.raises(RunError) as missing:
        predict_once("mlbuild-test/never-built:nope", "1")
    assert "mlbuild image DIR -t mlbuild-test/never-built:nope" in (missing.value.hint or "")

