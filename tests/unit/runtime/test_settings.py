"""Settings: one precedence chain (flag > MLBUILD_* env > default) and one-line errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlbuild_runtime.server import Settings, SettingsError


def read(argv=(), **env):
    return Settings.from_sources(list(argv), env)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = read()
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 8080, 1)
    assert (s.predict_timeout, s.max_body_size, s.grace_period) == (60.0, 10 * 1024 * 1024, 30.0)
    assert s.log_format == "auto" and s.log_level == "info"
    assert s.model_dir == tmp_path.resolve()
    assert s.python == sys.executable
    assert s.model_name == tmp_path.name
    assert s.entrypoint is s.model_version is s.lock_digest is s.predict_route is None


def test_flag_beats_env_beats_default(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    env = {"MLBUILD_PORT": "9000", "MLBUILD_WORKERS": "3", "MLBUILD_MODEL_DIR": str(tmp_path)}
    s = read(["--port", "9100", "--model-dir", str(other)], **env)
    assert s.port == 9100  # flag wins
    assert s.workers == 3  # env over default
    assert s.model_dir == other.resolve()
    assert s.model_name == "other"


def test_every_field_reads_its_env_var(tmp_path):
    env = {
        "MLBUILD_HOST": "127.0.0.1", "MLBUILD_PORT": "1234", "MLBUILD_WORKERS": "2",
        "MLBUILD_PREDICT_TIMEOUT": "2.5", "MLBUILD_MAX_BODY_SIZE": "1MiB", "MLBUILD_LOG_FORMAT": "TEXT",
        "MLBUILD_LOG_LEVEL": "debug", "MLBUILD_GRACE_PERIOD": "0", "MLBUILD_MODEL_DIR": str(tmp_path),
        "MLBUILD_PYTHON": sys.executable, "MLBUILD_ENTRYPOINT": "predict:Model",
        "MLBUILD_MODEL_NAME": "iris", "MLBUILD_MODEL_VERSION": "1.0", "MLBUILD_LOCK_DIGEST": "sha256:" + "0" * 64,
        "AIP_PREDICT_ROUTE": "/v1/predict", "AIP_HEALTH_ROUTE": "/v1/health",
    }  # fmt: skip
    s = read(**env)
    assert s == Settings(
        model_dir=tmp_path.resolve(), python=sys.executable, host="127.0.0.1", port=1234, workers=2,
        predict_timeout=2.5, max_body_size=1 << 20, log_format="text", log_level="debug", grace_period=0.0,
        entrypoint="predict:Model", model_name="iris", model_version="1.0", lock_digest="sha256:" + "0" * 64,
        predict_route="/v1/predict", health_route="/v1/health",
    )  # fmt: skip


def test_vertex_port_is_a_fallback_below_mlbuild_port(tmp_path):
    assert read(["--model-dir", str(tmp_path)], AIP_HTTP_PORT="7080").port == 7080
    assert read(["--model-dir", str(tmp_path)], AIP_HTTP_PORT="7080", MLBUILD_PORT="7081").port == 7081


def test_empty_env_counts_as_unset(tmp_path):
    assert read(["--model-dir", str(tmp_path)], MLBUILD_PORT="", MLBUILD_ENTRYPOINT="").port == 8080


@pytest.mark.parametrize(
    ("raw", "size"),
    [("1024", 1024), ("512KiB", 512 << 10), ("10MiB", 10 << 20), ("5MB", 5_000_000), ("64k", 65536), ("1023MiB", 1023 << 20)],
)
def test_body_size_units(tmp_path, raw, size):
    assert read(["--model-dir", str(tmp_path), "--max-body-size", raw]).max_body_size == size


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "http"], {}, "--port='http': must be a whole number"),
        (["--port", "70000"], {}, "--port='70000': must be between 1 and 65535"),
        ([], {"MLBUILD_PORT": "-1"}, "MLBUILD_PORT='-1': must be between 1 and 65535"),
        ([], {"AIP_HTTP_PORT": "x"}, "AIP_HTTP_PORT='x': must be a whole number"),
        ([], {"MLBUILD_WORKERS": "0"}, "MLBUILD_WORKERS='0': must be between 1 and 256"),
        (["--predict-timeout", "0"], {}, "--predict-timeout='0': must be greater than 0"),
        (["--predict-timeout", "nan"], {}, "--predict-timeout='nan': must be a finite number of seconds"),
        (["--grace-period", "-1"], {}, "--grace-period='-1': must not be negative"),
        (["--max-body-size", "10 parsecs"], {}, "--max-body-size='10 parsecs': must be a byte count"),
        (["--max-body-size", "2GiB"], {}, "--max-body-size='2GiB': must be at most 1073741815 bytes"),
        (["--max-body-size", "1GiB"], {}, "--max-body-size='1GiB': must be at most 1073741815 bytes"),
        (["--log-format", "xml"], {}, "--log-format='xml': must be one of json, text, auto"),
        ([], {"MLBUILD_MODEL_DIR": "/no/such/dir"}, "MLBUILD_MODEL_DIR='/no/such/dir': no such directory"),
        (["--python", "/no/python"], {}, "--python='/no/python': no such file"),
        (["--python", "no-such-python-xyz"], {}, "--python='no-such-python-xyz': not found on PATH"),
        (["--entrypoint", "predict:Model:x"], {}, "--entrypoint='predict:Model:x': must look like module:attr"),
        ([], {"MLBUILD_LOCK_DIGEST": "md5:x"}, "MLBUILD_LOCK_DIGEST='md5:x': must be sha256:"),
        ([], {"AIP_PREDICT_ROUTE": "predict"}, "AIP_PREDICT_ROUTE='predict': must be a URL path"),
    ],
)
def test_bad_values_name_their_source(tmp_path, argv, env, message):
    with pytest.raises(SettingsError) as info:
        read(["--model-dir", str(tmp_path), *argv] if "MLBUILD_MODEL_DIR" not in env else argv, **env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_model_dir_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(SettingsError, match="--model-dir=.*: is not a directory"):
        read(["--model-dir", str(f)])


def test_python_path_keeps_venv_symlink(tmp_path):
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    assert read(["--model-dir", str(tmp_path), "--python", str(link)]).python == str(link)


def test_log_format_auto_follows_the_tty(tmp_path):
    s = read(["--model-dir", str(tmp_path)])

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert s.resolved_log_format(io.StringIO()) == "json"
    assert s.resolved_log_format(Tty()) == "text"
    assert read(["--model-dir", str(tmp_path), "--log-format", "json"]).resolved_log_format(Tty()) == "json"


def test_cli_bad_value_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "MLBUILD_WORKERS": "many"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlbuild_runtime", "--model-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: MLBUILD_WORKERS='many': must be a whole number\n"


def test_settings_are_frozen(tmp_path):
    s = read(["--model-dir", str(tmp_path)])
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert isinstance(s.model_dir, Path)


def test_access_log_setting_precedence_and_choices(tmp_path):
    from mlbuild_runtime.server._settings import Settings, SettingsError

    base = ["--model-dir", str(tmp_path)]
    assert Settings.from_sources(base, environ={}).access_log == "errors"
    assert Settings.from_sources(base, environ={"MLBUILD_ACCESS_LOG": "all"}).access_log == "all"
    assert Settings.from_sources([*base, "--access-log", "off"], environ={"MLBUILD_ACCESS_LOG": "all"}).access_log == "off"
    with pytest.raises(SettingsError) as info:
        Settings.from_sources(base, environ={"MLBUILD_ACCESS_LOG": "verbose"})
    assert "MLBUILD_ACCESS_LOG" in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model-name", "iris\u2028forged log line"],
        ["--model-version", "1.0\x85x"],
        ["--model-version", "1.0\rx"],
        ["--entrypoint", "predict:Mödel"],
        ["--max-body-size", "١٠"],  # Arabic-Indic digits: \d would take them
    ],
)
def test_values_are_matched_whole_and_ascii(tmp_path, argv):
    with pytest.raises(SettingsError) as info:
        read(argv, MLBUILD_MODEL_DIR=str(tmp_path))
    assert argv[0] in str(info.value)


def test_hostile_input_limit_defaults_and_env(tmp_path):
    s = read(MLBUILD_MODEL_DIR=str(tmp_path))
    assert (s.max_json_depth, s.max_response_size, s.max_header_size) == (100, 40 << 20, 32 << 10)
    assert (s.max_header_count, s.max_connections) == (100, 512)
    assert (s.header_timeout, s.body_timeout, s.keepalive_timeout) == (60.0, 60.0, 75.0)
    s = read(
        MLBUILD_MODEL_DIR=str(tmp_path), MLBUILD_MAX_JSON_DEPTH="20", MLBUILD_MAX_HEADER_SIZE="8KiB",
        MLBUILD_HEADER_TIMEOUT="2", MLBUILD_MAX_CONNECTIONS="5",
    )
    assert (s.max_json_depth, s.max_header_size, s.header_timeout, s.max_connections) == (20, 8192, 2.0, 5)
    with pytest.raises(SettingsError, match="MLBUILD_MAX_JSON_DEPTH"):
        read(MLBUILD_MODEL_DIR=str(tmp_path), MLBUILD_MAX_JSON_DEPTH="5000")


def test_send_timeout_and_body_budget_defaults_precedence_and_errors(tmp_path):
    base = ["--model-dir", str(tmp_path)]
    s = read(base)
    assert (s.send_timeout, s.max_body_bytes_in_flight) == (60.0, 64 << 20)  # nginx send_timeout; 64 MiB
    s = read(base, MLBUILD_SEND_TIMEOUT="5", MLBUILD_MAX_BODY_BYTES_IN_FLIGHT="256MiB")
    assert (s.send_timeout, s.max_body_bytes_in_flight) == (5.0, 256 << 20)
    s = read([*base, "--send-timeout", "7", "--max-body-bytes-in-flight", "32MiB"],
             MLBUILD_SEND_TIMEOUT="5", MLBUILD_MAX_BODY_BYTES_IN_FLIGHT="256MiB")  # fmt: skip
    assert (s.send_timeout, s.max_body_bytes_in_flight) == (7.0, 32 << 20)
    with pytest.raises(SettingsError, match=r"^MLBUILD_SEND_TIMEOUT='0': must be greater than 0"):
        read(base, MLBUILD_SEND_TIMEOUT="0")
    with pytest.raises(SettingsError, match=r"^--max-body-bytes-in-flight='lots': must be a byte count"):
        read([*base, "--max-body-bytes-in-flight", "lots"])


def test_the_body_budget_must_hold_one_body_of_the_largest_size(tmp_path):
    base = ["--model-dir", str(tmp_path)]
    # unset, it follows a body limit raised past 64 MiB
    assert read([*base, "--max-body-size", "100MiB"]).max_body_bytes_in_flight == 100 << 20
    assert read([*base, "--max-body-size", "1MiB"]).max_body_bytes_in_flight == 64 << 20
    # set below the body limit: one line naming both
    with pytest.raises(SettingsError) as info:
        read([*base, "--max-body-size", "20MiB"], MLBUILD_MAX_BODY_BYTES_IN_FLIGHT="16MiB")
    message = str(info.value)
    assert message.startswith("MLBUILD_MAX_BODY_BYTES_IN_FLIGHT='16MiB': must be at least the body limit")
    assert "--max-body-size='20MiB'" in message and "\n" not in message
    with pytest.raises(SettingsError, match="the default MLBUILD_MAX_BODY_SIZE=10485760"):
        read([*base, "--max-body-bytes-in-flight", "1MiB"])
    assert read([*base, "--max-body-bytes-in-flight", "10MiB"]).max_body_bytes_in_flight == 10 << 20
