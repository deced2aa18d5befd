"""Serving benchmark (issue 2): mlbuild's server against a plain FastAPI app, in one run.

For each model (a trivial echo model, the scikit-learn iris example) it starts, one after the
other on the same machine:

  baseline     plain FastAPI + uvicorn app calling the same predict in-process
               (bench/apps/baseline_fastapi.py; one uvicorn process, no access log)
  mlbuild-1w   python -m mlbuild_runtime --workers 1
  mlbuild-2w   python -m mlbuild_runtime --workers 2
  ceiling      constant-answer raw ASGI app on the same uvicorn (bench/apps/ceiling.py): the
               machine's HTTP ceiling

uvicorn runs with loop/http "auto" everywhere (uvloop/httptools when installed; the report says
which). Before any timing, every setup's /predict answer to the test input must equal the
baseline's. Then wrk (POST via bench/lua/post.lua): a warm-up, latency at concurrency 1
(-t1 -c1 --latency) and throughput at concurrency 16 (-t2 -c16). Memory: RSS (and PSS) summed
over the server process and all its descendants, read from /proc right after readiness.

Targets (per model; figures are never hard-coded, only measured in this run):
  p50 overhead of mlbuild-1w over baseline at c=1  <= 0.3 ms
  req/s at c=16: mlbuild-1w >= 0.8x baseline, mlbuild-2w > baseline
  RSS at start: mlbuild-1w <= 1.3x baseline

    python bench/serve.py [--json] [--duration 10] [--models trivial,iris] [--pin auto|on|off]

Exit status: 0 when every setup ran and answered correctly (MISS verdicts included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH,
    REPO,
    Log,
    Proc,
    Target,
    ensure_interpreter,
    free_port,
    machine,
    need_program,
    post_json,
    ratio,
    start,
    table,
    targets_block,
    tree_memory,
    wait_ready,
)

LUA = BENCH / "lua" / "post.lua"


@dataclass(frozen=True)
class Model:
    name: str
    directory: Path
    body: bytes  # the test input, also the wrk body


def models() -> dict[str, Model]:
    iris = REPO / "examples" / "iris-sklearn"
    if not (iris / "predict.py").exists():  # fallback: a bench-only copy (see bench/README.md)
        iris = BENCH / "models" / "iris"
    return {
        "trivial": Model("trivial", BENCH / "models" / "trivial",
                         b'{"text": "hello", "values": [1, 2, 3], "nested": {"ok": true}}'),
        "iris": Model("iris", iris, b"[5.1, 3.5, 1.4, 0.2]"),
    }


SETUPS = ("baseline", "mlbuild-1w", "mlbuild-2w", "ceiling")


def uvicorn_options(port: int) -> list[str]:
    # The same options the mlbuild server gives uvicorn (runtime server/cli.py): auto loop and
    # parser (uvloop/httptools when installed), no access log, no Server header.
    return ["--host", "127.0.0.1", "--port", str(port), "--loop", "auto", "--http", "auto",
            "--no-access-log", "--no-server-header", "--log-level", "warning"]


def setup_argv(setup: str, model: Model, port: int, model_python: str,
               extra: list[str] = ()) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    py = sys.executable
    if setup == "baseline":
        env["BENCH_MODEL_DIR"] = str(model.directory)
        return [py, "-m", "uvicorn", "baseline_fastapi:app", "--app-dir", str(BENCH / "apps"),
                *uvicorn_options(port)], env
    if setup == "ceiling":
        return [py, "-m", "uvicorn", "ceiling:app", "--app-dir", str(BENCH / "apps"), *uvicorn_options(port)], env
    workers = {"mlbuild-1w": 1, "mlbuild-2w": 2}[setup]
    # As shipped: the server's default logging (one JSON access line per request) stays on.
    return [py, "-m", "mlbuild_runtime", "--model-dir", str(model.directory), "--python", model_python,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--log-format", "json", *extra], env


# -- wrk ------------------------------------------------------------------------------------------


def run_wrk(url: str, body: bytes, *, threads: int, connections: int, seconds: float,
            prefix: list[str]) -> dict[str, Any]:
    argv = [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "-s", str(LUA), url]
    env = dict(os.environ, BENCH_BODY=body.decode())
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    raw = json.loads(line.split(" ", 1)[1])
    errors = raw["errors"]
    seconds_run = raw["duration_us"] / 1e6
    result = {
        "threads": threads,
        "connections": connections,
        "seconds": round(seconds_run, 2),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_run, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 4),
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
    }
    bad = sum(errors.values())
    if bad:
        raise RuntimeError(f"wrk saw {bad} errors ({errors}) against {url}")
    return result


# -- pinning ----------------------------------------------------------------------------------------


def cpu_plan(mode: str) -> tuple[list[str], list[str], str]:
    """taskset prefixes for (server, wrk) and a sentence saying what was done."""
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    if mode == "off" or (mode == "auto" and n < 4):
        why = "off" if mode == "off" else f"auto: only {n} CPUs, pinning would leave the 2-worker server one core"
        return [], [], f"no pinning ({why}); server and wrk share {n} CPUs"
    if n < 2:
        return [], [], "no pinning (1 CPU)"
    wrk_n = 2 if n >= 6 else 1
    server, client = cpus[:-wrk_n], cpus[-wrk_n:]
    fmt = lambda c: ",".join(map(str, c))  # noqa: E731
    return (["taskset", "-c", fmt(server)], ["taskset", "-c", fmt(client)],
            f"server pinned to CPUs {fmt(server)}, wrk to CPUs {fmt(client)} (taskset)")


# -- one setup --------------------------------------------------------------------------------------


def measure_setup(setup: str, model: Model, args, workdir: Path, server_prefix: list[str],
                  wrk_prefix: list[str], expected: Any, log: Log) -> dict[str, Any]:
    port = free_port()
    argv, env = setup_argv(setup, model, port, args.python, shlex.split(args.mlbuild_args))
    proc: Proc = start(f"{setup}[{model.name}]", [*server_prefix, *argv], env=env, cwd=REPO,
                       log_path=workdir / f"{model.name}-{setup}.log", port=port)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"argv": argv}
    try:
        out["ready_s"] = round(wait_ready(proc, base + "/health/ready"), 2)
        out["memory_start"] = tree_memory(proc.pid)
        if setup != "ceiling":
            answers = [post_json(base + "/predict", model.body) for _ in range(4)]  # 2w: both workers
            status, answer = answers[0]
            out["answer"] = answer
            if status != 200 or any(a != answers[0] for a in answers):
                raise RuntimeError(f"/predict answered {status} {answer!r} (or answers differed)")
            if expected is not None and answer != expected:
                raise RuntimeError(f"/predict answered {answer!r}, the baseline {expected!r}")
            out["answer_ok"] = True
        url = base + "/predict"
        log(f"{model.name}/{setup}: ready in {out['ready_s']} s, RSS {out['memory_start']['rss_mib']} MiB; "
            f"warm-up {args.warmup:g} s")
        run_wrk(url, model.body, threads=2, connections=16, seconds=args.warmup, prefix=wrk_prefix)
        out["c1"] = run_wrk(url, model.body, threads=1, connections=1, seconds=args.duration, prefix=wrk_prefix)
        out["c16"] = run_wrk(url, model.body, threads=2, connections=16, seconds=args.duration, prefix=wrk_prefix)
        out["memory_after"] = tree_memory(proc.pid)
        log(f"{model.name}/{setup}: p50 {out['c1']['p50_ms']:.3f} ms, p99 {out['c1']['p99_ms']:.3f} ms, "
            f"{out['c16']['rps']:.0f} req/s at c=16")
    except Exception as exc:  # noqa: BLE001 - one failed setup is reported, the run goes on
        out["error"] = str(exc)
        log(f"{model.name}/{setup}: FAILED: {exc}")
    finally:
        proc.stop()
    return out


def model_targets(r: dict[str, dict[str, Any]]) -> list[Target]:
    def get(setup: str, *keys: str) -> float | None:
        node: Any = r.get(setup, {})
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    targets = []
    b50, m50 = get("baseline", "c1", "p50_ms"), get("mlbuild-1w", "c1", "p50_ms")
    over = None if b50 is None or m50 is None else round(m50 - b50, 3)
    targets.append(Target("p50 overhead, 1 worker, c=1", "<= 0.3 ms", over,
                          None if over is None else over <= 0.3, f"{m50} vs {b50} ms"))
    brps = get("baseline", "c16", "rps")
    for setup, goal, test in (("mlbuild-1w", ">= 0.8x", lambda x: x >= 0.8),
                              ("mlbuild-2w", "> 1.0x", lambda x: x > 1.0)):
        x = ratio(get(setup, "c16", "rps"), brps)
        targets.append(Target(f"req/s {setup} / baseline, c=16", goal, None if x is None else round(x, 3),
                              None if x is None else test(x), f"{get(setup, 'c16', 'rps')} vs {brps}"))
    mem = ratio(get("mlbuild-1w", "memory_start", "rss_mib"), get("baseline", "memory_start", "rss_mib"))
    targets.append(Target("RSS at start mlbuild-1w / baseline", "<= 1.3x", None if mem is None else round(mem, 3),
                          None if mem is None else mem <= 1.3,
                          f"{get('mlbuild-1w', 'memory_start', 'rss_mib')} vs "
                          f"{get('baseline', 'memory_start', 'rss_mib')} MiB"))
    return targets


def report_text(result: dict[str, Any]) -> str:
    out = [f"mlbuild serving benchmark  {result['machine']['time_utc']}",
           f"machine: {result['machine']['cpus']} CPUs, load average at start "
           f"{result['machine']['loadavg_at_start']}, Python {result['machine']['python']}",
           f"uvicorn {result['config']['uvicorn']}, loop {result['config']['loop']}, http {result['config']['http']}; "
           f"{result['config']['pinning']}; mlbuild server flags: {result['config']['mlbuild_args'] or '(as shipped)'}",
           f"wrk: warm-up {result['config']['warmup_s']:g} s, then {result['config']['duration_s']:g} s at "
           f"-t1 -c1 (latency) and {result['config']['duration_s']:g} s at -t2 -c16 (throughput)", ""]
    for name, m in result["models"].items():
        setups = m["setups"]
        base = setups.get("baseline", {})
        rows = []
        for setup, r in setups.items():
            if "error" in r:
                rows.append([setup, "FAILED: " + r["error"].splitlines()[0][:90]] + [None] * 9)
                continue
            c1, c16, mem = r.get("c1", {}), r.get("c16", {}), r.get("memory_start", {})
            rows.append([setup, c1.get("p50_ms"), c1.get("p99_ms"), c16.get("rps"), c16.get("p99_ms"),
                         mem.get("rss_mib"), mem.get("pss_mib"), mem.get("processes"),
                         _r(c1.get("p50_ms"), base.get("c1", {}).get("p50_ms")),
                         _r(c16.get("rps"), base.get("c16", {}).get("rps")),
                         _r(mem.get("rss_mib"), base.get("memory_start", {}).get("rss_mib"))])
        out.append(f"model {name} ({m['directory']})")
        out.append(table(["setup", "p50 ms c1", "p99 ms c1", "req/s c16", "p99 ms c16", "RSS MiB",
                          "PSS MiB", "procs", "p50 x", "req/s x", "RSS x"], rows))
        out.append("  (x = ratio to baseline; RSS/PSS summed over the server and its children, after readiness)")
        out.append("")
        out.append(targets_block(m["targets"]))
        out.append("")
    verdicts = [t["verdict"] for m in result["models"].values() for t in m["targets"]]
    out.append(f"summary: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS, "
               f"{verdicts.count('n/a')} n/a; logs in {result['config']['logs']}")
    return "\n".join(out)


def _r(a, b) -> float | None:
    x = ratio(a, b)
    return None if x is None else round(x, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per setup (default 3)")
    parser.add_argument("--models", default="trivial,iris", help="comma list of: trivial, iris")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma list of: " + ", ".join(SETUPS))
    parser.add_argument("--pin", choices=("auto", "on", "off"), default="auto",
                        help="taskset the servers and wrk to separate CPUs (auto: only with >= 4 CPUs)")
    parser.add_argument("--python", default=sys.executable,
                        help="the model env's interpreter for mlbuild's workers (default: this one)")
    parser.add_argument("--mlbuild-args", default="",
                        help='extra flags for the mlbuild server, e.g. "--log-level warning" (default: none, as shipped)')
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs directory")
    args = parser.parse_args(argv)
    log = Log(quiet=False)
    need_program("wrk", "install it (Debian: apt-get install wrk)")
    catalogue = models()
    chosen = [catalogue[m.strip()] for m in args.models.split(",") if m.strip()]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s): {', '.join(unknown)}")
    server_prefix, wrk_prefix, pinning = cpu_plan(args.pin)
    if server_prefix:
        need_program("taskset", "install util-linux or use --pin off")

    from importlib.util import find_spec

    import uvicorn

    workdir = Path(tempfile.mkdtemp(prefix="mlbuild-bench-serve-"))
    result: dict[str, Any] = {
        "benchmark": "serve",
        "machine": machine(),
        "config": {
            "duration_s": args.duration, "warmup_s": args.warmup, "pinning": pinning,
            "uvicorn": uvicorn.__version__,
            "loop": "uvloop" if find_spec("uvloop") else "asyncio",
            "http": "httptools" if find_spec("httptools") else "h11",
            "model_python": args.python, "logs": str(workdir), "mlbuild_args": args.mlbuild_args,
        },
        "models": {},
    }
    log(f"{pinning}; logs in {workdir}")
    failed = False
    for model in chosen:
        runs: dict[str, dict[str, Any]] = {}
        expected = None
        for setup in setups:
            r = measure_setup(setup, model, args, workdir, server_prefix, wrk_prefix, expected, log)
            if setup == "baseline" and r.get("answer_ok"):
                expected = r["answer"]
            failed = failed or "error" in r
            runs[setup] = r
        result["models"][model.name] = {
            "directory": str(model.directory), "input": model.body.decode(), "setups": runs,
            "targets": [t.as_dict() for t in model_targets(runs)],
        }
    result["ok"] = not failed
    if not failed and not args.keep_logs:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        result["config"]["logs"] = "(removed; --keep-logs keeps them)"
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        print(report_text(result))
    return 1 if failed else 0


if __name__ == "__main__":
    ensure_interpreter(("fastapi", "uvicorn"))
    sys.exit(main())
