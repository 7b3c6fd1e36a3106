"""Run each evaluation in a long-lived child process, so a native crash or hang fails one trial only.

Native code (oneDNN, ONNX Runtime, Torch-Pruning's tracing) can segfault or hang; in the search process
that takes the whole study down. `IsolatedEvaluator` keeps one worker process (data and base model loaded
once), sends it one config at a time and waits with a wall-clock budget. A worker that dies gives a
failed result "process died (signal 11, SIGSEGV)"; one that runs past the budget is killed and gives
"timed out". The next call starts a fresh worker.

`prepare()` starts the worker before any trial: its set-up (loading the data, training the base model when
it is not cached) is followed through `on_progress`, and a set-up error is raised in the parent with its
own type (a DataError stays a DataError: one line at the CLI, no trial run).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators.result import EvalResult
from edgecompress.evaluators.train import ProgressCallback, TrainProgress
from edgecompress.spaces.config import CompressionConfig

EvaluatorFactory = Callable[[], Callable[..., EvalResult]]
KILL_GRACE_S = 30.0  # past the budget, the evaluator's own check gets this long before the kill
PROGRESS_EVERY_S = 0.5  # set-up progress messages between epoch ends, at most this often


class _Pruned(Exception):
    """Raised in the worker when the parent's on_epoch callback asked to prune the trial."""


def describe_exit(exitcode: int | None) -> str:
    """'process died (signal 11, SIGSEGV)' or 'process died (exit code 3)'."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"process died (signal {-exitcode}, {name})"
    return f"process died (exit code {exitcode})"


def _worker(conn: Connection, factory: EvaluatorFactory) -> None:
    """Child: build the evaluator, then evaluate configs until told to stop."""
    from edgecompress.evaluators.evaluator import prepare_evaluator

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    last = [0.0]

    def on_progress(p: TrainProgress) -> None:  # base-model training during set-up, throttled
        now = time.monotonic()
        if p.epoch_end or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", dataclasses.asdict(p)))

    try:
        evaluator = factory()
        prepare_evaluator(evaluator, on_progress)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line, with its type
        conn.send(("setup_error", (type(e).__name__, str(e), isinstance(e, EdgeCompressError))))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, config_dict, artefact_dir = msg
        config = CompressionConfig.from_dict(config_dict)

        def on_epoch(epoch: int, acc: float) -> None:
            conn.send(("epoch", (epoch, acc)))
            if conn.recv() == "prune":
                raise _Pruned(f"pruned after epoch {epoch}")

        try:
            result = evaluator(config, artefact_dir=Path(artefact_dir) if artefact_dir else None,
                               on_epoch=on_epoch)
            conn.send(("result", result.to_dict()))
        except _Pruned as e:
            conn.send(("pruned", str(e)))
        except Exception as e:  # noqa: BLE001 - failures are data
            tb = traceback.extract_tb(e.__traceback__)[-1:]
            where = f" ({Path(tb[0].filename).name}:{tb[0].lineno})" if tb else ""
            conn.send(("result", EvalResult(config, state="failed",
                                            fail_reason=f"{type(e).__name__}: {e}{where}").to_dict()))


def _setup_error(kind: str, payload: Any) -> EdgeCompressError:
    """The parent's exception for a worker that could not set up: the worker's own EdgeCompressError type
    and message when it raised one, else 'trial worker could not start: ...'."""
    from edgecompress import errors

    if kind == "setup_error":
        name, message, typed = payload
        cls = getattr(errors, name, None)
        if typed and isinstance(cls, type) and issubclass(cls, EdgeCompressError):
            return cls(message)
        return EdgeCompressError(f"trial worker could not start: {name}: {message}")
    return EdgeCompressError(f"trial worker could not start: {payload}")


class IsolatedEvaluator:
    """Evaluator wrapper: each call runs `factory()`'s evaluator in a worker process with a time budget.

    `factory` must be picklable (a module-level function or a functools.partial of one): the worker is
    started with the spawn method, so nothing of the parent's threads or CUDA state is inherited.
    `max_seconds` is the wall-clock budget of one evaluation; setting up the worker (loading data, the
    base model) is not counted.
    """

    def __init__(self, factory: EvaluatorFactory, max_seconds: float | None = None,
                 start_method: str = "spawn") -> None:
        if max_seconds is not None and not max_seconds > 0:
            raise ConfigError(f"IsolatedEvaluator: max_seconds must be > 0, got {max_seconds!r}")
        self.factory = factory
        self.max_seconds = max_seconds
        self._ctx = mp.get_context(start_method)
        self._proc: Any = None
        self._conn: Connection | None = None
        self.starts = 0  # worker processes started so far (1 + restarts after crashes and timeouts)

    def _start(self, on_progress: ProgressCallback | None = None) -> None:
        self.starts += 1
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self.factory), daemon=True,
                                       name="edgecompress-trial")
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            kind, payload = self._receive(None)
            while kind == "progress":
                if on_progress is not None:
                    on_progress(TrainProgress(**payload))
                kind, payload = self._receive(None)
        except BaseException:  # Ctrl-C while the worker sets up: do not leave it training
            self._kill()
            raise
        if kind != "ready":
            self.close()
            raise _setup_error(kind, payload)

    def prepare(self, on_progress: ProgressCallback | None = None) -> None:
        """Start the worker now and wait until its evaluator is set up (data loaded, base model trained or
        read from the cache), following base-model training through `on_progress`. A set-up error is
        raised here with its own type (DataError, ...) rather than failing the first trial."""
        if self._proc is None or not self._proc.is_alive():
            self._start(on_progress)

    def _receive(self, deadline: float | None) -> tuple[str, Any]:
        """Next message from the worker; ('died', reason) or ('timeout', None) when there is none."""
        assert self._conn is not None
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self._conn.poll(wait):
                try:
                    return self._conn.recv()
                except (EOFError, OSError):  # the pipe closed: the worker is gone
                    self._proc.join(timeout=5)
                    return "died", describe_exit(self._proc.exitcode)
            if not self._proc.is_alive() and not self._conn.poll(0):
                self._proc.join(timeout=5)
                return "died", describe_exit(self._proc.exitcode)
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout", None

    def __call__(self, config: CompressionConfig, artefact_dir: Path | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> EvalResult:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None
        started = time.monotonic()
        deadline = None if self.max_seconds is None else started + self.max_seconds + KILL_GRACE_S
        try:
            self._conn.send(("eval", config.to_dict(), str(artefact_dir) if artefact_dir else None))
            while True:
                kind, payload = self._receive(deadline)
                if kind == "epoch":
                    try:
                        if on_epoch is not None:
                            on_epoch(*payload)
                    except BaseException:
                        self._conn.send("prune")
                        self._receive(deadline)  # the worker's "pruned" reply
                        raise
                    self._conn.send("continue")
                elif kind == "result":
                    return EvalResult.from_dict(payload)
                elif kind == "pruned":
                    return EvalResult(config, state="pruned", fail_reason=payload)
                elif kind == "died":
                    self._kill()
                    return EvalResult(config, state="failed", fail_reason=payload)
                elif kind == "timeout":
                    self._kill()
                    return EvalResult(config, state="failed", fail_reason=(
                        f"timed out: killed after {time.monotonic() - started:.0f} s "
                        f"(finetune.max_seconds={self.max_seconds:g})"))
        except KeyboardInterrupt:
            self._kill()
            raise

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def close(self) -> None:
        """Stop the worker (politely, then by force)."""
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            try:
                self._conn.send(("stop",))
                self._proc.join(timeout=5)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
