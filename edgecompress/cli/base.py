"""Foundation commands: `zoo`, `download`, `train-base`, `demo`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


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


def step_progress(description: str) -> tuple[Progress, object]:
    progress = Progress("[progress.description]{task.description}", BarColumn(), "{task.completed}/{task.total}",
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(description, total=None)
    return progress, task


def train_base_cmd(config: Path, set_: list[str] | None, force: bool, as_json: bool) -> dict:
    from edgecompress.evaluators.base import get_base_model
    from edgecompress.spaces import load_experiment

    exp = load_experiment(config, parse_sets(set_))
    progress, task = step_progress(f"training base {exp.model.name} on {exp.dataset.name}")
    with progress:
        base = get_base_model(exp, force=force,
                              on_step=lambda done, total: progress.update(task, completed=done, total=total))
    m = dict(base.metrics, reused_cache=base.reused, cache_dir=str(base.path))
    if as_json:
        print(json.dumps(m, indent=2))
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
                 dest: Path | None = typer.Option(None, help="folder (default ~/.cache/edgecompress)")) -> None:
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
