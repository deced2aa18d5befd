"""load_spec(): config sources, precedence, normalization, and one bad project per failure mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlbuild._errors import ConfigError, EntrypointError, LockError, StaleLockError
from mlbuild._lock import ensure_lock
from mlbuild._requirements import RequirementsSource
from mlbuild._spec import ModelSpec, SpecOverrides, load_spec
from pydantic import ValidationError

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "projects"
PREDICT = "def predict(x):\n    return x\n"


def make(tmp_path: Path, files: dict[str, str | bytes], name: str = "model") -> Path:
    root = tmp_path / name
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


# --------------------------------------------------------------------------- failure modes

# (fixture dir, error class, exit code, fragments the first line must contain)
FAILURES = [
    ("unknown-key", ConfigError, 2, ["mlbuild.toml", "'entrypiont'", "did you mean 'entrypoint'"]),
    ("pyproject-unknown-key", ConfigError, 2, ["pyproject.toml", "[tool.mlbuild]", "'prot'", "did you mean 'port'"]),
    ("bad-value-type", ConfigError, 2, ["mlbuild.toml", "'port'", "string '8080'", "integer from 1 to 65535"]),
    ("bad-port-range", ConfigError, 2, ["mlbuild.toml", "'port'", "70000"]),
    ("bad-python", ConfigError, 2, ["mlbuild.toml", "'python'", "'2.7'", "'3.11'"]),
    ("bad-env-name", ConfigError, 2, ["mlbuild.toml", "[env]", "'1BAD-NAME'"]),
    ("toml-syntax-error", ConfigError, 2, ["mlbuild.toml:3:", "TOML syntax error"]),
    ("missing-predict", EntrypointError, 2, ["predict.py not found"]),
    ("no-default-entrypoint", EntrypointError, 2, ["predict.py", "neither a class `Model` nor a function `predict`"]),
    ("predict-syntax-error", EntrypointError, 2, ["predict.py:4:", "syntax error"]),
    ("missing-entrypoint-attr", EntrypointError, 2, ["mlbuild.toml", "'entrypoint'", "'Modle'", "did you mean 'Model'"]),
    ("entrypoint-module-missing", EntrypointError, 2, ["mlbuild.toml", "'serve'", "serve.py"]),
    ("bad-entrypoint-format", EntrypointError, 2, ["mlbuild.toml", "'predict.Model'", "module:attr"]),
    ("unreadable-requirements", ConfigError, 2, ["requirements.txt:3:", "not valid UTF-8"]),
    ("invalid-requirement", ConfigError, 2, ["requirements.txt:4:", "numpy >=> 1"]),
    ("index-url-in-requirements", ConfigError, 2, ["requirements.txt:1:", "--extra-index-url"]),
    # Issue 9: values that once reached the Dockerfile as extra lines or shell syntax.
    ("system-package-newline", ConfigError, 2, ["mlbuild.toml", "'system_packages'", "'bash\\n'", "Debian package"]),
    ("version-trailing-newline", ConfigError, 2, ["mlbuild.toml", "'version'", "'1.0.0\\n'", "image tag"]),
    ("env-value-line-separator", ConfigError, 2, ["mlbuild.toml", "[env]", "'GREETING'", "U+2028 (LINE SEPARATOR)"]),
    ("label-value-control-character", ConfigError, 2, ["mlbuild.toml", "[labels]", "'com.example.note'", "U+0085"]),
    ("base-image-command-substitution", ConfigError, 2, ["mlbuild.toml", "'base_image'", "$(id)", "image reference"]),
    ("label-value-credential-url", ConfigError, 2, ["mlbuild.toml", "table [labels]", "'org.opencontainers.image.url'",
                                                    "https://****@gitlab.invalid/grp/proj.git"]),
    ("env-value-credential-url", ConfigError, 2, ["mlbuild.toml", "table [env]", "'WEIGHTS_URL'", "X-Amz-Signature=****"]),
]


@pytest.mark.parametrize("fixture,error,exit_code,fragments", FAILURES, ids=[f[0] for f in FAILURES])
def test_each_bad_project_gives_one_clear_error(fixture, error, exit_code, fragments):
    with pytest.raises(error) as info:
        load_spec(PROJECTS / fixture)
    exc = info.value
    assert type(exc) is error
    assert exc.exit_code == exit_code
    assert "\n" not in exc.message, "the first line must stand alone"
    for fragment in fragments:
        assert fragment in exc.message
    assert exc.hint, "every error says what to do"


@pytest.mark.parametrize("fixture", ["label-value-credential-url", "env-value-credential-url"])
def test_a_credential_url_in_env_or_labels_is_refused_masked(fixture):
    with pytest.raises(ConfigError) as info:
        load_spec(PROJECTS / fixture)
    rendered = info.value.render()
    assert "FIXTURE-TOKEN" not in rendered and "\n" not in info.value.message
    assert info.value.message.startswith(str(PROJECTS / fixture / "mlbuild.toml") + ": table [")
    assert info.value.message.endswith("refusing to bake it into the image")
    assert "docker run -e" in info.value.hint and "never in the image" in info.value.hint


@pytest.mark.parametrize("table,key", [("env", "SOURCE"), ("labels", "org.example.src")])
def test_a_credential_url_in_pyproject_env_or_labels_is_refused_too(tmp_path, table, key):
    (tmp_path / "predict.py").write_text("def predict(x):\n    return x\n")
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.mlbuild.{table}]\n"{key}" = "see https://h.invalid/x?private_token=s3cr3t for the data"\n')
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path)
    assert info.value.message.startswith(f"{tmp_path / 'pyproject.toml'} [tool.mlbuild]: table [{table}]: key {key!r}")
    assert "private_token=****" in info.value.message and "s3cr3t" not in info.value.render()


def test_env_and_labels_without_credentials_still_load(tmp_path):
    (tmp_path / "predict.py").write_text("def predict(x):\n    return x\n")
    (tmp_path / "mlbuild.toml").write_text(
        '[env]\nDATA = "https://h.invalid/d.csv#sha256=ab"\n'
        '[labels]\n"org.opencontainers.image.source" = "https://git.invalid/grp/proj"\n')
    spec = load_spec(tmp_path)
    assert dict(spec.env) == {"DATA": "https://h.invalid/d.csv#sha256=ab"}
    assert dict(spec.labels) == {"org.opencontainers.image.source": "https://git.invalid/grp/proj"}


def test_a_directly_built_spec_refuses_a_credential_url_in_env_or_labels(tmp_path):
    with pytest.raises(ValueError, match=r"'TOKEN_URL' holds a URL with credentials, https://\*\*\*\*@h.invalid/") as info:
        ModelSpec(directory=tmp_path, name="m", entrypoint="predict:predict",
                  env=(("TOKEN_URL", "https://u:s3cr3t@h.invalid/"),))
    assert "s3cr3t" not in str(info.value)  # pydantic's message does not quote the input either


def test_stale_lock_fixture_says_what_changed_and_how_to_refresh():
    spec = load_spec(PROJECTS / "stale-lock")
    with pytest.raises(StaleLockError) as info:
        ensure_lock(spec, write_if_missing=False)
    assert info.value.exit_code == 3
    assert "mlbuild.lock is stale" in info.value.message
    assert "requirements.txt changed" in info.value.message
    assert "numpy" in info.value.message  # requested but absent from the lock
    assert f"mlbuild lock {spec.directory}" in info.value.hint


def test_bad_lock_header_fixture_names_file_and_line():
    spec = load_spec(PROJECTS / "bad-lock-header")
    with pytest.raises(LockError) as info:
        ensure_lock(spec, write_if_missing=False)
    assert info.value.exit_code == 3
    assert "mlbuild.lock:" in info.value.message and "'# python: ...'" in info.value.message


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_spec(tmp_path / "file")


# --------------------------------------------------------------------------- good inputs

def test_defaults_from_a_bare_directory(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT}, name="My Model_v2!")
    spec = load_spec(root)
    assert spec.directory == root.resolve() and spec.directory.is_absolute()
    assert spec.config_file is None
    assert spec.name == "my-model_v2"
    assert spec.version == "0.1.0"
    assert spec.entrypoint == "predict:predict"
    assert spec.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert spec.requirements == RequirementsSource(kind="none")
    assert spec.base_image is None
    assert spec.resolved_base_image == f"python:{spec.python}-slim"
    assert spec.port == 8080
    assert spec.lock_path == spec.directory / "mlbuild.lock"


def test_class_model_wins_the_default_entrypoint(tmp_path):
    root = make(tmp_path, {"predict.py": "def predict(x):\n    return x\n\nclass Model:\n    def predict(self, x):\n        return x\n"})
    assert load_spec(root).entrypoint == "predict:Model"


def test_full_mlbuild_toml(tmp_path):
    root = make(tmp_path, {
        "serve/app.py": "import os\nif os.name:\n    from json import loads as handler\n",
        "serve/__init__.py": "",
        "requirements.txt": "six\n",
        "mlbuild.toml": """
name = "acme/iris"
version = "2024.1"
entrypoint = "serve.app:handler"
python = "3.12"
base_image = "mlbuild-test/python:3.11-bookworm"
system_packages = ["libgomp1", "curl"]
port = 9000
include = ["venv/keep.txt"]
exclude = ["data/**"]
[env]
ZED = "1"
ALPHA = "2"
[labels]
"org.opencontainers.image.source" = "https://example.invalid/repo"
""",
    })
    spec = load_spec(root)
    assert spec.config_file == root / "mlbuild.toml"
    assert spec.name == "acme/iris" and spec.version == "2024.1"
    assert spec.entrypoint == "serve.app:handler"
    assert spec.python == "3.12"
    assert spec.resolved_base_image == "mlbuild-test/python:3.11-bookworm"
    assert spec.system_packages == ("curl", "libgomp1")
    assert spec.env == (("ALPHA", "2"), ("ZED", "1"))
    assert spec.labels == (("org.opencontainers.image.source", "https://example.invalid/repo"),)
    assert spec.include == ("venv/keep.txt",) and spec.exclude == ("data/**",)
    assert spec.port == 9000


def test_pyproject_tool_table_and_dependencies(tmp_path):
    root = make(tmp_path, {
        "predict.py": PREDICT,
        "pyproject.toml": """
[project]
name = "demo"
version = "0.1.0"
dependencies = ["Numpy >= 1.26", "six", "six"]
[tool.mlbuild]
name = "demo-model"
port = 8081
""",
    })
    spec = load_spec(root)
    assert spec.config_file == root / "pyproject.toml"
    assert spec.name == "demo-model" and spec.port == 8081
    assert spec.requirements.kind == "pyproject"
    assert spec.requirements.path == root / "pyproject.toml"
    assert spec.requirements.requirements == ("Numpy>=1.26", "six")


def test_pyproject_without_tool_table_gives_dependencies_only(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT,
                           "pyproject.toml": '[project]\nname="x"\nversion="1"\ndependencies=["six"]\n'})
    spec = load_spec(root)
    assert spec.config_file is None
    assert spec.requirements.kind == "pyproject" and spec.requirements.requirements == ("six",)


def test_requirements_txt_beats_pyproject_dependencies(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "requirements.txt": "numpy\n",
                           "pyproject.toml": '[project]\nname="x"\nversion="1"\ndependencies=["six"]\n'})
    assert load_spec(root).requirements.requirements == ("numpy",)


def test_mlbuild_toml_beats_tool_mlbuild(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": 'name = "from-toml"\n',
                           "pyproject.toml": '[tool.mlbuild]\nname = "from-pyproject"\n'})
    spec = load_spec(root)
    assert spec.name == "from-toml" and spec.config_file == root / "mlbuild.toml"


def test_requirements_are_normalized_sorted_and_followed(tmp_path):
    root = make(tmp_path, {
        "predict.py": PREDICT,
        "requirements.txt": "# top comment\n\nsix==1.17.0   # pinned\nnumpy >= 1.26 ,<3\n"
                            "-r extra/more.txt\npandas \\\n  >=2\nsix==1.17.0\n",
        "extra/more.txt": "requests[socks]>=2 ; python_version >= '3.8'\n",
    })
    reqs = load_spec(root).requirements
    assert reqs.kind == "requirements.txt"
    assert reqs.requirements == (
        "numpy<3,>=1.26",
        "pandas>=2",
        'requests[socks]>=2; python_version >= "3.8"',
        "six==1.17.0",
    )
    # Reordering / reformatting the file does not change the digest the lock records.
    other = make(tmp_path, {"predict.py": PREDICT,
                            "requirements.txt": "pandas>=2\nsix == 1.17.0\nnumpy>=1.26,<3\n"
                                                "requests[socks]>=2;python_version>='3.8'\n"}, name="other")
    assert load_spec(other).requirements.sha256 == reqs.sha256
    changed = make(tmp_path, {"predict.py": PREDICT, "requirements.txt": "pandas>=2\n"}, name="changed")
    assert load_spec(changed).requirements.sha256 != reqs.sha256


def test_requirements_key_points_at_another_file(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "reqs/prod.txt": "six\n",
                           "mlbuild.toml": 'requirements = "reqs/prod.txt"\n'})
    spec = load_spec(root)
    assert spec.requirements.path == root / "reqs" / "prod.txt"
    assert spec.requirements.requirements == ("six",)
    bad = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": 'requirements = "nope.txt"\n'}, name="bad")
    with pytest.raises(ConfigError, match=r"mlbuild.toml: requirements file 'nope.txt' not found"):
        load_spec(bad)


def test_unreadable_requirements_file(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT})
    (root / "requirements.txt").mkdir()  # reading a directory fails like an unreadable file
    with pytest.raises(ConfigError, match="cannot read requirements file .*requirements.txt"):
        load_spec(root)


def test_precedence_override_beats_config_beats_default(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT,
                           "mlbuild.toml": 'name = "cfg"\nversion = "1.0"\npython = "3.12"\n'})
    spec = load_spec(root)
    assert (spec.name, spec.version, spec.python) == ("cfg", "1.0", "3.12")
    spec = load_spec(root, overrides=SpecOverrides(python="3.10", name="cli", base_image="img:1"))
    assert (spec.name, spec.version, spec.python, spec.base_image) == ("cli", "1.0", "3.10", "img:1")
    with pytest.raises(ConfigError, match=r"override python='2\.7'"):
        load_spec(root, overrides=SpecOverrides(python="2.7"))


def test_bad_name_is_reported_against_the_config(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": 'name = "Bad Name"\n'})
    with pytest.raises(ConfigError, match=r"mlbuild.toml: key 'name': bad value 'Bad Name'"):
        load_spec(root)


def test_list_item_of_wrong_type_names_the_key(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": 'system_packages = ["curl", 3]\n'})
    with pytest.raises(ConfigError) as info:
        load_spec(root)
    assert "'system_packages'[1]" in info.value.message
    assert "Debian package names" in info.value.message


def test_spec_is_frozen_and_forbids_extra_fields(tmp_path):
    spec = load_spec(make(tmp_path, {"predict.py": PREDICT}))
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ModelSpec(directory=spec.directory, name="x", entrypoint="predict:predict", colour="red")
    with pytest.raises(ValidationError):
        ModelSpec(directory=Path("relative"), name="x", entrypoint="predict:predict")


def test_toml_error_at_end_of_file_names_the_last_line(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": 'name = "x"\nport = 1\nversion'})
    with pytest.raises(ConfigError, match=r"mlbuild.toml:3: TOML syntax error: .*\(at end of file\)"):
        load_spec(root)


@pytest.mark.parametrize("pyproject,key,got", [
    ('tool = "mlbuild"\n', "'tool'", "string 'mlbuild'"),
    ('project = "dependencies"\n', "'project'", "string 'dependencies'"),
    ("tool = [1, 2]\n", "'tool'", "array [1, 2]"),
    ("[tool]\nmlbuild = 3\n", "'tool.mlbuild'", "integer 3"),
])
def test_pyproject_tables_of_the_wrong_type_name_file_and_key(tmp_path, pyproject, key, got):
    root = make(tmp_path, {"predict.py": PREDICT, "pyproject.toml": pyproject})
    with pytest.raises(ConfigError) as info:
        load_spec(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'pyproject.toml'}: bad value for {key}: got {got}; expected a table")
    assert info.value.hint


def test_requirements_key_naming_a_pyproject_whose_project_is_not_a_table(tmp_path):
    root = make(tmp_path, {
        "predict.py": PREDICT, "mlbuild.toml": 'requirements = "deps/pyproject.toml"\n',
        "deps/pyproject.toml": 'project = "x"\n',
    })
    with pytest.raises(ConfigError, match=r"deps/pyproject.toml: bad value for 'project'"):
        load_spec(root)


@pytest.mark.parametrize("package", ["libgomp1", "g++", "libstdc++6", "python3.11", "libc6:amd64",
                                     "curl=7.88.1-10+deb12u5", "tzdata=2024a-0+deb12u1", "libfoo=1:2.0~rc1",
                                     "libgomp1/bookworm-backports", "libc6:arm64=2.36-9"])
def test_system_packages_take_what_apt_get_install_takes(tmp_path, package):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": f'system_packages = ["{package}"]\n'})
    assert load_spec(root).system_packages == (package,)


@pytest.mark.parametrize("package", ["a", "-rf", "--reinstall", "libgomp1-", "curl=7.88-", "Curl", "curl=",
                                     "curl=abc", "curl;id", "curl id", "curl$(id)", "curl\\n", "curl:", "curl/",
                                     "curl*", "?garbage", "~nfoo", "curl=1\\n", "x" * 201])
def test_system_packages_refuse_what_apt_get_would_read_as_more(tmp_path, package):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": f'system_packages = ["{package}"]\n'})
    with pytest.raises(ConfigError) as info:
        load_spec(root)
    assert "key 'system_packages'" in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("value,words", [
    ("/etc/requirements.txt", "relative"), ("~/reqs.txt", "relative"), ("-r.txt", "relative"),
    (" reqs.txt", "spaces"), ("reqs\\n.txt", "U+000A"), ("", "empty"),
])
def test_requirements_path_must_be_a_plain_relative_path(tmp_path, value, words):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": f'requirements = "{value}"\n'})
    with pytest.raises(ConfigError) as info:
        load_spec(root)
    assert "mlbuild.toml: key 'requirements': bad value" in info.value.message
    assert words in info.value.message and "\n" not in info.value.message


def test_requirements_path_too_long_for_the_file_system_is_a_config_error(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": f'requirements = "{"r" * 300}.txt"\n'})
    with pytest.raises(ConfigError, match="key 'requirements'"):
        load_spec(root)


@pytest.mark.parametrize("value", ["predict:Model\\n", " predict:Model", "predict:Mod\\u00e9l", "predict:Model;id"])
def test_entrypoint_with_characters_outside_its_grammar_is_refused(tmp_path, value):
    from mlbuild._errors import EntrypointError

    root = make(tmp_path, {"predict.py": "class Model:\n    def predict(self, x):\n        return x\n",
                           "mlbuild.toml": f'entrypoint = "{value}"\n'})
    with pytest.raises(EntrypointError) as info:
        load_spec(root)
    assert "mlbuild.toml: key 'entrypoint': bad value" in info.value.message and "module:attr" in info.value.message


def test_port_must_be_an_integer_not_a_boolean(tmp_path):
    root = make(tmp_path, {"predict.py": PREDICT, "mlbuild.toml": "port = true\n"})
    with pytest.raises(ConfigError, match="'port'"):
        load_spec(root)
    with pytest.raises(ValidationError):
        ModelSpec(directory=root, name="m", entrypoint="predict:predict", port=True)


@pytest.mark.parametrize("raw", ["My..Model", "a" * 127 + "-b" * 10, "___", "Ünïcode Name", "x" * 300])
def test_generated_names_are_names_the_spec_accepts(tmp_path, raw):
    """The directory-derived default name and `mlbuild init --name` share one sanitizer."""
    from mlbuild._scaffold import scaffold

    target = tmp_path / "model"
    scaffold(target, name=raw)
    spec = load_spec(target)
    assert spec.name and len(spec.name) <= 128
    assert load_spec(make(tmp_path, {"predict.py": PREDICT}, name=raw[:200])).name
