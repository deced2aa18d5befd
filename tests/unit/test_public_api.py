"""The public API is a fixed list: adding or removing a name must be a deliberate change."""

import importlib

import mlbuild

EXPECTED = {
    "__version__",
    "lock",
    "build_image",
    "save",
    "load_spec",
    "ModelSpec",
    "SpecOverrides",
    "Lock",
    "LockedPackage",
    "ImageResult",
    "MlbuildError",
    "ConfigError",
    "EntrypointError",
    "SaveError",
    "LockError",
    "ResolutionError",
    "StaleLockError",
    "FetchError",
    "NoWheelError",
    "BuildError",
    "EngineUnavailableError",
    "RunError",
    "PublishError",
}


def test_all_does_not_drift():
    assert set(mlbuild.__all__) == EXPECTED
    assert len(mlbuild.__all__) == len(set(mlbuild.__all__))


def test_every_public_name_resolves():
    for name in mlbuild.__all__:
        assert getattr(mlbuild, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    try:
        mlbuild.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_save_error_is_a_config_error_with_its_exit_code():
    # mlbuild.save() is handed a bad object or target: the input is wrong, not the machine.
    assert issubclass(mlbuild.SaveError, mlbuild.ConfigError)
    assert mlbuild.SaveError("x").exit_code == mlbuild.ConfigError.exit_code == 2


def test_errors_share_one_root_and_have_distinct_exit_codes_per_branch():
    errors = importlib.import_module("mlbuild._errors")
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, mlbuild.MlbuildError)
    codes = {
        errors.ConfigError.exit_code,
        errors.LockError.exit_code,
        errors.FetchError.exit_code,
        errors.BuildError.exit_code,
        errors.EngineUnavailableError.exit_code,
        errors.RunError.exit_code,
        errors.PublishError.exit_code,
    }
    assert len(codes) == 7 and 0 not in codes and 1 not in codes


def test_importing_mlbuild_is_lazy():
    import subprocess
    import sys

    code = "import sys, mlbuild; print(','.join(m for m in ('docker', 'jinja2', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
