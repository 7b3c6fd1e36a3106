"""Progress of a study: counts, current Pareto front, hypervolume, ETA; and a rich live display of them.

`study_stats` is pure (no printing); `RichProgress` renders stats on a rich Console (the CLI on a terminal),
`LineProgress` writes one plain line per finished trial (the CLI when stderr is not a terminal: logs).
Both also follow base-model training before the first trial (`.train`, a train.TrainProgress callback).
A trial counts towards `--trials` when it is COMPLETE or PRUNED, or FAIL with state_detail "failed" (an
evaluation that failed); trials FAILed by a crash or Ctrl-C are re-queued and do not count.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgecompress.study import attrs as A
from edgecompress.study.frame import frame_objectives, study_to_frame
from edgecompress.study.front import completed, front
from edgecompress.study.hypervolume import normalized_hypervolume


@dataclass
class StudyStats:
    """Counts and front summary of a study at one moment."""

    complete: int = 0
    infeasible: int = 0
    failed: int = 0
    pruned: int = 0
    running: int = 0
    finished: int = 0  # what counts towards --trials
    target: int | None = None
    front: list[int] = field(default_factory=list)  # trial numbers on the feasible front (study.front)
    hypervolume: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    latest: str = ""  # the most recently finished trial, e.g. "trial 4 complete (accuracy 0.871, latency_ms 0.12)"


def is_counted(t: FrozenTrial) -> bool:
    """Whether a finished trial counts towards the requested total."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get(A.STATE_DETAIL) == "failed"


def study_stats(
    study: optuna.Study, target: int | None = None, started: float | None = None, finished_at_start: int = 0
) -> StudyStats:
    """Counts, front (edgecompress.study.front over feasible trials) and ETA of `study`; ETA from this
    session's pace (`started`, trials done since)."""
    trials = study.get_trials(deepcopy=False)
    s = StudyStats(target=target)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            if t.user_attrs.get(A.STATE_DETAIL) == "infeasible":
                s.infeasible += 1
            else:
                s.complete += 1
        elif t.state == TrialState.PRUNED:
            s.pruned += 1
        elif t.state == TrialState.FAIL and is_counted(t):
            s.failed += 1
        elif t.state == TrialState.RUNNING:
            s.running += 1
        s.finished += is_counted(t)
    df = study_to_frame(study)
    objs = frame_objectives(df)
    names, dirs = [o["name"] for o in objs], [o["direction"] for o in objs]
    s.latest = describe_trial(max((t for t in trials if t.datetime_complete is not None),
                                  key=lambda t: (t.datetime_complete, t.number), default=None), names)
    rows = front(df, objs, feasible_only=True)
    s.front = [int(n) for n in rows["number"]]
    if len(dirs) == 2:
        done = completed(df, objs)
        s.hypervolume = normalized_hypervolume(rows[names].to_numpy(dtype=float), done[names].to_numpy(dtype=float),
                                               dirs)
    if started is not None:
        s.elapsed_s = time.time() - started
        done = s.finished - finished_at_start
        if target is not None and done > 0:
            s.eta_s = max(0.0, (target - s.finished) * s.elapsed_s / done)
    return s


def describe_trial(t: FrozenTrial | None, names: list[str]) -> str:
    """'trial 4 complete (accuracy 0.871, latency_ms 0.12)', '... infeasible', '... failed: reason'."""
    if t is None:
        return ""
    detail = t.user_attrs.get(A.STATE_DETAIL)
    if t.state == TrialState.COMPLETE:
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, t.values or [], strict=False))
        state = "infeasible" if detail == "infeasible" else "complete"
        clamped = t.user_attrs.get(A.PRUNE_CLAMPED) or {}
        if clamped:  # spaces.space: a ratio that would have emptied a layer
            values += (", " if values else "") + ", ".join(
                f"{k} {a:g} -> {u:g} (would empty a layer)" for k, (a, u) in clamped.items())
        return f"trial {t.number} {state}" + (f" ({values})" if values else "")
    if t.state == TrialState.FAIL:
        reason = str(t.user_attrs.get(A.FAIL_REASON) or detail or "").splitlines()
        return f"trial {t.number} failed" + (f": {reason[0]}" if reason else "")
    return f"trial {t.number} {t.state.name.lower()}"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def describe(stats: StudyStats) -> str:
    """One line: done/failed/pruned, front size, hypervolume, ETA."""
    hv = "-" if stats.hypervolume is None else f"{stats.hypervolume:.3f}"
    target = "?" if stats.target is None else str(stats.target)
    return (
        f"{stats.finished}/{target} trials | ok {stats.complete} infeasible {stats.infeasible} "
        f"failed {stats.failed} pruned {stats.pruned} running {stats.running} | front {len(stats.front)} "
        f"| HV {hv} | ETA {format_seconds(stats.eta_s)}"
    )


class LineProgress:
    """Progress for logs: one plain line on `stream` (default stderr) each time a trial finishes, and one
    per epoch of base-model training (`.train`)."""

    def __init__(self, stream: IO[str] | None = None, title: str = "search") -> None:
        self.stream, self.title = stream, title
        self._finished: int | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __call__(self, stats: StudyStats) -> None:
        if stats.finished == self._finished:
            return
        first = self._finished is None
        self._finished = stats.finished
        latest = "" if first or not stats.latest else f"{stats.latest} | "
        self._print(f"{self.title} [{format_seconds(stats.elapsed_s)}] {latest}{describe(stats)}")

    def train(self, p: Any) -> None:
        """train.TrainProgress callback: one line at the end of each base-model training epoch."""
        if p.epoch_end:
            self._print(p.line(f"{self.title}: base model"))


class RichProgress:
    """Live progress bar for the CLI: call it with StudyStats after every trial."""

    def __init__(self, console: Any = None, title: str = "search") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=self.console, transient=False,
        )
        self._task: Any = None
        self._train_task: Any = None
        self._train_note = ""

    def train(self, p: Any) -> None:
        """train.TrainProgress callback: a 'base model' bar while the base model trains."""
        if p.epoch_end:
            self._train_note = f" | last: loss {p.loss:.3f} train acc {p.train_accuracy:.3f}"
        desc = f"base model: epoch {p.epoch}/{p.epochs}{self._train_note}"
        if self._train_task is None:
            self._train_task = self._progress.add_task(desc, total=p.total_steps)
        self._progress.update(self._train_task, completed=p.step, total=p.total_steps, description=desc)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def __call__(self, stats: StudyStats) -> None:
        hv = "-" if stats.hypervolume is None else f"{stats.hypervolume:.3f}"
        desc = (
            f"ok {stats.complete} inf {stats.infeasible} fail {stats.failed} pruned {stats.pruned} "
            f"| front {len(stats.front)} HV {hv} | ETA {format_seconds(stats.eta_s)}"
        )
        if self._task is None:
            self._task = self._progress.add_task(desc, total=stats.target, completed=stats.finished)
        self._progress.update(self._task, completed=stats.finished, total=stats.target, description=desc)
