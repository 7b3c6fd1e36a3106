"""Foundation commands: `zoo`, `download`, `train-base`, `demo`; the CLI's consoles and progress displays.

Results go to stdout (`console`); progress and logs go to stderr (`err_console`): a rich bar or spinner
when stderr is a terminal, plain lines otherwise (CI logs, `2> log`), so a long step is never silent.
With `--json`, `json_mode` sends everything else written to stdout (rich, print, C libraries) to stderr and
`emit_json` writes the one JSON document to the real stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


_JSON_OUT: list[TextIO] = []  # where emit_json writes while json_mode is on

#: The library's error messages name a Python argument in backticks (`storage`); the CLI prints its flag instead.
FLAGS = {
    "storage": "--storage", "sampler": "--sampler", "workers": "--workers", "trials": "--trials", "top": "--top",
    "epochs": "--epochs", "new_study": "--new-study", "device": "--device", "formats": "--format",
    "int8_scheme": "--int8-scheme", "preprocess": "--preprocess", "force": "--force", "trial": "--trial",
    "knee": "--knee", "max_latency": "--max-latency", "min_accuracy": "--min-accuracy", "deployable": "--deployable",
}


def with_flags(message: str) -> str:
    """A library error message as the CLI prints it: each `argument` in FLAGS becomes its flag (`force` ->
    --force); other backticked words (`make install`) stay."""
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), message)


@contextlib.contextmanager
def json_mode() -> Iterator[None]:
    """Stdout for JSON only: sys.stdout and file descriptor 1 point to stderr until the block ends, so logs,
    progress and library prints cannot reach stdout; `emit_json` writes to the stdout the caller had."""
    orig = sys.stdout
    try:
        real = orig.fileno() == 1
    except (AttributeError, OSError, ValueError):
        real = False
    orig.flush()
    saved = os.dup(1)
    out = os.fdopen(os.dup(saved), "w") if real else orig
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _JSON_OUT.append(out)
    try:
        yield
    finally:
        _JSON_OUT.pop()
        sys.stderr.flush()
        sys.stdout = orig
        os.dup2(saved, 1)
        os.close(saved)
        if out is not orig:
            out.close()


def emit_json(obj: Any) -> None:
    """Write `obj` as the command's JSON document on stdout (the real one under json_mode)."""
    out = _JSON_OUT[-1] if _JSON_OUT else sys.stdout
    out.write(json.dumps(obj, indent=2, default=str) + "\n")
    out.flush()


def log_line(text: str) -> None:
    """One plain progress/log line on stderr."""
    print(text, file=sys.stderr, flush=True)


def parse_sets(items: list[str] | None) -> dict[str, object]:
    """`--set a.b=1` pairs -> dotted-key overrides (values parsed as YAML scalars)."""
    import yaml

    from edgecompress.errors import ConfigError

    out: dict[str, object] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


class LineSteps:
    """`step_progress` when stderr is not a terminal: the rich Progress calls it needs (context manager,
    `update(task, completed=, total=)`), written as plain lines on stderr: one when the count changes,
    at most one every `every_s` seconds, and always the last."""

    def __init__(self, description: str, every_s: float = 5.0) -> None:
        self.description, self.every_s = description, every_s
        self._started = self._last_time = time.monotonic()
        self._last: Any = None

    def __enter__(self) -> LineSteps:
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, _task: object = None, completed: Any = None, total: Any = None, **_: Any) -> None:
        now = time.monotonic()
        if completed is None or completed == self._last:
            return
        if completed != total and now - self._last_time < self.every_s and self._last is not None:
            return
        self._last, self._last_time = completed, now
        log_line(f"{self.description}: {completed}/{total if total is not None else '?'} "
                 f"({now - self._started:.0f} s elapsed)")


def step_progress(description: str) -> tuple[Any, object]:
    """(progress, task) on stderr: a transient rich bar on a terminal, else a LineSteps."""
    if not err_console.is_terminal:
        return LineSteps(description), None
    progress = Progress("[progress.description]{task.description}", BarColumn(), "{task.completed}/{task.total}",
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
    task = progress.add_task(description, total=None)
    return progress, task


class TrainDisplay:
    """A train.TrainProgress callback for a model training: a rich bar on stderr when it is a terminal,
    else one plain line per epoch (loss, training accuracy, elapsed time). Nothing when nothing trains."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, p: Any) -> None:
        if not err_console.is_terminal:
            if p.epoch_end:
                log_line(p.line(self.what))
            return
        if self._bar is None:
            self._bar, self._task = step_progress(self.what)
            self._bar.start()
        self._bar.update(self._task, completed=p.step, total=p.total_steps,
                         description=f"{self.what}: epoch {p.epoch}/{p.epochs}")


@contextlib.contextmanager
def busy(message: str) -> Iterator[None]:
    """A spinner on stderr when it is a terminal, else the message as one line on stderr."""
    if err_console.is_terminal:
        with err_console.status(message):
            yield
    else:
        log_line(message)
        yield


def train_base_cmd(config: Path, set_: list[str] | None, force: bool, as_json: bool) -> dict:
    from edgecompress.evaluators.base_model import get_base_model
    from edgecompress.spaces import load_experiment

    exp = load_experiment(config, parse_sets(set_))
    with TrainDisplay(f"training base {exp.model.name} on {exp.dataset.name}") as display:
        base = get_base_model(exp, force=force, on_progress=display)
    m = dict(base.metrics, reused_cache=base.reused, cache_dir=str(base.path))
    if as_json:
        emit_json(m)
    else:
        verb = "reused cached" if base.reused else "trained"
        console.print(f"{verb} base model [bold]{exp.model.name}[/] on {exp.dataset.name} "
                      f"({m['epochs']} epochs, {m['train_seconds']} s to train) at {base.path}")
        console.print(f"val accuracy {m['val_accuracy']:.4f}   test accuracy {m['test_accuracy']:.4f}")
    return m


def register(app: typer.Typer) -> None:
    @app.command()
    def zoo() -> None:
        """List the registered models and datasets."""
        from edgecompress.evaluators.data import DEFAULT_SIZES, list_datasets
        from edgecompress.evaluators.models import list_models

        t = Table(title="models")
        t.add_column("name")
        for n in list_models():
            t.add_row(n)
        console.print(t)
        d = Table(title="datasets")
        d.add_column("name")
        d.add_column("native px")
        for n in list_datasets():
            d.add_row(n, str(DEFAULT_SIZES[n]))
        console.print(d)

    @app.command()
    def download(name: str = typer.Argument(..., help="fashion_mnist or cifar10"),
                 dest: Path | None = typer.Option(None, help="folder (default: the data root, see README)")) -> None:
        """Download a public dataset with torchvision (needs the network)."""
        from edgecompress.evaluators.data import download as do_download

        console.print(f"{name} ready at {do_download(name, dest)}")

    @app.command("train-base")
    def train_base(
        config: Path = typer.Argument(..., help="experiment YAML"),
        set_: list[str] | None = typer.Option(None, "--set", help="override a key, e.g. --set base_training.epochs=2"),
        force: bool = typer.Option(False, help="retrain even if a cached model exists"),
        as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    ) -> None:
        """Train (or reuse the cached) base model and print its val and test accuracy."""
        train_base_cmd(config, set_, force, as_json)
