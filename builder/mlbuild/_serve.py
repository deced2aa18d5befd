"""`mlbuild serve` and `mlbuild predict` on the host, without building an image.

The server always runs in mlbuild's own environment; the model worker runs in the current
interpreter, or (``isolated=True``) in a venv made from the model's mlbuild.lock and cached by
the lock's digest - the same separation an image has.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ._cache import venvs_cache
from ._errors import ConfigError, LockError, RunError
from ._runner import CommandFailed, Runner, SubprocessRunner, uv_binary

__all__ = ["serve", "predict_once", "isolated_python"]


def isolated_python(directory: Path, *, runner: Runner | None = None) -> str:
    """Python of a venv holding exactly the model's lock (made once per lock digest)."""
    from ._lock import ensure_lock
    from ._platforms import Platform
    from ._spec import load_spec

    runner = runner or SubprocessRunner()
    spec = load_spec(directory)
    host = Platform.host()
    lock = ensure_lock(spec, platforms=(str(host),), runner=runner)
    if str(host) not in lock.platforms:
        raise LockError(
            f"{lock.path}: locked for {', '.join(lock.platforms)}, not for this host ({host})",
            hint=f"run `mlbuild lock {directory} --platform {host}` to serve it here with --isolated",
        )
    key = f"{lock.digest.removeprefix('sha256:')[:24]}-py{spec.python}"
    venv = venvs_cache() / key
    python = venv / "bin" / "python"
    if python.exists():
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=venv.parent))
    try:
        uv = uv_binary()
        runner.run([uv, "venv", "--quiet", "--relocatable", "--python", spec.python, str(tmp)])
        runner.run([uv, "pip", "sync", "--quiet", "--python", str(tmp / "bin" / "python"), str(lock.path)])
        _publish(tmp, venv)
    except CommandFailed as exc:
        raise LockError(
            f"could not create the isolated environment for {directory} from {lock.path}",
            hint="check that the lock installs on this host (python version, platform)",
            details=exc.result.stderr.strip()[-3000:],
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(python)


def _publish(tmp: Path, venv: Path) -> None:
    """Rename the finished venv into place. When another process published the same key first
    (same lock digest: same content, and it may be running from it), keep theirs; the caller
    removes ``tmp``."""
    try:
        tmp.rename(venv)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (venv / "bin" / "python").exists():
            raise RunError(
                f"could not put the isolated environment in place at {venv}: {exc.strerror or exc}",
                hint=f"remove {venv} and try again",
            ) from None


def _server_argv(directory: Path, python: str, entrypoint: str, host, port, workers) -> list[str]:
    argv = [sys.executable, "-m", "mlbuild_runtime", "--model-dir", str(directory), "--python", python]
    argv += ["--entrypoint", entrypoint]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def serve(directory: Path, *, host=None, port=None, workers=None, isolated: bool = False) -> int:
    """Run the model server in the foreground until it exits; returns its exit code."""
    from ._spec import load_spec

    spec = load_spec(directory)  # fails early, with a clear message, on a bad model dir
    python = isolated_python(spec.directory) if isolated else sys.executable
    argv = _server_argv(spec.directory, python, spec.entrypoint, host, port, workers)
    env = {**os.environ, "MLBUILD_MODEL_NAME": spec.name, "MLBUILD_MODEL_VERSION": spec.version}
    lock_file = spec.directory / "mlbuild.lock"
    if lock_file.exists():
        import hashlib

        env["MLBUILD_LOCK_DIGEST"] = "sha256:" + hashlib.sha256(lock_file.read_bytes()).hexdigest()
    proc = subprocess.Popen(argv, env=env)
    # Pass SIGTERM/SIGINT on to the server so that it drains in-flight requests and exits 0
    # (an orchestrator or Ctrl-C stopping `mlbuild serve` means "stop the server gracefully").
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def predict_once(target: str, input_json: str, *, isolated: bool = False) -> str:
    """One prediction as JSON text: TARGET is a model directory (worker only, no HTTP) or an
    image reference (started, asked over HTTP, removed)."""
    try:
        json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="""quote it for the shell, e.g. --input '{"x": [1, 2]}'""",
        ) from None
    if Path(target).is_dir():
        return _predict_in_directory(Path(target), input_json.encode(), isolated=isolated)
    if _looks_like_a_path(target):
        raise ConfigError(
            f"no model directory at {target}",
            hint="give an existing model directory (with predict.py), or an image built by `mlbuild image DIR -t TAG`",
        )
    from ._run import predict_in_image

    output = predict_in_image(target, input_json)
    return output if isinstance(output, str) else json.dumps(output)


def _looks_like_a_path(target: str) -> bool:
    """TARGET meant as a model directory: ./m, ../m, /abs/m, m/, a file, or a name with a "/"
    that no image reference could be. Saying "no image ./m" would point the wrong way; an image
    name never starts with "." or "/", and registry/team/model:1 is still an image."""
    from ._oci.reference import DEFAULT_REGISTRY_ENV, parse_reference

    if target.startswith((".", "/", "~")) or target.endswith("/") or Path(target).exists():
        return True
    if "/" not in target:
        return False
    try:
        parse_reference(target, env={DEFAULT_REGISTRY_ENV: "localhost"})
    except ConfigError:
        return True
    return False


def _predict_in_directory(directory: Path, body: bytes, *, isolated: bool) -> str:
    from mlbuild_runtime.worker import protocol
    from mlbuild_runtime.worker.launch import worker_command, worker_env

    from ._spec import load_spec

    spec = load_spec(directory)
    python = isolated_python(spec.directory) if isolated else sys.executable
    proc = subprocess.Popen(
        worker_command(python),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=spec.directory,
        env=worker_env(dict(os.environ), str(spec.directory), spec.entrypoint),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        while True:  # HELLO, then READY (or FATAL)
            frame = protocol.read_frame(proc.stdout)
            if frame is None:
                raise RunError(f"the model worker for {directory} exited before it was ready (code {proc.wait()})")
            kind, _, payload = frame
            if kind == protocol.FATAL:
                info = json.loads(payload)
                raise RunError(
                    f"{directory}: {info.get('phase', 'start')} failed: {info.get('error_type')}: {info.get('message')}",
                    hint="the traceback is above (the worker's log)",
                )
            if kind == protocol.READY:
                break
        proc.stdin.write(protocol.encode(protocol.REQUEST, 1, body))
        proc.stdin.flush()
        frame = protocol.read_frame(proc.stdout)
        if frame is None:
            raise RunError(f"the model worker for {directory} died during predict (code {proc.wait()})")
        kind, _, payload = frame
        if kind == protocol.ERROR:
            info = json.loads(payload)
            if info.get("status") == 422:
                raise ConfigError(f"invalid input for {spec.entrypoint}: {json.dumps(info.get('detail'))}")
            raise RunError(f"predict raised {info.get('error_type')}: {info.get('message')}")
        return payload.decode()
    finally:
        try:
            proc.stdin.write(protocol.encode(protocol.SHUTDOWN, 0))
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
