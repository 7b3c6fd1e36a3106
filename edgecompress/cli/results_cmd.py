"""Result commands: `pareto` (front table), `report` (HTML), `export` (checked model files), `retarget`, `remeasure`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgecompress.cli.base_cmd import console, emit_json, with_flags
from edgecompress.cli.tables import (
    base_line,
    fmt_ms,
    fmt_pp,
    fmt_x,
    front_rows,
    pareto_table,
    print_wide,
)
from edgecompress.utils import plain

DEPLOYABLE_HELP = "only deployable trials (latency measured here, not estimated): the front computed over them"


def _counts_line(df: Any) -> str:
    from edgecompress.study.frame import counts

    c = counts(df)
    return (f"{c['total']} trials: {c['feasible']} feasible, {c['infeasible']} infeasible, {c['failed']} failed, "
            f"{c['pruned']} pruned" + (f", {c['running']} running" if c["running"] else ""))


def is_finalized(study: Any) -> bool:
    """Whether `study` holds finalize's results (a `<search>-final` study)."""
    from edgecompress.study import attrs as A

    return bool(study.user_attrs.get(A.FINALIZED_FROM))


def fidelity_lines(study: Any, storage: str | None) -> list[str]:
    """What the output rests on: finalized results (and the search-front configs not finalized) or the search's."""
    from edgecompress.study import attrs as A
    from edgecompress.study import front, load_study, study_to_frame

    if not is_finalized(study):
        return []
    search = load_study(study.user_attrs[A.FINALIZED_FROM], storage, final="proxy")
    exp = study.user_attrs.get(A.EXPERIMENT) or {}
    epochs = (exp.get("finetune") or {}).get("epochs")
    done = {t.user_attrs.get(A.PROXY_TRIAL) for t in study.get_trials(deepcopy=False)}
    left = [int(n) for n in front(study_to_frame(search), feasible_only=True)["number"] if int(n) not in done]
    unit = "epoch" if epochs == 1 else "epochs"
    lines = [f"finalized results: study {study.study_name} ({epochs} {unit} on every training image); "
             f"--proxy shows the search's ({search.study_name})"]
    if left:
        lines.append(f"search-front trials not finalized (proxy fidelity, not shown): {', '.join(map(str, left))}")
    return lines


def _cascade_info(folder: Path) -> list[dict[str, Any]]:
    """Cascade points for the report from a cascade folder (cascade.yaml plan, optional front.json)."""
    import json

    import yaml

    from edgecompress.errors import EdgeCompressError

    points: list[dict[str, Any]] = []
    front = folder / "front.json"
    spec = folder / "cascade.yaml"
    try:
        if front.is_file():
            data = json.loads(front.read_text())
            points += [dict(p) for p in (data if isinstance(data, list) else data.get("front", []))]
        if spec.is_file():
            plan = (yaml.safe_load(spec.read_text()) or {}).get("plan") or {}
            if plan.get("predicted_latency_ms") is not None and plan.get("predicted_accuracy") is not None:
                points.append({"expected_latency_ms": plan["predicted_latency_ms"],
                               "accuracy": plan["predicted_accuracy"],
                               "models": [s.get("name") for s in plan.get("stages", [])], "chosen": True})
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:  # a damaged cascade folder
        raise EdgeCompressError(f"--cascade {folder}: unreadable front.json / cascade.yaml "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not points:
        raise EdgeCompressError(f"--cascade {folder}: no cascade.yaml plan or front.json with "
                                "expected_latency_ms and accuracy")
    return points


def _checks_table(result: Any) -> Table:
    t = Table(title=f"checks of the exported files (trial {result.number})")
    for c in ("file", "precision", "top-1 agreement", "max logit diff", "latency b1", "latency batch", "ok"):
        t.add_column(c, justify="left" if c in ("file", "precision") else "right")
    for c in result.checks:
        est = c.latency_source == "estimated"
        need = f" (>= {c.min_agreement:.2f})" if c.min_agreement is not None else ""
        t.add_row(c.file, c.precision.split(" (")[0], f"{c.agreement:.4f}{need}", f"{c.max_abs_diff:.3g}",
                  fmt_ms(c.latency_ms, est), fmt_ms(c.latency_batch_ms, est) + f" (x{c.batch_size})",
                  "[green]yes[/]" if c.passed else "[red]NO[/]")
    return t


def _preprocess_line(pc: Any) -> str:
    """One line: config.yaml's stated preprocessing, run on raw validation files, next to the study's accuracy."""
    def acc(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    ok = "[green]ok[/]" if pc.passed else "[red]NO[/]"
    return (f"stated preprocessing on {pc.samples} raw validation images: accuracy {acc(pc.stated_accuracy)} "
            f"(model.onnx {acc(pc.onnx_accuracy)}, loader {acc(pc.loader_accuracy)}, study {acc(pc.study_accuracy)}), "
            f"top-1 agreement {pc.agreement:.4f}, max input diff {pc.max_input_diff:.2g}: {ok}")


def _print_retarget(summary: Any) -> None:
    """The table of a retarget/remeasure summary and where the new study is."""
    t = Table(title=f"{summary.source_study} -> {summary.study} on {summary.device_name or summary.device} "
                    f"({summary.backend})")
    for c in ("trial", "new trial", "accuracy", "old latency", "new latency", "state", "note"):
        t.add_column(c, justify="left" if c in ("state", "note") else "right")
    for r in summary.trials:
        est = r.latency_source == "estimated"
        t.add_row(str(r.source_number), str(r.number), "-" if r.accuracy is None else f"{r.accuracy:.4f}",
                  fmt_ms(r.old_latency_ms, est), fmt_ms(r.latency_ms, est), r.state_detail, r.note)
    print_wide(t)
    if summary.left_out:
        console.print(f"{summary.left_out} trials not on the front left out")
    for n, why in summary.skipped:
        console.print(f"[yellow]skipped trial {n}:[/] {why}")
    console.print(f"new study {summary.study!r} in {summary.storage}: `edgecompress pareto {summary.study}"
                  + ("" if summary.storage.endswith(f"{summary.study}.db") else f" --storage {summary.storage}")
                  + "`")


def register(app: typer.Typer) -> None:
    @app.command()
    def pareto(
        study: str = typer.Argument(..., help="study name (runs/NAME.db), .db/.journal path or storage URL"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        csv: Path | None = typer.Option(None, "--csv", help="write every trial (full frame) as CSV"),
        max_latency: str | None = typer.Option(None, "--max-latency", help="keep rows under, e.g. 2ms"),
        min_accuracy: float | None = typer.Option(None, "--min-accuracy", help="keep rows at or above"),
        all_: bool = typer.Option(False, "--all", help="every complete trial, not only the front"),
        proxy: bool = typer.Option(False, "--proxy", help="the search's (proxy) results, not the finalized ones"),
        deployable: bool = typer.Option(False, "--deployable", help=DEPLOYABLE_HELP),
        as_json: bool = typer.Option(False, "--json", help="print the rows (with gains against the base) as JSON"),
    ) -> None:
        """Pareto front of a study as a table sorted by latency, with speed-up, size and accuracy change against
        the study's uncompressed trial (estimated latencies marked ~ (est.))."""
        from edgecompress.errors import ConfigError
        from edgecompress.results import calibration_notes, parse_latency_ms, select
        from edgecompress.results.pareto import pareto_front
        from edgecompress.study import attrs as A
        from edgecompress.study import load_study, study_to_frame
        from edgecompress.utils import atomic_path

        max_ms = parse_latency_ms(max_latency) if max_latency is not None else None
        if min_accuracy is not None and not 0 <= min_accuracy <= 1:
            raise ConfigError(f"--min-accuracy: must be in [0, 1], got {min_accuracy}")
        st = load_study(study, storage, final="proxy" if proxy else "auto")
        df = study_to_frame(st)
        if csv is not None:
            with atomic_path(csv) as tmp:
                df.drop(columns=[A.CONFIG], errors="ignore").to_csv(tmp, index=False)
        has_complete = bool((df["state"] == "COMPLETE").any()) if len(df) else False
        rows = front_rows(df, max_ms, min_accuracy, all_, deployable) if has_complete else []
        sel = None
        if has_complete and not rows and (max_ms is not None or min_accuracy is not None):
            sel = select(pareto_front(df, deployable=deployable), max_latency=max_ms, min_accuracy=min_accuracy)
        if as_json:
            from edgecompress.results.gains import base_trial
            from edgecompress.study.frame import counts

            base = base_trial(df)
            emit_json(plain({
                "study": st.study_name, "fidelity": "final" if is_finalized(st) else "proxy",
                "what": "complete trials" if all_ else "Pareto front", "deployable": deployable,
                "counts": counts(df), "base_trial": None if base is None else int(base["number"]),
                "rows": rows, "notes": fidelity_lines(st, storage) + ([sel.reason] if sel is not None else [])
                + calibration_notes(df, study),
                "csv": None if csv is None else str(csv)}))
            return
        for line in fidelity_lines(st, storage):
            console.print(line)
        console.print(_counts_line(df))
        if not has_complete:
            console.print("no complete trials yet")
        else:
            what = ("complete trials" if all_ else "Pareto front") + (" (deployable: measured latency)"
                                                                       if deployable else "")
            print_wide(base_line(df))
            if rows or (max_ms is None and min_accuracy is None):
                print_wide(pareto_table(rows, f"{st.study_name}: {what} ({len(rows)} rows)"))
            if any(r["estimated"] for r in rows):
                console.print("[yellow]~x (est.)[/]: sub-8-bit latency estimated from the int8 measurement x "
                              "BitOPs ratio (no real kernels); `--deployable` shows the front of measured trials")
            intervals = {r["accuracy_change_basis"] for r in rows if not r.get("is_base")}
            if intervals:
                console.print("acc vs base: " + "; ".join(sorted(map(str, intervals))))
            if sel is not None:
                console.print(f"[red]{sel.reason}[/]")
            for note in calibration_notes(df, study):
                console.print(f"[yellow]note:[/] {note}")
        if csv is not None:
            console.print(f"wrote {len(df)} trials to {csv}")

    @app.command()
    def report(
        study: str = typer.Argument(..., help="study name, .db/.journal path or storage URL"),
        out: Path = typer.Option(..., "-o", "--out", help="HTML file to write"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        cascade: Path | None = typer.Option(None, "--cascade", help="cascade folder to draw its curve"),
        proxy: bool = typer.Option(False, "--proxy", help="the search's (proxy) results, not the finalized ones"),
        deployable: bool = typer.Option(False, "--deployable",
                                        help="the deployable front (measured latency) is the one tabled first; "
                                        "both fronts are always drawn"),
    ) -> None:
        """Write a self-contained offline HTML report (both fronts, gains against the base, projections,
        hypervolume, importance)."""
        from edgecompress.results import build_report
        from edgecompress.study import load_study

        st = load_study(study, storage, final="proxy" if proxy else "auto")
        for line in fidelity_lines(st, storage):
            console.print(line)
        info = _cascade_info(cascade) if cascade is not None else None
        search = load_study(study, storage, final="proxy") if is_finalized(st) else None
        path = build_report(st, out, cascade_info=info, proxy=search, deployable=deployable)
        console.print(f"report: {path.resolve()}")

    @app.command("export")
    def export_cmd(
        study: str = typer.Argument(..., help="study name, .db/.journal path or storage URL"),
        out: Path = typer.Option(..., "-o", "--out", help="output folder"),
        trial: int | None = typer.Option(None, "--trial", help="trial number to export"),
        max_latency: str | None = typer.Option(None, "--max-latency", help="most accurate under, e.g. 2ms"),
        min_accuracy: float | None = typer.Option(None, "--min-accuracy", help="fastest at or above"),
        knee: bool = typer.Option(False, "--knee", help="the knee point of the front"),
        formats: str = typer.Option("yaml,torchscript,onnx", "--format", help="comma list: yaml,torchscript,onnx"),
        force: bool = typer.Option(False, "--force", help="export even when infeasible or a check fails"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        device: str = typer.Option("cpu", "--device", help="device to check and time on: cpu or cuda"),
        int8_scheme: str = typer.Option("auto", "--int8-scheme",
                                        help="int8 file for the target CPU: auto (this CPU), u8s8 (VNNI or ARM), "
                                        "u8u8 (x86 without VNNI, accurate), u8s8_rr (x86 without VNNI, "
                                        "faster, 7-bit weights)"),
        preprocess: bool = typer.Option(False, "--preprocess",
                                        help="also write each ONNX file with the dataset's preprocessing in the "
                                        "graph (model_preprocess.onnx: uint8 N x H x W x C images in; needs "
                                        "--format onnx)"),
        proxy: bool = typer.Option(False, "--proxy", help="the search's (proxy) results, not the finalized ones"),
        deployable: bool = typer.Option(False, "--deployable",
                                        help="choose (--knee, --max-latency, --min-accuracy) on the front of "
                                        "deployable trials (latency measured, not estimated)"),
    ) -> None:
        """Export one trial (config.yaml + TorchScript/ONNX), each file reloaded, compared and re-timed; config.yaml
        states the loader's preprocessing, checked on the dataset's raw validation files."""
        from edgecompress.export.checks import ExportError
        from edgecompress.export.trial_export import export_trial
        from edgecompress.results.pareto import parse_latency_ms
        from edgecompress.study import attrs as A

        try:
            with console.status("exporting and checking ..."):
                max_ms = parse_latency_ms(max_latency) if max_latency is not None else None
                result = export_trial(study, out, trial=trial, max_latency=max_ms, min_accuracy=min_accuracy,
                                      knee=knee, formats=formats, force=force, storage=storage, device=device,
                                      int8_scheme=int8_scheme, preprocess=preprocess,
                                      final="proxy" if proxy else "auto", deployable=deployable)
        except ExportError as e:
            if e.result is not None:
                print_wide(_checks_table(e.result))
            typer.echo(f"error: {with_flags(str(e))}", err=True)
            # SystemExit, not typer.Exit: click returns (drops) typer.Exit's code under standalone_mode=False
            raise SystemExit(1) from None
        console.print(f"trial {result.number} of study {result.study} ({result.fidelity} fidelity): "
                      f"{result.selection.reason}")
        if result.gains:
            g = result.gains
            est = result.selection.row.get(A.LATENCY_SOURCE) == "estimated"
            acc = fmt_pp(g["accuracy_change_pp"], g["accuracy_change_low_pp"], g["accuracy_change_high_pp"])
            console.print(f"against the base (trial {g['base_trial']}): {fmt_x(g['speedup_b1'], est)} faster at batch "
                          f"1, {fmt_x(g['speedup_batch'], est)} at the serving batch, "
                          f"{fmt_x(g['size_reduction'])} smaller, accuracy {acc} ({g['accuracy_change_basis']})")
        print_wide(_checks_table(result))
        if result.preprocess_check is not None:
            print_wide(_preprocess_line(result.preprocess_check))
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}")
        for p in result.problems:
            console.print(f"[red]forced despite:[/] {p}")
        console.print(f"exported to {result.out_dir.resolve()}: {', '.join(result.files)}")

    @app.command()
    def retarget(
        study: str = typer.Argument(..., help="study name, .db/.journal path or storage URL"),
        device: str = typer.Option(..., "--device", help="cpu or cuda: the device to re-measure on"),
        backend: str | None = typer.Option(None, "--backend", help="onnxruntime, torch or torch_compile"),
        new_study: str | None = typer.Option(None, "--new-study", help="name of the new study"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for latency"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing new study"),
    ) -> None:
        """Re-measure latency of every complete trial on this device (no retraining) into a new study."""
        from edgecompress.cli.base_cmd import step_progress
        from edgecompress.export.retarget import retarget_study

        progress, task = step_progress(f"re-measuring on {device}")
        with progress:
            summary = retarget_study(
                study, device=device, backend=backend, new_study=new_study, storage=storage, threads=threads,
                overwrite=overwrite,
                progress=lambda done, total, n: progress.update(task, completed=done, total=total))
        _print_retarget(summary)

    @app.command()
    def remeasure(
        study: str = typer.Argument(..., help="study name, .db/.journal path or storage URL"),
        front: bool = typer.Option(False, "--front", help="only the trials on the Pareto front"),
        new_study: str | None = typer.Option(None, "--new-study", help="name of the new study (default "
                                             "STUDY-remeasured)"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing new study"),
        latency_threads: int | None = typer.Option(None, "--latency-threads", min=1,
                                                   help="threads of the measurement (default: the study's)"),
    ) -> None:
        """Re-measure a study's latency on its own device/backend, quietly (exclusive compute lock, no
        training), with the search's drift-corrected protocol, into a new study: after a search on a busy
        machine."""
        from edgecompress.cli.base_cmd import step_progress
        from edgecompress.export.retarget import remeasure_study

        progress, task = step_progress("re-measuring")
        with progress:
            summary = remeasure_study(
                study, front_only=front, new_study=new_study, storage=storage, overwrite=overwrite,
                latency_threads=latency_threads,
                progress=lambda done, total, n: progress.update(task, completed=done, total=total))
        _print_retarget(summary)
