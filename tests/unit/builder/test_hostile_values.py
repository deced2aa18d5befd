"""Hostile values in every templated field: refused at load, or rendered so that they add nothing.

DESIGN.md, "Hostile input is the normal case": every value that reaches a template is validated
by full match against an allow-list and quoted for the place it lands; a corpus of hostile values
is rendered and the result parsed back, so no value can add an instruction.

For each (field, value) below, exactly one of:
  (a) ``load_spec`` raises a ConfigError whose first line stands alone and names the file and key;
  (b) the render succeeds, parsing it with a Dockerfile parser (dockerfile-parse) gives the same
      instruction list as the render with a benign value, and every ENV / LABEL value parses back
      to exactly the value mlbuild meant to bake (so a `$`, a quote or a backslash is data, never
      syntax).
The first tests pin the findings of issue 9, one each; they failed before the fix.
"""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from mlbuild._errors import ConfigError
from mlbuild._lock import Lock
from mlbuild._spec import ModelSpec, SpecOverrides, load_spec
from mlbuild._templates import ContextLayout, image_variables, render_dockerfile

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "projects"
DIGEST = "sha256:" + "ab" * 32
# Every separator Python's str.splitlines() breaks on (a parser written in Python may well use it).
LINE_SEPARATORS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _lock(model: Path) -> Lock:
    return Lock(path=model / "mlbuild.lock", python="3.11", platforms=("linux/amd64",), resolver="uv",
                requirements_sha256="0" * 64, packages=(), digest=DIGEST)


def _toml_string(value: str) -> str:
    """A TOML basic string holding exactly ``value`` (every non-printable-ASCII char escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(f"\\U{ord(ch):08X}")
    return '"' + "".join(out) + '"'


def _write_model(model: Path, config: str) -> Path:
    model.mkdir(exist_ok=True)
    (model / "predict.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    (model / "mlbuild.toml").write_text(config)
    return model


def _parse(text: str) -> DockerfileParser:
    # fileobj + no content cache: lines are split on b"\n" only, as Docker's own parser does.
    parser = DockerfileParser(fileobj=io.BytesIO(), env_replace=True)
    parser.content = text
    return parser


def _docker_dq(value: str) -> str:
    """dockerfile-parse keeps the backslash of ``\\\\`` and ``\\$`` inside double quotes, where
    Docker's shell lexer (moby/buildkit frontend/dockerfile/shell/lex.go, processDoubleQuote)
    drops it; finish its dequoting the way Docker does. ``\\"`` it already handles."""
    return re.sub(r"\\([\\$])", r"\1", value)


def _instructions(text: str) -> list[str]:
    return [step["instruction"] for step in _parse(text).structure]


def _check_render(spec: ModelSpec, benign_instructions: list[str]) -> None:
    lock = _lock(spec.directory)
    text = render_dockerfile(spec, lock, ContextLayout())
    # No line break but "\n" anywhere: every parser (Go's scanner, Python's splitlines) agrees.
    assert text.split("\n")[:-1] == text.splitlines(), "a line separator other than \\n was rendered"
    assert _instructions(text) == benign_instructions
    parsed = _parse(text)
    variables = image_variables(spec, lock, ContextLayout())
    assert {k: _docker_dq(v) for k, v in parsed.envs.items()} == dict(variables["env"])
    assert {k: _docker_dq(v) for k, v in parsed.labels.items()} == dict(variables["labels"])
    assert parsed.baseimage == variables["base_image"]


# --------------------------------------------------------------------------- the findings

def test_newline_in_system_packages_cannot_add_a_run_step():
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / "system-package-newline")
    first = info.value.message
    assert "\n" not in first
    assert "mlbuild.toml" in first and "'system_packages'" in first and "'bash\\n'" in first
    assert "Debian package" in first and info.value.hint


@pytest.mark.parametrize("key,value", [("name", "model\n"), ("version", "1.0\n"),
                                       ("name", "model\u2028"), ("version", "1.0\x85")])
def test_name_and_version_with_a_trailing_line_break_are_refused(tmp_path, key, value):
    model = _write_model(tmp_path / "m", f"{key} = {_toml_string(value)}\n")
    with pytest.raises(ConfigError) as info:
        load_spec(model)
    assert "\n" not in info.value.message
    assert f"mlbuild.toml: key '{key}': bad value {value!r}" in info.value.message
    assert info.value.hint
    with pytest.raises(ConfigError, match=f"override {key}="):
        load_spec(_write_model(tmp_path / "ok", ""), overrides=SpecOverrides(**{key: value}))


def test_version_with_trailing_newline_fixture():
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / "version-trailing-newline")
    assert "mlbuild.toml: key 'version': bad value '1.0.0\\n'" in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize("sep", ["\u2028", "\x85", "\v", "\f"], ids=["u2028", "x85", "vt", "ff"])
@pytest.mark.parametrize("table", ["env", "labels"])
def test_env_and_label_values_with_a_line_separator_are_refused(tmp_path, table, sep):
    key = "GREETING" if table == "env" else "com.example.note"
    value = f"hi{sep}RUN touch /pwned"
    model = _write_model(tmp_path / "m", f"[{table}]\n{_toml_string(key)} = {_toml_string(value)}\n")
    with pytest.raises(ConfigError) as info:
        load_spec(model)
    message = info.value.message
    assert "\n" not in message
    assert f"mlbuild.toml: table [{table}]" in message and repr(key) in message
    assert f"U+{ord(sep):04X}" in message
    assert info.value.hint


def test_env_value_line_separator_fixture():
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / "env-value-line-separator")
    assert "table [env]" in info.value.message and "U+2028" in info.value.message


def test_label_value_control_character_fixture():
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / "label-value-control-character")
    assert "table [labels]" in info.value.message and "U+0085" in info.value.message


def test_quote_filter_refuses_every_line_separator_even_past_the_spec(tmp_path):
    """The dq filter is the last guard: values mlbuild adds itself (a source URL from the CI's
    environment, a revision) never reach the spec validators."""
    spec = load_spec(_write_model(tmp_path / "m", 'name = "m"\npython = "3.11"\n'))
    for sep in LINE_SEPARATORS + ["\x00", "\t", "\x7f"]:
        with pytest.raises(ConfigError) as info:
            render_dockerfile(spec, _lock(spec.directory), ContextLayout(source=f"https://x.invalid/{sep}RUN id"))
        assert "org.opencontainers.image.source" in info.value.message
        assert "\n" not in info.value.message


@pytest.mark.parametrize("base", ["python:3.11${X:+$(id)}", "python:3.11`id`", "python:3.11$(id)",
                                  "python:3.11-slim\n", "python:3.11 AS x", "python:3.11\u2028RUN id"])
def test_hostile_base_image_is_refused_in_the_spec_and_as_an_override(tmp_path, base):
    model = _write_model(tmp_path / "m", f"base_image = {_toml_string(base)}\n")
    with pytest.raises(ConfigError) as info:
        load_spec(model)
    assert "mlbuild.toml: key 'base_image': bad value" in info.value.message
    assert "\n" not in info.value.message and info.value.hint
    ok = _write_model(tmp_path / "ok", "")
    with pytest.raises(ConfigError, match="override base_image="):
        load_spec(ok, overrides=SpecOverrides(base_image=base))


def test_base_image_command_substitution_fixture():
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / "base-image-command-substitution")
    assert "key 'base_image'" in info.value.message and "$(id)" in info.value.message


@pytest.mark.parametrize("base", ["python:3.11-slim", "mlbuild-test/python:3.11-bookworm",
                                  "127.0.0.1:5000/team/py:3.11@sha256:" + "0" * 64, "localhost/py",
                                  "oci:./layout:3.11", "docker-archive:/tmp/base.tar", "docker:python:3.11",
                                  "./base-layout", "/srv/images/base.tar"])
def test_valid_base_images_are_accepted(tmp_path, base):
    spec = load_spec(_write_model(tmp_path / "m", f"base_image = {_toml_string(base)}\n"))
    assert spec.base_image == base


# --------------------------------------------------------------------------- the corpus

def _corpus() -> list[str]:
    values = [
        "", " ", "x", "\t", "a\tb", "\x00", "a\x00b", "\x7f", "\x1b[31m", "\x9b",
        '"', 'a"b', '""', "'", "a'b", "\\", "a\\b", "a\\", "\\\\", '\\"', "\\$", "a\\\nRUN id",
        "$", "$HOME", "${HOME}", "$(id)", "`id`", "${VAR:+$(id)}", "${X:-`id`}", "$((1+1))", "${}",
        "a b", " leading", "trailing ", "#comment", "a # b", "a;id", "a&&id", "a|id", "a>x", "*", "?",
        "[a]", "../x", "/abs", "-", "--help", "-rf", "a=b", "a:b", "a@b", "=", ":",
        "RUN id", "\nRUN id", "\\\nRUN id", "x\n", "x \\",
        "café", "\u202e", "\ufeff", "\u200b", "\U0001f600", "\udc80",
        "x" * 300, "y" * 70000,
    ]
    values += [f"a{sep}b" for sep in LINE_SEPARATORS] + [f"x{sep}" for sep in LINE_SEPARATORS]
    values += ["\r\n", "a\r\nRUN id"]
    return values


CORPUS = _corpus()

# Each field: how to write it in mlbuild.toml, and a benign value the hostile ones are also
# appended to (a valid prefix is what defeats a `re.match(...$)`: "bash" + "\n" passed).
FIELDS = {
    "name": ("name = {}", "model"),
    "version": ("version = {}", "1.0.0"),
    "entrypoint": ("entrypoint = {}", "predict:Model"),
    "python": ("python = {}", "3.11"),
    "base_image": ("base_image = {}", "python:3.11-slim"),
    "system_packages": ("system_packages = [{}]", "libgomp1"),
    "port": ("port = {}", None),  # TOML gives strings for these values: a type error
    "env_key": ("[env]\n{} = \"v\"", "MY_VAR"),
    "env_value": ("[env]\nMY_VAR = {}", "value"),
    "label_key": ("[labels]\n{} = \"v\"", "com.example.key"),
    "label_value": ("[labels]\n\"com.example.key\" = {}", "value"),
    "include": ("include = [{}]", "artifacts/**"),
    "exclude": ("exclude = [{}]", "data/**"),
    "requirements": ("requirements = {}", "reqs.txt"),
}


def _config(field: str, value: str) -> str:
    pattern = FIELDS[field][0]
    head = "" if field == "python" else 'python = "3.11"\n'
    return head + pattern.format(_toml_string(value)) + "\n"


@pytest.fixture(scope="module")
def benign(tmp_path_factory) -> list[str]:
    model = _write_model(tmp_path_factory.mktemp("benign") / "model", 'python = "3.11"\n')
    return _instructions(render_dockerfile(load_spec(model), _lock(model), ContextLayout()))


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_hostile_value_is_refused_or_inert(tmp_path, field, benign):
    _pattern, prefix = FIELDS[field]
    values = CORPUS + ([prefix + v for v in CORPUS] if prefix else [])
    accepted, refused = [], []
    benign_for_field = benign
    if field == "system_packages":  # a package adds its one RUN step, hostile or not
        spec = load_spec(_write_model(tmp_path / "sp", _config(field, prefix)))
        benign_for_field = _instructions(render_dockerfile(spec, _lock(spec.directory), ContextLayout()))
    for i, value in enumerate(values):
        model = _write_model(tmp_path / f"m{i}", _config(field, value))
        if field == "requirements":
            try:  # give the path a file when the name can be one, so the path rule is what decides
                target = (model / value).resolve()
                if target.is_relative_to(tmp_path) and target != model:  # never outside the test's dir
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("")
            except (OSError, ValueError):
                pass
        try:
            spec = load_spec(model)
        except ConfigError as exc:
            assert "\n" not in exc.message, (field, value, exc.message)
            assert "mlbuild.toml" in exc.message, (field, value, exc.message)
            assert exc.hint, (field, value)
            refused.append(value)
            continue
        _check_render(spec, benign_for_field if spec.system_packages else benign)
        accepted.append(value)
    # The corpus is hostile through and through for templated fields: what may pass is listed.
    assert refused, field
    assert accepted or field == "port", f"{field}: not even the benign value was accepted"
    if field in ("env_value", "label_value"):  # quotes, `$`, backslashes, unicode: data, kept
        assert {'a"b', "a\\b", "$(id)", "`id`", "${VAR:+$(id)}", "café", "x" * 300} <= set(accepted)
    if field in ("name", "version", "python", "base_image", "system_packages", "entrypoint"):
        for value in accepted:
            assert re.fullmatch(r"[A-Za-z0-9._:/@+=-]*", value), (field, value)


def test_accepted_env_and_label_values_round_trip_exactly(tmp_path, benign):
    """The values that need quoting (quotes, backslashes, `$`, spaces, unicode) are accepted and
    come back byte for byte: refusing them would be the easy way out."""
    tricky = ['say "hi"', "back\\slash", "trail\\", "$HOME and ${X:+$(id)} and `id`", "a b  c", "café ☕",
              "'single'", "#not a comment", "=", "\\$", '\\"', "", "x" * 10000]
    env = "".join(f"V{i} = {_toml_string(v)}\n" for i, v in enumerate(tricky))
    labels = "".join(f'"l.{i}" = {_toml_string(v)}\n' for i, v in enumerate(tricky))
    model = _write_model(tmp_path / "m", f'python = "3.11"\n[env]\n{env}[labels]\n{labels}')
    spec = load_spec(model)
    text = render_dockerfile(spec, _lock(model), ContextLayout())
    parsed = _parse(text)
    assert _instructions(text) == benign
    for i, value in enumerate(tricky):
        assert _docker_dq(parsed.envs[f"V{i}"]) == value
        assert _docker_dq(parsed.labels[f"l.{i}"]) == value


def test_overlong_env_value_is_refused_with_its_limit(tmp_path):
    model = _write_model(tmp_path / "m", f"[env]\nBIG = {_toml_string('x' * 70000)}\n")
    with pytest.raises(ConfigError) as info:
        load_spec(model)
    assert "'BIG'" in info.value.message and "bytes" in info.value.message


def test_directly_built_spec_is_validated_too(tmp_path):
    """The API can build a ModelSpec without a config file: the same rules hold."""
    model = _write_model(tmp_path / "m", "")
    base = dict(directory=model, name="m", entrypoint="predict:Model", python="3.11")
    ModelSpec(**base)
    for bad in (dict(name="m\n"), dict(version="1\n"), dict(entrypoint="predict:Model\n"),
                dict(system_packages=("bash\n",)), dict(env=(("A\n", "v"),)), dict(env=(("A", "v\u2028"),)),
                dict(labels=(("k\n", "v"),)), dict(labels=(("k", "v\x0b"),)), dict(base_image="p:1\n"),
                dict(include=("a\nb",)), dict(port=True)):
        with pytest.raises(ValueError):
            ModelSpec(**{**base, **bad})


def test_render_does_not_turn_separators_into_newlines(tmp_path):
    """The render's own tidying once used str.splitlines(), which made a U+2028 in a value a real
    line break; a model template may print a spec value raw, so the tidy pass must not."""
    model = _write_model(tmp_path / "m", 'python = "3.11"\n')
    (model / "Dockerfile.j2").write_text(textwrap.dedent("""\
        {% extends "Dockerfile.j2" %}
        {% block code %}
        {{ super() }}
        # note: {{ marker }}
        {% endblock %}
        """))
    spec = load_spec(model)
    text = render_dockerfile(spec, _lock(model), ContextLayout(extra={"marker": "a\u2028RUN id"}))
    assert "# note: a\u2028RUN id\n" in text


@pytest.mark.parametrize("module", ["_spec", "_templates", "_scaffold", "_save/__init__", "_values", "_backends/docker"])
def test_value_rules_are_imported_by_public_name_only(module):
    """The rules every templated value passes live in mlbuild._values under public names; the
    modules that apply them never reach into another module's private names (which once left
    the render, init and save depending on _spec's internals)."""
    import ast

    import mlbuild

    path = Path(mlbuild.__file__).parent / f"{module}.py"
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.endswith("__")  # __version__ is public
    ]
    assert private == [], f"{module}.py imports private names: {private}"
