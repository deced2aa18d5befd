"""Shared pieces of the benchmark scripts: the interpreter check, processes we start (and only
those are stopped), HTTP polling, memory of a process tree, targets and tables.

Standard library only, so that `python bench/<script>.py` can start and explain what is missing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REPO_VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def ensure_interpreter(modules: tuple[str, ...]) -> None:
    """Re-run this script under the repository's venv when the current Python lacks ``modules``
    (so `python bench/serve.py` works with any `python` on PATH); else exit with a clear line."""
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return
    # Compare prefixes, not resolved executables: a venv's python is a symlink to the base one.
    in_repo_venv = Path(sys.prefix).resolve() == REPO_VENV_PYTHON.parent.parent.resolve()
    if REPO_VENV_PYTHON.exists() and not in_repo_venv and not os.environ.get("BENCH_REEXEC"):
        os.environ["BENCH_REEXEC"] = "1"
        os.execv(str(REPO_VENV_PYTHON), [str(REPO_VENV_PYTHON), *sys.argv])
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}; run with the project venv "
             f"({REPO_VENV_PYTHON}) or install them")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def machine() -> dict[str, Any]:
    """What the figures were taken on, printed with every report."""
    load = os.getloadavg()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes we started ------------------------------------------------------------------------


@dataclass
class Proc:
    """A server we started in its own session: stop() ends exactly its process group."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)  # our own child's group (start_new_session)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start(name: str, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, port: int = 0) -> Proc:
    log = open(log_path, "wb")
    popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
    log.close()
    return Proc(name, popen, log_path, port)


def wait_ready(proc: Proc, url: str, timeout: float = 90.0) -> float:
    """Seconds until ``url`` answered 200; raises RuntimeError with the log tail otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before it was ready:\n"
                               f"{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} was not ready at {url} within {timeout:.0f} s:\n{proc.log_tail()}")


def post_json(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# -- memory ---------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _status_kb(pid: int, key: str, filename: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{filename}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS summed over ``pid`` and all its descendants (what the targets use), PSS beside it
    (shared pages counted once, so the fairer figure for several processes), in MiB."""
    pids = process_tree(pid)
    rss = sum(_status_kb(p, "VmRSS") for p in pids)
    pss = sum(_status_kb(p, "Pss", "smaps_rollup") for p in pids)
    return {"processes": len(pids), "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


# -- targets and output -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    value: float | None
    ok: bool | None  # None: could not be measured
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "value": self.value, "verdict": self.verdict,
                "detail": self.detail}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def targets_block(targets: list[dict[str, Any]]) -> str:
    """Targets as Target.as_dict() gives them (the same dicts the --json output holds)."""
    rows = [[t["verdict"], t["name"], t["goal"], t["value"], t["detail"]] for t in targets]
    return table(["verdict", "target", "goal", "measured", "detail"], rows)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def need_program(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"error: {name} not found on PATH; {hint}")
    return path


@dataclass
class Log:
    """Progress on stderr (stdout carries the report, or the JSON with --json)."""

    quiet: bool = False
    started: float = field(default_factory=time.monotonic)

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)
