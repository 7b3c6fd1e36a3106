"""`edgecompress inspect CONFIG`: what the search will act on (stages, kept-out layers, limits, axes)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgecompress.cli.base_cmd import console, emit_json, parse_sets


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        config: Path = typer.Argument(..., help="experiment YAML"),
        set_: list[str] = typer.Option(None, "--set", help="override a config value, e.g. model.name=timm:resnet18"),
        as_json: bool = typer.Option(False, "--json", help="print JSON only"),
        all_layers: bool = typer.Option(False, "--layers", help="list every layer of every stage"),
    ) -> None:
        """Print the stages, classifier, layers kept out and why, MACs, prune limits and axes of a config's model."""
        from edgecompress.search.inspect import inspect_experiment
        from edgecompress.spaces import load_experiment

        info = inspect_experiment(load_experiment(config, parse_sets(set_)))
        if as_json:
            emit_json(info)
            return
        console.print(f"[bold]{info['model']}[/] on {info['dataset']}: {info['in_chans']} x {info['input_size']} px "
                      f"input (runs from {info['min_input']} px), {info['macs'] / 1e6:.2f} M MACs, "
                      f"{info['params'] / 1e6:.3f} M parameters; stages from {info['structure_source']}")
        t = Table(title="stages (each pruned at its own ratio)")
        for col in ("stage", "px", "layers", "channels", "blocks", "droppable", "max prune", "set by"):
            t.add_column(col)
        for s in info["stages"]:
            t.add_row(s["name"], str(s["size"]), "\n".join(s["layers"]) if all_layers else str(len(s["layers"])),
                      str(s["channels"]), str(s["blocks"]), ", ".join(s["droppable"]) or "-",
                      f"{s['prune_limit']:.3f}", s["prune_limit_layer"])
        console.print(t)
        console.print(f"classifier: {info['classifier']}   CAM map: {info['cam_layer'] or '-'}")
        if info["kept_out"]:
            k = Table(title="kept out of pruning")
            k.add_column("layer")
            k.add_column("why")
            for layer, why in info["kept_out"].items():
                k.add_row(layer, why)
            console.print(k)
        for axis, why in info["axes"].items():
            console.print(f"{axis:<11}" + ("applies" if why is None else f"does not apply: {why}"))
        if info["space_check"]:
            console.print(f"[red]this config's space is refused:[/] {info['space_check']}")
