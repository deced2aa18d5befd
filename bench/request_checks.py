"""What the worker's hostile-input checks cost per request, against json.loads of the same body.

The worker scans every body for nesting depth (``deeper_than``) and for numbers that could
overflow to inf (``may_overflow``) before it decodes it. This prints, for typical 1 MB bodies
and a small one, the checks' time, json.loads' time and their ratio, measured in the same run
(target: checks <= 0.5x json.loads on 1 MB bodies). Standard library only; ~10 s.

    python bench/request_checks.py
"""

from __future__ import annotations

import json
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))
from mlbuild_runtime.worker.jsonscan import deeper_than, may_overflow  # noqa: E402


def bodies() -> dict[str, bytes]:
    rng = random.Random(1)
    return {
        "rows 1MB": json.dumps([[rng.random() for _ in range(20)] for _ in range(2600)]).encode(),
        "records 1MB": json.dumps([{"sepal_length": rng.random(), "species": 'setosa "x" \\', "petal": [1, 2]}
                                   for _ in range(12000)]).encode(),  # fmt: skip
        "small": b'{"x": [5.1, 3.5, 1.4, 0.2]}',
    }


def best(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def main() -> int:
    missed = 0
    print(f"{'body':<12} {'bytes':>9} {'checks':>11} {'json.loads':>11} {'ratio':>7}")
    for name, body in bodies().items():
        number = 3 if len(body) > 10_000 else 20_000
        # interleaved: the baseline and the checks see the same machine state
        decode = best(lambda b=body: json.loads(b), number)
        checks = best(lambda b=body: (deeper_than(b, 100), may_overflow(b)), number)
        decode = min(decode, best(lambda b=body: json.loads(b), number))
        ratio = checks / decode
        verdict = ""
        if len(body) > 10_000:
            verdict = "PASS" if ratio <= 0.5 else "MISS"
            missed += verdict == "MISS"
        print(f"{name:<12} {len(body):>9} {checks * 1e6:>9.1f}us {decode * 1e6:>9.1f}us {ratio:>6.2f}x {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
