"""No timing loop outside the timing engine (issue 27): every timed call goes through runtime/timing.py (and the
latency protocols built on it, runtime/latency.py and runtime/latency_paired.py), so each is timed one way and
under the machine's compute lock.

The rule, mechanically: inside a `for` / `while` loop of a module outside the engine, a clock reading
(`time.perf_counter()`, `time.time()`, `time.monotonic()`, `*_ns` too) assigned to a name and later subtracted
from a clock reading in the same loop body is a per-iteration timed interval: a timing loop. A clock read once
around a whole phase (training seconds, build seconds) or a deadline check against a start set before the loop
is not one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "edgecompress"
ENGINE = {"runtime/timing.py", "runtime/latency.py", "runtime/latency_paired.py"}
CLOCKS = {"perf_counter", "time", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}


def _is_clock(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCKS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "time")


def timing_loops(source: str) -> list[int]:
    """Line numbers of loops that time each iteration (see the module docstring)."""
    found = []
    for loop in ast.walk(ast.parse(source)):
        if not isinstance(loop, (ast.For, ast.While, ast.AsyncFor)):
            continue
        starts: set[str] = set()
        for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
            if isinstance(node, ast.Assign) and _is_clock(node.value):
                starts |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _is_clock(node.left)
                    and isinstance(node.right, ast.Name) and node.right.id in starts):
                found.append(loop.lineno)
                break
    return found


def test_no_timing_loop_outside_the_timing_engine() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ENGINE:
            continue
        bad += [f"edgecompress/{rel}:{line}" for line in timing_loops(path.read_text())]
    assert not bad, "timing loops outside runtime/timing.py (use time_each / time_blocks / time_call): " + \
        ", ".join(bad)


def test_the_rule_flags_a_timed_loop_and_passes_phase_timing_and_deadlines() -> None:
    timed = ("import time\nfor x in xs:\n    t0 = time.perf_counter()\n    f(x)\n"
             "    ms.append(time.perf_counter() - t0)\n")
    assert timing_loops(timed) == [2]
    phase = "import time\nt0 = time.perf_counter()\nfor x in xs:\n    f(x)\nd = time.perf_counter() - t0\n"
    deadline = "import time\nt0 = time.perf_counter()\nwhile time.perf_counter() - t0 < 5:\n    f()\n"
    budget = "import time\nstart = time.time()\nfor b in bs:\n    step(b)\n    if time.time() - start > 9:\n" \
             "        break\n"
    assert timing_loops(phase) == timing_loops(deadline) == timing_loops(budget) == []


def test_the_engine_times_each_call_under_the_compute_lock(tmp_path: Path) -> None:
    """time_each holds the machine's compute lock exclusively while it times (a training step would wait)."""
    from edgecompress.runtime.compute_lock import compute_lock
    from edgecompress.runtime.timing import TimingOptions, time_blocks, time_each

    lock = str(tmp_path / "compute.lock")
    held = []
    times, outs = time_each(lambda x: held.append(compute_lock(lock).held_exclusive()) or x * 2, [1, 2, 3],
                            TimingOptions(warmup=1, lock_path=lock))
    assert outs == [2, 4, 6] and len(times) == 3 and (times >= 0).all()
    assert held == [True] * 4  # the warm-up call too
    (ms,) = time_blocks([lambda: sum(range(100))], TimingOptions(warmup=2, rounds=3, calls=50, lock_path=lock))
    assert ms > 0
