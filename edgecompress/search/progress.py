"""Progress of a study: counts, current Pareto front, hypervolume, ETA; and a rich live display of them.

`study_stats` is pure (no printing); `RichProgress` renders stats on a rich Console (used by the CLI).
A trial counts towards `--trials` when it is COMPLETE or PRUNED, or FAIL with state_detail "failed" (an
evaluation that failed); trials FAILed by a crash or Ctrl-C are re-queued and do not count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


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
    front: list[int] = field(default_factory=list)  # trial numbers on the feasible Pareto front
    hypervolume: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


def is_counted(t: FrozenTrial) -> bool:
    """Whether a finished trial counts towards the requested total."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get("state_detail") == "failed"


def is_feasible(t: FrozenTrial) -> bool:
    return (
        t.state == TrialState.COMPLETE
        and t.user_attrs.get("state_detail", "complete") == "complete"
        and all(v <= 0 for v in t.constraints.values())
    )


def _minimised(t: FrozenTrial, directions: Sequence[optuna.study.StudyDirection]) -> tuple[float, ...]:
    return tuple(-v if d == optuna.study.StudyDirection.MAXIMIZE else v for v, d in zip(t.values, directions))


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[Any]) -> list[FrozenTrial]:
    """Feasible non-dominated trials (one per distinct objective vector), sorted by the first objective."""
    pts = [(_minimised(t, directions), t) for t in trials if is_feasible(t)]
    front: list[tuple[tuple[float, ...], FrozenTrial]] = []
    seen: set[tuple[float, ...]] = set()
    for p, t in pts:
        dominated = any(
            all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p)) for q, _ in pts
        )
        if not dominated and p not in seen:
            seen.add(p)
            front.append((p, t))
    return [t for _, t in sorted(front, key=lambda x: x[0])]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by minimisation points up to `reference` (points beyond it add nothing)."""
    pts = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in pts:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def normalized_hypervolume(
    front: Sequence[FrozenTrial], all_trials: Sequence[FrozenTrial], directions: Sequence[Any]
) -> float | None:
    """2-objective hypervolume in [0, 1] after scaling each objective to the range observed (reference
    point 1.1 x that range; a progress indicator, results.pareto has the reported one)."""
    if len(directions) != 2 or not front:
        return None
    pts = [_minimised(t, directions) for t in all_trials if t.state == TrialState.COMPLETE and t.values]
    lo = [min(p[i] for p in pts) for i in range(2)]
    hi = [max(p[i] for p in pts) for i in range(2)]
    span = [(h - low) or 1.0 for low, h in zip(lo, hi)]
    front_pts = [_minimised(t, directions) for t in front]
    scaled = [tuple((p[i] - lo[i]) / span[i] for i in range(2)) for p in front_pts]
    return hypervolume_2d(scaled, (1.1, 1.1)) / 1.21  # type: ignore[arg-type]  # ref just past the nadir


def study_stats(
    study: optuna.Study, target: int | None = None, started: float | None = None, finished_at_start: int = 0
) -> StudyStats:
    """Counts, front and ETA of `study`; ETA from this session's pace (`started`, trials done since)."""
    trials = study.get_trials(deepcopy=False)
    s = StudyStats(target=target)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            if t.user_attrs.get("state_detail") == "infeasible":
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
    directions = study.directions
    front = pareto_front(trials, directions)
    s.front = [t.number for t in front]
    s.hypervolume = normalized_hypervolume(front, trials, directions)
    if started is not None:
        s.elapsed_s = time.time() - started
        done = s.finished - finished_at_start
        if target is not None and done > 0:
            s.eta_s = max(0.0, (target - s.finished) * s.elapsed_s / done)
    return s


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
