"""`edgecompress evaluate CONFIG --set prune=0.5 --set bits=8 --set resolution=0.75`: one config, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgecompress.cli.base_cmd import TrainDisplay, busy, console, emit_json, err_console, parse_sets

ALIASES = {"bits": ("w_bits", "a_bits"), "epochs": ("finetune_epochs",), "ratio": ("prune",)}


def compression_from_sets(sets: dict[str, Any]) -> Any:
    """`--set` pairs -> CompressionConfig; `bits` sets weight and activation bits together."""
    from edgecompress.spaces.config import CompressionConfig

    data: dict[str, Any] = {}
    for key, value in sets.items():
        for target in ALIASES.get(key, (key,)):
            data[target] = value
    return CompressionConfig.from_dict(data, "--set")


def format_metrics(result: Any) -> Table:
    t = Table(title=f"config {result.config.config_hash()}  state: {result.state}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key in sorted(result.metrics):
        v = result.metrics[key]
        t.add_row(key, f"{v:.6g}" if isinstance(v, float) else str(v))
    for key, v in result.violations.items():
        t.add_row(f"violation:{key}", f"{v:.4g}")
    if result.fail_reason:
        t.add_row("reason", result.fail_reason)
    return t


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        config: Path = typer.Argument(..., help="experiment YAML"),
        set_: list[str] | None = typer.Option(None, "--set", help="compression setting, e.g. prune=0.5, bits=8"),
        override: list[str] | None = typer.Option(None, "--override", help="experiment key, e.g. finetune.epochs=2"),
        out: Path | None = typer.Option(None, "-o", "--out", help="write artefacts (model, logits) here"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Compress, fine-tune and measure one configuration; print its metrics."""
        from edgecompress.evaluators.evaluator import build_evaluator
        from edgecompress.spaces import load_experiment
        from edgecompress.study import attrs as A

        exp = load_experiment(config, parse_sets(override))
        cc = compression_from_sets(parse_sets(set_))
        evaluator = build_evaluator(exp)
        # data and base model first: a data error is one line before any work; base training shows progress
        with TrainDisplay(f"training base {exp.model.name} on {exp.dataset.name}") as display:
            evaluator.prepare(on_progress=display)
        with busy(f"evaluating {cc.config_hash()} ..."):
            result = evaluator(cc, artefact_dir=out, on_epoch=lambda e, a: err_console.print(
                f"fine-tune epoch {e}: val accuracy {a:.4f}", highlight=False))
        if as_json:
            emit_json(result.to_dict())
        else:
            console.print(format_metrics(result))
            if result.metrics.get(A.LATENCY_SOURCE) == "estimated":
                console.print(f"[yellow]note:[/] {result.metrics.get('latency_note')}")
        if result.state == "failed":
            raise typer.Exit(1)
