"""Dockerfile rendering: golden files for the shapes that matter, plus the error paths.

Regenerate the golden files after an intended template change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/builder/test_templates.py`` and review the diff.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from mlbuild._errors import ConfigError
from mlbuild._imagefacts import created_timestamp
from mlbuild._lock import Lock
from mlbuild._spec import load_spec
from mlbuild._templates import ContextLayout, render_dockerfile

GOLDEN = Path(__file__).parent / "golden"
DIGEST = "sha256:" + "ab" * 32


def _lock(model: Path) -> Lock:
    return Lock(
        path=model / "mlbuild.lock",
        python="3.11",
        platforms=("linux/amd64",),
        resolver="uv",
        requirements_sha256="0" * 64,
        packages=(),
        digest=DIGEST,
    )


def _model(tmp_path: Path, toml: str = "", files: dict[str, str] | None = None) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x: dict) -> dict:\n    return x\n")
    (model / "mlbuild.toml").write_text(textwrap.dedent(toml))
    for name, text in (files or {}).items():
        (model / name).write_text(textwrap.dedent(text))
    return model


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.Dockerfile"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path.name} differs; if intended, rerun with UPDATE_GOLDEN=1"


@pytest.fixture(autouse=True)
def _no_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


MINIMAL = """
    name = "minimal"
    version = "1.2.3"
    python = "3.11"
    """

RICH = """
    name = "rich"
    version = "2.0.0"
    python = "3.11"
    base_image = "mlbuild-test/python:3.11-bookworm"
    system_packages = ["libgomp1", "curl"]
    port = 9000

    [env]
    OMP_NUM_THREADS = "1"
    GREETING = "say \\"hi\\" for $5"
    MLBUILD_WORKERS = "2"

    [labels]
    "com.example.team" = "search"
    """


def test_minimal_model(tmp_path):
    model = _model(tmp_path, MINIMAL)
    spec = load_spec(model)
    text = render_dockerfile(spec, _lock(model), ContextLayout())
    _check_golden("minimal", text)
    # The layer order DESIGN.md fixes, lowest first.
    order = [
        "FROM python:3.11-slim",
        "python3 -m venv --without-pip",
        "COPY server-env/",
        "COPY model-env/",
        "COPY runtime/",
        "COPY model/code/",
        "ENV ",
        "LABEL ",
        "USER 10001:10001",
        "EXPOSE 8080",
        "HEALTHCHECK ",
        "CMD ",
    ]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "apt-get" not in text and "COPY model/artifacts/" not in text


def test_model_with_system_packages_env_labels_and_artifacts(tmp_path):
    model = _model(tmp_path, RICH)
    spec = load_spec(model)
    text = render_dockerfile(spec, _lock(model), ContextLayout(has_artifacts=True, revision="c0ffee" * 7, source="https://example.invalid/repo"))
    _check_golden("rich", text)
    assert text.index("apt-get install") < text.index("python3 -m venv") < text.index("COPY model/artifacts/") < text.index("COPY model/code/")
    assert "--no-install-recommends curl libgomp1" in text
    # Quotes and $ survive Dockerfile parsing; the user's MLBUILD_WORKERS is kept, ours too.
    assert 'GREETING="say \\"hi\\" for \\$5"' in text
    assert 'MLBUILD_WORKERS="2"' in text and 'MLBUILD_PORT="9000"' in text and "EXPOSE 9000" in text
    assert '"org.opencontainers.image.revision"="' + "c0ffee" * 7 + '"' in text
    assert '"com.example.team"="search"' in text


def test_model_template_extends_ours(tmp_path):
    model = _model(
        tmp_path,
        MINIMAL,
        {
            "Dockerfile.j2": """\
                {% extends "Dockerfile.j2" %}
                {% block code %}
                {{ super() }}
                RUN ["{{ model_env_path }}/bin/python", "-c", "print('compiled-in step')"]
                {% endblock %}
                {% block config %}
                {{ super() }}
                LABEL "com.example.custom"="yes"
                {% endblock %}
                """
        },
    )
    spec = load_spec(model)
    text = render_dockerfile(spec, _lock(model), ContextLayout())
    _check_golden("extended", text)
    assert text.index("COPY model/code/") < text.index("compiled-in step") < text.index("WORKDIR")
    assert text.rstrip().endswith('LABEL "com.example.custom"="yes"')


def test_stages_split_the_layers(tmp_path):
    model = _model(tmp_path, MINIMAL)
    spec = load_spec(model)
    env = render_dockerfile(spec, _lock(model), ContextLayout(stage="env"))
    app = render_dockerfile(spec, _lock(model), ContextLayout(stage="app", env_image="mlbuild-cache/env:abc"))
    full = render_dockerfile(spec, _lock(model), ContextLayout())
    assert "COPY model-env/" in env and "COPY runtime/" not in env and "CMD" not in env
    assert "FROM mlbuild-cache/env:abc" in app and "COPY model-env/" not in app and "COPY runtime/" in app
    # Together they hold the same instructions as the single-stage file.
    steps = lambda t: [l for l in t.splitlines() if l and not l.startswith(("#", "FROM"))]  # noqa: E731
    assert steps(env) + steps(app) == steps(full)


def test_source_date_epoch_sets_created(tmp_path, monkeypatch):
    model = _model(tmp_path, MINIMAL)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert created_timestamp() == "2023-11-14T22:13:20Z"
    text = render_dockerfile(load_spec(model), _lock(model))
    assert '"org.opencontainers.image.created"="2023-11-14T22:13:20Z"' in text
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        render_dockerfile(load_spec(model), _lock(model))


def test_unknown_variable_in_model_template_is_a_config_error(tmp_path):
    model = _model(tmp_path, MINIMAL, {"Dockerfile.j2": '{% extends "Dockerfile.j2" %}\n{% block code %}RUN echo {{ no_such_thing }}\n{% endblock %}\n'})
    with pytest.raises(ConfigError) as info:
        render_dockerfile(load_spec(model), _lock(model))
    assert "Dockerfile.j2" in str(info.value) and "no_such_thing" in str(info.value)
    assert info.value.hint


def test_template_syntax_error_names_file_and_line(tmp_path):
    model = _model(tmp_path, MINIMAL, {"Dockerfile.j2": '{% extends "Dockerfile.j2" %}\n\n{% block code %}\nRUN x\n'})
    with pytest.raises(ConfigError) as info:
        render_dockerfile(load_spec(model), _lock(model))
    assert str(model / "Dockerfile.j2") in str(info.value)
    assert ":4:" in str(info.value) or ":5:" in str(info.value)


def test_newline_in_env_value_is_refused(tmp_path):
    model = _model(tmp_path, MINIMAL + '[env]\nBAD = "two\\nlines"\n')
    with pytest.raises(ConfigError) as info:  # (match= would also find "newline" in tmp_path)
        render_dockerfile(load_spec(model), _lock(model))
    assert "table [env]" in info.value.message and "'BAD'" in info.value.message
    assert "U+000A (a newline)" in info.value.message


def test_dockerfile_for_an_example(tmp_path):
    """What `mlbuild dockerfile` prints, for a real example whose lock is committed (no network)."""
    import shutil

    from mlbuild._backends.docker import dockerfile_for

    example = Path(__file__).resolve().parents[3] / "examples" / "iris-sklearn"
    model = tmp_path / "iris-sklearn"
    shutil.copytree(example, model)
    text = dockerfile_for(model, base_image="mlbuild-test/python:3.11-bookworm")
    lock_text = (model / "mlbuild.lock").read_bytes()
    import hashlib

    assert f'"io.mlbuild.lock-digest"="sha256:{hashlib.sha256(lock_text).hexdigest()}"' in text
    assert "FROM mlbuild-test/python:3.11-bookworm" in text and "COPY model/artifacts/" in text
    assert 'MLBUILD_ENTRYPOINT="predict:Model"' in text


def test_model_template_extending_a_missing_template_names_the_file(tmp_path):
    model = _model(tmp_path, MINIMAL, {"Dockerfile.j2": '{% extends "nope.j2" %}\n'})
    with pytest.raises(ConfigError) as info:
        render_dockerfile(load_spec(model), _lock(model))
    assert str(info.value).startswith(str(model / "Dockerfile.j2"))
    assert "'nope.j2'" in str(info.value) and "does not exist" in str(info.value)
    assert info.value.hint


def test_model_template_that_is_not_utf8_names_the_file_and_line(tmp_path):
    model = _model(tmp_path, MINIMAL)
    (model / "Dockerfile.j2").write_bytes(b'{% extends "Dockerfile.j2" %}\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        render_dockerfile(load_spec(model), _lock(model))
    assert str(info.value).startswith(f"{model / 'Dockerfile.j2'}:2: ")
    assert "UTF-8" in str(info.value) and "0xe9" in str(info.value)


@pytest.mark.parametrize("expression,words", [
    ("{{ 1 // 0 }}", ["ZeroDivisionError"]),  # a Python error raised while rendering
    ('{{ "x" | no_such_filter }}', ["no_such_filter"]),  # a TemplateAssertionError, at compile time
    ('{{ name.missing_method() }}', ["missing_method"]),  # UndefinedError from a call
    ('{% raise_error %}', ["raise_error"]),  # unknown tag: a syntax error
])
def test_model_template_runtime_errors_name_the_file_and_line(tmp_path, expression, words):
    template = '{% extends "Dockerfile.j2" %}\n{% block code %}\n' + expression + "\n{% endblock %}\n"
    model = _model(tmp_path, MINIMAL, {"Dockerfile.j2": template})
    with pytest.raises(ConfigError) as info:
        render_dockerfile(load_spec(model), _lock(model))
    assert str(info.value).startswith(f"{model / 'Dockerfile.j2'}:3: "), str(info.value)
    for word in words:
        assert word in str(info.value)
    assert info.value.hint


# --------------------------------------------------------------------------- no credential in a label

CI_TOKEN = "glcbt-SECRET123"


@pytest.mark.parametrize("env,expected", [
    # GitLab's CI_REPOSITORY_URL, as a pipeline would hand it over
    ({"MLBUILD_SOURCE_URL": f"https://gitlab-ci-token:{CI_TOKEN}@gitlab.invalid/grp/proj.git"},
     "https://gitlab.invalid/grp/proj.git"),
    ({"MLBUILD_SOURCE_URL": f"https://gitlab.invalid/grp/proj.git?private_token={CI_TOKEN}#readme"},
     "https://gitlab.invalid/grp/proj.git"),
    ({"MLBUILD_SOURCE_URL": f"https://user:p@ss{CI_TOKEN}@git.invalid:8443/grp/proj"}, "https://git.invalid:8443/grp/proj"),
    ({"GITHUB_SERVER_URL": f"https://x-access-token:{CI_TOKEN}@ghe.invalid", "GITHUB_REPOSITORY": "org/repo"},
     "https://ghe.invalid/org/repo"),
    ({"MLBUILD_SOURCE_URL": "https://git.invalid/grp/proj"}, "https://git.invalid/grp/proj"),
    ({"MLBUILD_SOURCE_URL": "git@git.invalid:grp/proj.git"}, "git@git.invalid:grp/proj.git"),  # scp form: a user name
])
def test_the_source_label_never_carries_credentials(tmp_path, monkeypatch, env, expected):
    from mlbuild._provenance import source as _source
    from mlbuild._templates import image_variables

    for name in ("MLBUILD_SOURCE_URL", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _source() == expected
    model = _model(tmp_path, MINIMAL)
    spec = load_spec(model)
    layout = ContextLayout(source=_source())
    text = render_dockerfile(spec, _lock(model), layout)  # the docker backend's labels
    assert CI_TOKEN not in text and f'"org.opencontainers.image.source"="{expected}"' in text
    labels = dict(image_variables(spec, _lock(model), layout)["labels"])  # the oci backend's labels
    assert labels["org.opencontainers.image.source"] == expected


@pytest.mark.parametrize("layout,where", [
    (ContextLayout(source=f"https://gitlab-ci-token:{CI_TOKEN}@gitlab.invalid/grp/proj.git"),
     "label 'org.opencontainers.image.source'"),
    (ContextLayout(source=f"https://gitlab.invalid/grp/proj.git?private_token={CI_TOKEN}"),
     "label 'org.opencontainers.image.source'"),
    (ContextLayout(revision=f"https://u:{CI_TOKEN}@h.invalid/"), "label 'org.opencontainers.image.revision'"),
])
def test_a_credential_handed_past_build_image_is_refused_for_both_backends(tmp_path, layout, where):
    # A library caller may fill BuildOptions/ContextLayout itself: the last guard holds for the
    # Dockerfile and for the oci backend's image config alike.
    from mlbuild._templates import image_variables

    model = _model(tmp_path, MINIMAL)
    spec = load_spec(model)
    for render in (render_dockerfile, image_variables):
        with pytest.raises(ConfigError) as info:
            render(spec, _lock(model), layout)
        assert info.value.message.startswith(f"{where}: the value holds a URL with credentials, ")
        assert CI_TOKEN not in info.value.render()


def test_mlbuild_dockerfile_takes_only_an_engine_base(tmp_path):
    """`mlbuild dockerfile` prints a Dockerfile: its FROM names an image the engine can have."""
    from mlbuild._backends.docker import dockerfile_for

    model = _model(tmp_path, MINIMAL)
    text = dockerfile_for(model, base_image="docker:mlbuild-test/python:3.11-bookworm")
    assert "FROM mlbuild-test/python:3.11-bookworm\n" in text and "docker:" not in text
    for base in ("./layout", "oci:/srv/layout", "docker-archive:base.tar"):
        with pytest.raises(ConfigError) as info:
            dockerfile_for(model, base_image=base)
        assert info.value.message.startswith(f"base image {base!r} is a local image layout or archive")
        assert "--backend oci" in info.value.hint
