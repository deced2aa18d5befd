"""DockerBackend without an engine: a fake docker client records the builds and answers from a
script. What is checked: network_mode, the env-image cache, the context sent, error mapping."""

from __future__ import annotations

import io
import os
import tarfile
import textwrap

import docker.errors
import pytest
from mlbuild._backends.docker import DockerBackend
from mlbuild._errors import BuildError, ConfigError, EngineUnavailableError
from mlbuild._lock import Lock
from mlbuild._spec import load_spec
from support.plans import Envs, plan_for


class FakeImage:
    def __init__(self, image_id, images=None):
        self.id = image_id
        self.attrs = {"Size": 123_000_000}
        self._images = images

    def tag(self, repository, tag):
        self._images.known[f"{repository}:{tag}"] = self.id
        return True


class FakeImages:
    def __init__(self, known):
        self.known = known

    def get(self, name):
        if name in self.known:
            return FakeImage(self.known[name], self)
        raise docker.errors.ImageNotFound(name)

    def pull(self, name, platform=None):
        raise docker.errors.APIError("pull access denied")


class FakeAPI:
    def __init__(self, client, script):
        self.client, self.script, self.calls = client, script, []
        self.archives = []

    archives: list

    def put_archive(self, container_id, path, data):
        with tarfile.open(fileobj=io.BytesIO(b"".join(data))) as tar:
            self.archives.append(tar.getnames())
        return True

    def build(self, *, fileobj, tag, **kwargs):
        with tarfile.open(fileobj=io.BytesIO(b"".join(fileobj))) as tar:  # a chunk generator
            names = tar.getnames()
            dockerfile = tar.extractfile("Dockerfile").read().decode()
        self.calls.append({"tag": tag, "names": names, "dockerfile": dockerfile, **kwargs})
        chunks = self.script.pop(0) if self.script else None
        if chunks is None:
            image_id = f"sha256:{len(self.calls):064d}"
            if tag is not None:
                self.client.images.known[tag] = image_id
            self.client.images.known[image_id] = image_id
            chunks = [{"stream": "Step 1/2 : FROM x\n"}, {"aux": {"ID": image_id}}]
        return iter(chunks)


class FakeContainer:
    def __init__(self, client, image_id):
        self.client, self.image_id = client, image_id
        self.id = f"c{len(client.committed)}"
        self.removed = False

    def commit(self, message=None):
        image_id = f"sha256:{'c' * 62}{len(self.client.committed):02d}"
        self.client.images.known[image_id] = image_id
        self.client.committed.append({"from": self.image_id, "names": self.client.api.archives.pop(), "message": message})
        return FakeImage(image_id, self.client.images)

    def remove(self, force=False):
        self.removed = True


class FakeContainers:
    def __init__(self, client):
        self.client = client

    def create(self, image_id, **kwargs):
        assert kwargs.get("network_disabled") is True
        return FakeContainer(self.client, image_id)


class FakeClient:
    def __init__(self, script=None, known=None):
        self.images = FakeImages({"base:1": "sha256:" + "b" * 64, **(known or {})})
        self.api = FakeAPI(self, list(script or []))
        self.containers = FakeContainers(self)
        self.committed: list[dict] = []  # env layers added by put_archive + commit

    def ping(self):
        return True


def _setup(tmp_path, toml=""):
    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x: dict) -> dict:\n    return x\n")
    (model / "mlbuild.toml").write_text('name = "m"\npython = "3.11"\nbase_image = "base:1"\n' + textwrap.dedent(toml))
    envs = {}
    for kind in ("server", "model"):
        site = tmp_path / kind / "lib" / "python3.11" / "site-packages"
        site.mkdir(parents=True)
        (site / f"{kind}pkg.py").write_text("x = 1\n")
        envs[kind] = tmp_path / kind
    spec = load_spec(model)
    lock = Lock(path=model / "mlbuild.lock", python="3.11", platforms=("linux/amd64",), resolver="uv",
                requirements_sha256="0" * 64, packages=(), digest="sha256:" + "1" * 64)
    options = dict(tag="m:1", envs=Envs(envs["server"], envs["model"], "sha256:" + "2" * 64))
    return spec, lock, options


def test_env_image_is_built_once_then_reused(tmp_path):
    spec, lock, options = _setup(tmp_path)
    client = FakeClient()
    backend = DockerBackend(client_factory=lambda: client)
    first = backend.build(plan_for(spec, lock, **options))
    env_call, app_call = client.api.calls
    # The env image: FROM/venvs from the Dockerfile (no env files in its context), then one
    # committed layer per env, extracted straight into a container.
    assert env_call["tag"] is None and env_call["names"] == ["Dockerfile"]
    assert "COPY" not in env_call["dockerfile"] and "python3 -m venv" in env_call["dockerfile"]
    server_layer, model_layer = client.committed
    assert server_layer["from"] == f"sha256:{1:064d}" and model_layer["from"] != server_layer["from"]
    assert "opt/mlbuild/model-env/lib/python3.11/site-packages/modelpkg.py" in model_layer["names"]
    assert "opt/mlbuild/server-env/lib/python3.11/site-packages/mlbuild-runtime.pth" in server_layer["names"]
    assert not any(n.startswith("opt/mlbuild/model-env") for n in server_layer["names"])
    assert first.env_image.startswith("mlbuild-cache/env:")
    assert client.images.known[first.env_image] == f"sha256:{'c' * 62}01"  # the model env's commit
    assert app_call["dockerfile"].count("FROM ") == 1 and f"FROM {first.env_image}" in app_call["dockerfile"]
    assert "model/code/predict.py" in app_call["names"] and not any(n.startswith("model-env") for n in app_call["names"])
    assert {c["network_mode"] for c in client.api.calls} == {"none"}
    assert all(c["rm"] and c["forcerm"] and c["custom_context"] for c in client.api.calls)
    # Nothing changed: the app image is found by its context's key; the engine builds nothing.
    lines: list[str] = []
    same = backend.build(plan_for(spec, lock, **options, progress=lines.append))
    assert len(client.api.calls) == 2 and same.image_id == first.image_id
    assert client.images.known["m:1"] == first.image_id and any("nothing changed" in line for line in lines)
    # A code change: only the app again, FROM the same env image.
    (spec.directory / "predict.py").write_text("def predict(x: dict) -> dict:\n    return {}\n")
    second = backend.build(plan_for(spec, lock, **options))
    assert len(client.api.calls) == 3 and second.env_image == first.env_image
    assert second.image_id != first.image_id


def test_system_packages_get_network_in_the_env_build_only(tmp_path):
    spec, lock, options = _setup(tmp_path, 'system_packages = ["libgomp1"]\n')
    client = FakeClient()
    lines = []
    DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options, progress=lines.append))
    assert [c["network_mode"] for c in client.api.calls] == ["default", "none"]
    assert any("network on, for apt-get only" in line for line in lines)


def test_failed_step_is_a_build_error_with_the_step_and_tail(tmp_path):
    spec, lock, options = _setup(tmp_path)
    failing = [
        {"stream": "Step 1/3 : FROM base:1\n"},
        {"stream": "Step 2/3 : RUN wget http://x\n"},
        {"stream": "wget: unable to resolve host address: Temporary failure in name resolution\n"},
        {"errorDetail": {"code": 1, "message": "The command '/bin/sh -c wget http://x' returned a non-zero code: 4"}},
    ]
    client = FakeClient(script=[failing])
    with pytest.raises(BuildError) as info:
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    assert str(info.value) == "image build failed at Step 2/3 : RUN wget http://x"
    assert "returned a non-zero code: 4" in info.value.details
    assert "without network on purpose" in info.value.hint


def test_missing_base_that_cannot_be_pulled(tmp_path):
    spec, lock, options = _setup(tmp_path)
    client = FakeClient()
    client.images.known.pop("base:1")
    with pytest.raises(BuildError, match="base image base:1 is not in the engine"):
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))


class RecordingImages(FakeImages):
    """FakeImages that records every name the backend asks the engine for."""

    def __init__(self, known):
        super().__init__(known)
        self.asked: list[tuple[str, str]] = []

    def get(self, name):
        self.asked.append(("get", name))
        return super().get(name)

    def pull(self, name, platform=None):
        self.asked.append(("pull", name))
        return super().pull(name, platform)


def _recording_client(**kwargs):
    client = FakeClient(**kwargs)
    client.images = RecordingImages(client.images.known)
    return client


@pytest.mark.parametrize("base", [
    "./layout", "../images/base.tar", "/srv/images/layout", "oci:./layout", "oci:/srv/layout:3.11",
    "docker-archive:base.tar", "docker-archive:/srv/base.tar:repo:tag",
])
@pytest.mark.parametrize("via", ["options", "spec"])
def test_a_local_base_never_reaches_the_engine(tmp_path, base, via):
    spec, lock, options = _setup(tmp_path)
    if via == "options":  # --base on the command line, or the API's base_image=
        options = {**options, "base_image": base}
    else:  # base_image in mlbuild.toml
        spec = spec.model_copy(update={"base_image": base})
    client = _recording_client()
    with pytest.raises(ConfigError) as info:
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    assert info.value.message.startswith(f"base image {base!r} is a local image layout or archive")
    assert "\n" not in info.value.message and "--backend oci" in info.value.hint
    assert client.images.asked == [] and client.api.calls == []


def test_a_docker_prefixed_base_is_the_engine_image_it_names(tmp_path):
    spec, lock, options = _setup(tmp_path)
    client = _recording_client()
    result = DockerBackend(client_factory=lambda: client).build(
        plan_for(spec, lock, **{**options, "base_image": "docker:base:1"}))
    assert ("get", "base:1") in client.images.asked
    assert not any(name.startswith("docker:") for _, name in client.images.asked)
    assert "FROM base:1\n" in client.api.calls[0]["dockerfile"] and result.base_image == "base:1"


@pytest.mark.parametrize("base", ["base:1\nRUN id", "$(id)", "base:1 --network=host", "docker:"])
def test_an_unchecked_base_from_the_api_is_refused_before_the_engine(tmp_path, base):
    # A BuildPlan can be made by hand, past the spec's checks: the engine's API sees only a
    # checked reference.
    spec, lock, options = _setup(tmp_path)
    client = _recording_client()
    with pytest.raises(ConfigError, match="not an image reference"):
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **{**options, "base_image": base}))
    assert client.images.asked == [] and client.api.calls == []


def test_engine_that_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")

    def factory():
        raise docker.errors.DockerException("Error while fetching server API version: connection refused")

    spec, lock, options = _setup(tmp_path)
    with pytest.raises(EngineUnavailableError) as info:
        DockerBackend(client_factory=factory).build(plan_for(spec, lock, **options))
    assert str(info.value) == "no Docker engine answers at tcp://127.0.0.1:9"
    assert info.value.exit_code == 6 and "connection refused" in info.value.details


def test_result_json_and_summary(tmp_path):
    import json

    spec, lock, options = _setup(tmp_path)
    client = FakeClient()
    result = DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    data = json.loads(json.dumps(result.to_json()))
    assert data["tag"] == "m:1" and data["backend"] == "docker" and data["size_bytes"] == 123_000_000
    assert data["lock_digest"] == lock.digest and "dockerfile" not in data
    assert result.summary().startswith("built m:1 (") and "123 MB, docker" in result.summary()


def test_engine_answers(monkeypatch):
    from mlbuild._backends.docker import engine_answers

    assert engine_answers(lambda: FakeClient()) is True

    def broken():
        raise docker.errors.DockerException("nope")

    assert engine_answers(broken) is False


class _BeforeSending(FakeAPI):
    """Runs ``hook`` when the engine starts reading the context (as a file changes mid-build)."""

    def __init__(self, client, hook):
        super().__init__(client, [])
        self.hook = hook

    archives: list

    def put_archive(self, container_id, path, data):
        with tarfile.open(fileobj=io.BytesIO(b"".join(data))) as tar:
            self.archives.append(tar.getnames())
        return True

    def build(self, *, fileobj, tag, **kwargs):
        self.hook()
        return super().build(fileobj=fileobj, tag=tag, **kwargs)


def test_context_file_gone_while_streaming_is_a_build_error_naming_it(tmp_path):
    spec, lock, options = _setup(tmp_path)
    client = FakeClient()
    predict = spec.directory / "predict.py"
    client.api = _BeforeSending(client, predict.unlink)
    with pytest.raises(BuildError) as info:  # not EngineUnavailableError: the engine is fine
        DockerBackend(client_factory=lambda: client, env_cache=False).build(plan_for(spec, lock, **options))
    assert type(info.value) is BuildError
    assert str(predict) in str(info.value) and "could not read it into the build context" in str(info.value)


def test_context_file_that_shrinks_while_streaming_is_named(tmp_path, monkeypatch):
    spec, lock, options = _setup(tmp_path)
    predict = spec.directory / "predict.py"
    real_fstat = os.fstat

    def fstat_at_open(fd):  # the size when opened; the file then loses 10 bytes before the read
        st = real_fstat(fd)
        if os.path.samestat(st, os.stat(predict)):
            return os.stat_result((*tuple(st)[:6], st.st_size + 10, *tuple(st)[7:10]))
        return st

    monkeypatch.setattr(os, "fstat", fstat_at_open)
    client = FakeClient()
    with pytest.raises(BuildError, match="changed size while being sent") as info:
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    assert str(info.value).startswith(f"{predict}:")


def test_connection_dropped_by_an_engine_that_still_answers_is_a_build_error(tmp_path):
    import requests

    spec, lock, options = _setup(tmp_path)
    client = FakeClient()

    def refuse():
        raise requests.exceptions.ConnectionError("Connection aborted.", BrokenPipeError(32, "Broken pipe"))

    client.api = _BeforeSending(client, refuse)
    with pytest.raises(BuildError, match="closed the connection during the build of") as info:
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    assert type(info.value) is BuildError

    pings = []

    def gone_after_the_first_ping():  # answered when the build began, then stopped
        pings.append(1)
        if len(pings) > 1:
            raise docker.errors.DockerException("connection refused")

    client.ping = gone_after_the_first_ping
    with pytest.raises(EngineUnavailableError, match="stopped answering"):
        DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))


@pytest.mark.parametrize("tag", ["Bad Tag", "UPPER:1", "m:bad tag", "m@sha256:" + "a" * 64, " m:1", ""])
def test_bad_tag_is_refused_before_anything_runs(tmp_path, tag):
    from mlbuild._errors import ConfigError
    from mlbuild._plan import BuildRequest, make_plan

    class NoRunner:
        def run(self, *a, **k):
            pytest.fail("a program ran before the tag was checked")

    with pytest.raises(ConfigError) as info:
        make_plan(tmp_path / "nothing-here", BuildRequest(tag=tag), runner=NoRunner())
    assert f"--tag {tag!r}" in str(info.value) and info.value.hint


@pytest.mark.parametrize("target", ["./nope", "../models/nope", "/no/such/model", "models/My Model", "models/"])
def test_predict_target_that_looks_like_a_path_is_not_taken_for_an_image(tmp_path, monkeypatch, target):
    from mlbuild._errors import ConfigError
    from mlbuild._serve import predict_once

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # never asked
    with pytest.raises(ConfigError) as info:
        predict_once(target, "1")
    assert str(info.value) == f"no model directory at {target}"


def test_predict_target_that_is_a_file_is_not_a_model_directory(tmp_path, monkeypatch):
    from mlbuild._errors import ConfigError
    from mlbuild._serve import predict_once

    monkeypatch.chdir(tmp_path)
    (tmp_path / "predict.py").write_text("")
    with pytest.raises(ConfigError, match="^no model directory at predict.py$"):
        predict_once("predict.py", "1")


def _dockerignore_drops(pattern: str, name: str) -> bool:
    """Docker's .dockerignore rule: a pattern (** any depth, * and ? within a part) drops a
    path it matches and everything under a directory it matches."""
    import re

    rx = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        else:
            rx += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    parts = name.split("/")
    return any(re.fullmatch(rx, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def test_dockerignore_drops_nothing_the_model_files_chose(tmp_path):
    """What select_model_files chose (here taken back by include) is what the image gets, as
    with the oci backend; an engine that applies .dockerignore (BuildKit) must not drop it."""
    from mlbuild._templates import render_dockerignore

    spec, lock, options = _setup(tmp_path, 'include = ["**/__pycache__/**", "**/*.pyc", "**/.DS_Store"]\n')
    for rel in ("pkg/__pycache__/m.cpython-311.pyc", "m.pyc", ".DS_Store"):
        (spec.directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (spec.directory / rel).write_bytes(b"x")
    spec = load_spec(spec.directory)
    client = FakeClient()
    DockerBackend(client_factory=lambda: client).build(plan_for(spec, lock, **options))
    sent = [n for n in client.api.calls[-1]["names"] if n.startswith("model/")]
    for rel in ("pkg/__pycache__/m.cpython-311.pyc", "m.pyc", ".DS_Store"):  # code or artefact
        assert f"model/code/{rel}" in sent or f"model/artifacts/{rel}" in sent, rel
    patterns = [line.strip() for line in render_dockerignore().splitlines() if line.strip() and not line.startswith("#")]
    assert [(p, n) for p in patterns for n in sent if _dockerignore_drops(p, n)] == []
