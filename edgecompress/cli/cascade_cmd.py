"""`edgecompress cascade STUDY (--min-accuracy A | --max-latency L) -o DIR`: build, measure and save a cascade."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgecompress.cli.base_cmd import busy, console


def _change(reduction: float) -> str:
    return f"{reduction:.1%} lower" if reduction >= 0 else f"{-reduction:.1%} higher"


def register(app: typer.Typer) -> None:
    @app.command()
    def cascade(
        study: str = typer.Argument(..., help="study name (runs/<name>.db) or storage URL"),
        out: Path = typer.Option(..., "-o", "--out", help="cascade directory to write"),
        min_accuracy: float | None = typer.Option(None, help="minimum validation accuracy (default: best - 0.2 pp)"),
        max_latency: str | None = typer.Option(None, help="latency budget, e.g. 0.2ms"),
        storage: str | None = typer.Option(None, help="storage URL (default sqlite:///runs/<study>.db)"),
        kind: str = typer.Option("margin", help="confidence: margin | max_softmax | entropy"),
        combine: str = typer.Option("last", help="last | sum | seed_alpha (out1 + 1.6 out2)"),
        max_stages: int = typer.Option(4, help="at most this many models"),
        batch: bool = typer.Option(False, help="plan for the serving batch latency instead of batch 1"),
        samples: int = typer.Option(1000, help="test images timed one by one"),
        proxy: bool = typer.Option(False, "--proxy", help="the search's (proxy) models, not the finalized ones"),
        deployable: bool = typer.Option(True, "--deployable/--include-estimated",
                                        help="candidates from the front of deployable trials (latency measured, "
                                        "the default), or also trials with estimated sub-8-bit latency"),
        fmt: str = typer.Option("onnx,torchscript", "--format",
                                help="onnx (the whole cascade as one graph: cascade.onnx) and/or torchscript"),
        risk: float | None = typer.Option(None, "--risk", help="guarantee: P(expected loss > RISK) <= DELTA, loss = "
                                          "cascade wrong while its last stage alone is right"),
        delta: float = typer.Option(0.1, "--delta", help="failure probability of the --risk guarantee"),
        calib_fraction: float = typer.Option(0.5, help="with --risk: share of validation that calibrates"),
        near_front: int = typer.Option(1, help="also take trials of the next N non-dominated fronts"),
        preprocess: bool = typer.Option(False, "--preprocess", help="also cascade_uint8.onnx: stored uint8 "
                                        "images in, the loader's preprocessing in the graph"),
        refine: bool = typer.Option(True, "--refine/--no-refine", help="batch 1: re-price the stages at their "
                                    "cost inside the fused graph (timed on validation images) and plan again"),
    ) -> None:
        """Choose stages and thresholds on validation logits, then measure the cascade on the test split."""
        from edgecompress.cascade.pipeline.from_study import cascade_from_study, check_options, parse_formats
        from edgecompress.results import parse_latency_ms

        max_ms = parse_latency_ms(max_latency) if max_latency else None
        formats = parse_formats(fmt)
        check_options(kind=kind, combine=combine, max_stages=max_stages, min_accuracy=min_accuracy,
                      max_latency=max_ms, samples=samples, risk=risk, delta=delta,
                      formats=formats)  # one line, before any work is announced
        with busy("building and measuring the cascade end to end ..."):
            built = cascade_from_study(study, out, min_accuracy=min_accuracy, max_latency=max_ms,
                                       storage=storage, kind=kind, combine=combine, max_stages=max_stages,
                                       batch=batch, samples=samples, final="proxy" if proxy else "auto",
                                       risk=risk, delta=delta, calib_fraction=calib_fraction,
                                       near_front=near_front, formats=formats, preprocess=preprocess,
                                       deployable=deployable, refine=refine)
        plan, ev = built.plan, built.evaluation

        fid = "finalized" if built.study_name.endswith("-final") else "search (proxy)"
        t = Table(title=f"cascade from study {built.study_name} ({fid} models)")
        for col in ("stage", "trial", "input px", "precision", "latency ms (b1)", "threshold", "escalated (test)"):
            t.add_column(col)
        for k, s in enumerate(plan.stages):
            thr = f"{plan.thresholds[k]:.4g}" if k < len(plan.thresholds) else "-"
            esc = f"{ev.test_escalation_rates[k]:.1%}" if k < len(ev.test_escalation_rates) else "-"
            px = str(s.input_size)
            if k < len(ev.stage_crops) and ev.stage_crops[k] == "dic":  # fed the canvas: box net -> crop -> px
                px = f"{ev.stage_classifier_sizes[k]} dic"
            t.add_row(str(k + 1), str(ev.stage_trials[k]), px, ev.stage_precisions[k].split()[0],
                      f"{s.latency_ms:.4f}", thr, esc)
        console.print(t)
        b = ev.best_single
        console.print(f"confidence {plan.kind}, combine {plan.combine}; predicted (val): accuracy "
                      f"{ev.predicted_val_accuracy:.4f}, latency {ev.predicted_latency_ms:.4f} ms")
        console.print(f"test accuracy {ev.test_accuracy:.4f} vs best single (trial {b['trial']}) "
                      f"{b['test_accuracy']:.4f}: {ev.accuracy_delta_pp:+.2f} pp")
        console.print(f"measured latency batch 1: {ev.measured_latency_b1_ms:.4f} ms vs "
                      f"{b['measured_latency_b1_ms']:.4f} ms single ({_change(ev.latency_reduction_b1)}); "
                      f"predicted {ev.predicted_latency_ms:.4f} ms (error {ev.prediction_error:.1%})")
        console.print(f"measured latency batch {ev.batch_size}: {ev.measured_latency_batch_ms:.3f} ms vs "
                      f"{b['measured_latency_batch_ms']:.3f} ms single ({_change(ev.latency_reduction_batch)})")
        for r in ev.refinement.get("rounds", []):
            pc = r["path_costs"]
            console.print("in-cascade cost per exit path (validation, ms): " + ", ".join(
                f"stage {k + 1} {m:.4f} ({n} calls)" for k, (m, n) in enumerate(zip(pc["mean_ms"], pc["calls"])))
                + f"; re-priced {', '.join(r['repriced']) or 'nothing'}")
        if ev.fused:
            c = ev.fused_check
            console.print(f"served as one ONNX graph; checked on {c['samples']} test images against the reference "
                          f"routing: argmax agreement {c['argmax_agreement']:.4f}, max |logit diff| "
                          f"{c['max_abs_diff']:.2g}")
        p = ev.latency_percentiles_ms
        if p:
            console.print(f"batch-1 p90/p99: {p['cascade_b1_p90']:.4f}/{p['cascade_b1_p99']:.4f} ms vs single "
                          f"{p['single_b1_p90']:.4f}/{p['single_b1_p99']:.4f} ms")
        if ev.accuracy_delta_interval_pp:
            lo, hi = ev.accuracy_delta_interval_pp
            console.print(f"accuracy difference (paired, 95%): [{lo:+.2f}, {hi:+.2f}] pp")
        if ev.risk:
            r = ev.risk
            console.print(f"[bold]guarantee:[/] {r['statement']}; calibration risk {r['calib_risk']:.4f}, "
                          f"p-value {r['p_value']:.3g}; validation split {r['n_select']} selection + "
                          f"{r['n_calib']} calibration samples")
        if "test_expected_latency_ms" in ev.seed_rule:
            console.print(f"seed's rule (2 stages, margin, out1 + 1.6 out2) at equal val accuracy: expected "
                          f"{ev.seed_rule['test_expected_latency_ms']:.4f} ms, test accuracy "
                          f"{ev.seed_rule['test_accuracy']:.4f}")
        if len(plan.stages) > 1 and ev.latency_reduction_b1 <= 0 and ev.latency_reduction_batch <= 0:
            console.print(f"[bold yellow]warning:[/] measured here, the cascade is slower than the best single model "
                          f"at batch 1 and {ev.batch_size}: ship trial {b['trial']} alone, or rebuild with "
                          "larger stage models (routing and session switches cost more than the saving)")
        for n in ev.notes:
            console.print(f"[yellow]note:[/] {n}")
        if any(p != "fp32" and not p.startswith("fp32") for p in ev.stage_precisions):
            console.print("[yellow]note:[/] the saved TorchScript stages are the fp32 sources; the measured "
                          "runtime used each trial's deploy form (see evaluation.json stage_precisions)")
        console.print(f"wrote {out}")
