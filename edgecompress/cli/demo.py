"""`edgecompress demo CONFIG`: the whole pipeline on a small budget (what `make demo` runs).

train base -> search -> Pareto table -> export the knee model -> dynamic cascade -> report (with the cascade).
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgecompress.cli.base import console


def _step(app: typer.Typer, title: str, args: list[str]) -> None:
    console.rule(f"[bold]{title}[/]  edgecompress {' '.join(args)}")
    try:
        rc = app(args=args, standalone_mode=False)  # click returns typer.Exit codes in this mode
    except SystemExit as e:  # a step's own non-zero exit stops the demo with that code
        if e.code not in (0, None):
            raise
        return
    except typer.Exit as e:
        rc = e.exit_code
    if isinstance(rc, int) and rc:
        console.print(f"[red]step failed:[/] edgecompress {' '.join(args)} (exit {rc})")
        raise SystemExit(rc)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        config: Path = typer.Argument(Path("configs/fmnist-quick.yaml"), help="experiment YAML"),
        study: str = typer.Option("demo", help="study name"),
        trials: int = typer.Option(0, help="total trials (0 = the config's budget)"),
        out: Path = typer.Option(Path("runs/demo"), help="folder for the report, export and cascade"),
    ) -> None:
        """Run train-base, search, pareto, export, cascade and report on a small budget."""
        out.mkdir(parents=True, exist_ok=True)
        trial_args = ["--trials", str(trials)] if trials else []
        _step(app, "1/6 base model", ["train-base", str(config)])
        _step(app, "2/6 search", ["search", str(config), "--study", study, *trial_args])
        _step(app, "3/6 Pareto front", ["pareto", study])
        _step(app, "4/6 export the knee model", ["export", study, "--knee", "-o", str(out / "export"),
                                                 "--format", "yaml,onnx,torchscript", "--force"])
        _step(app, "5/6 dynamic cascade", ["cascade", study, "-o", str(out / "cascade")])
        _step(app, "6/6 report", ["report", study, "-o", str(out / "report.html"), "--cascade", str(out / "cascade")])
        console.rule("[bold green]demo finished")
        console.print(f"report:   {out / 'report.html'}")
        console.print(f"exported: {out / 'export'}")
        console.print(f"cascade:  {out / 'cascade'}")
