"""`edgecompress.Study`: a stored study opened once, with the verbs a user scripts on it (as `optuna.Study`).

    study = edgecompress.Study.load("demo")                      # storage resolved once
    study.frame(); study.front(); study.select(max_latency=0.2)
    study.export("runs/export", ExportOptions(formats=("onnx",), preprocess=True))
    final = study.finalize(FinalizeOptions(top=6, epochs=3)).study
    final.cascade("runs/cascade", CascadeOptions(min_accuracy=0.9))

Options are objects (`ExportOptions`, `CascadeOptions`, `FinalizeOptions`, `FrontOptions`) instead of long
keyword lists; their fields are the keyword arguments of the functions they drive (a test keeps them equal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd

from edgecompress.cascade.pipeline.from_study import FORMATS as CASCADE_FORMATS
from edgecompress.cascade.pipeline.from_study import cascade_from_study
from edgecompress.errors import ConfigError
from edgecompress.export.trial_export import FORMATS, export_trial
from edgecompress.results.pareto import Selection, knee_point, select
from edgecompress.search.finalize import DEFAULT_EPOCHS, DEFAULT_TOP, finalize_study
from edgecompress.study.frame import study_to_frame
from edgecompress.study.front import front
from edgecompress.study.storage import study_location

if TYPE_CHECKING:
    from edgecompress.cascade.pipeline.from_study import CascadeBuild
    from edgecompress.export.checks import ExportResult
    from edgecompress.search.finalize import FinalizeSummary

def _kwargs(options: Any) -> dict[str, Any]:
    """An options object as keyword arguments (shallow: a DataBundle or evaluator is passed, not copied)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}


__all__ = ["CascadeOptions", "ExportOptions", "FinalizeOptions", "FinalizedStudy", "FrontOptions", "Study"]


@dataclass(frozen=True)
class FrontOptions:
    """Which trials the front is computed over (study.front.front)."""

    objectives: Any = None
    fidelity: str | None = None
    deployable: bool = False
    feasible_only: bool = False


@dataclass(frozen=True)
class ExportOptions:
    """How a chosen trial is exported (export.trial_export.export_trial): formats, target CPU's int8 scheme,
    preprocessing in the ONNX graph, threads, device; `force` writes even when a check fails."""

    formats: str | tuple[str, ...] = FORMATS
    force: bool = False
    data: Any = None
    device: str = "cpu"
    threads: int | None = None
    int8_scheme: str = "auto"
    preprocess: bool = False
    final: str = "auto"
    deployable: bool = False


@dataclass(frozen=True)
class CascadeOptions:
    """How a cascade is planned and measured (cascade.pipeline.from_study.cascade_from_study)."""

    min_accuracy: float | None = None
    max_latency: float | None = None
    kind: str = "margin"
    combine: str = "last"
    max_stages: int = 4
    batch: bool = False
    samples: int = 1000
    final: str = "auto"
    deployable: bool = True
    risk: float | None = None
    delta: float = 0.1
    calib_fraction: float = 0.5
    near_front: int = 1
    formats: tuple[str, ...] = CASCADE_FORMATS
    preprocess: bool = False
    refine: bool = True


@dataclass(frozen=True)
class FinalizeOptions:
    """Which configs are re-trained at full fidelity, and how (search.finalize.finalize_study)."""

    top: int = DEFAULT_TOP
    epochs: int = DEFAULT_EPOCHS
    overrides: dict[str, Any] | None = None
    workers: int = 1
    deployable: bool = False
    evaluator: Any = None
    progress: Any = None
    on_chosen: Any = None


@dataclass
class FinalizedStudy:
    """What `Study.finalize` returns: the finalized study's handle and finalize's summary."""

    study: Study
    summary: FinalizeSummary = field(repr=False)


class Study:
    """A stored study opened once: `Study.load(name, storage=...)`, then frame / front / select / export /
    finalize / cascade without naming it or its storage again."""

    def __init__(self, study: optuna.Study, storage: str | None = None) -> None:
        self._study = study
        self._storage = storage

    @classmethod
    def load(cls, name: str | os.PathLike[str], storage: Any = None, *, final: str = "auto") -> Study:
        """Open a study by name, storage URL or path (see study.storage.load_study; `final` as there)."""
        loc = study_location(name, storage, final=final)
        return cls(loc.study, loc.url if loc.url is not None else (storage if isinstance(storage, str) else None))

    @property
    def name(self) -> str:
        return self._study.study_name

    @property
    def optuna_study(self) -> optuna.Study:
        """The underlying optuna.Study (for Optuna's own plots and dashboard)."""
        return self._study

    def __repr__(self) -> str:
        return f"Study({self.name!r}, storage={self._storage!r})"

    def frame(self) -> pd.DataFrame:
        """One row per trial: objectives, config, metrics, feasibility (study.frame.study_to_frame)."""
        return study_to_frame(self._study)

    def front(self, options: FrontOptions = FrontOptions()) -> pd.DataFrame:  # noqa: B008 - frozen, immutable
        """The Pareto front as frame rows, sorted by latency."""
        return front(self.frame(), **_kwargs(options))

    def select(self, max_latency: float | None = None, min_accuracy: float | None = None,
               max_size: float | None = None, *, knee: bool = False,
               front_options: FrontOptions = FrontOptions()) -> Selection:  # noqa: B008
        """The best front point under the budgets (or the knee with `knee=True`)."""
        rows = self.front(front_options)
        return knee_point(rows) if knee else select(rows, max_latency, min_accuracy, max_size)

    def export(self, out: str | os.PathLike[str], options: ExportOptions = ExportOptions(),  # noqa: B008
               *, trial: int | None = None, max_latency: float | None = None,
               min_accuracy: float | None = None, knee: bool = False) -> ExportResult:
        """Export a trial (by number, or chosen by budget / knee) to `out` and check every file."""
        return export_trial(self._study, out, trial=trial, max_latency=max_latency, min_accuracy=min_accuracy,
                            knee=knee, storage=None, **_kwargs(options))

    def finalize(self, options: FinalizeOptions = FinalizeOptions()) -> FinalizedStudy:  # noqa: B008
        """Re-train the most promising configs at full fidelity into `<name>-final` (resumable)."""
        if self._storage is None:
            raise ConfigError(f"study {self.name!r}: finalize writes {self.name}-final beside it and needs its "
                              f"storage URL; open it with Study.load(name, storage=URL)")
        summary = finalize_study(self.name, storage=self._storage, **_kwargs(options))
        return FinalizedStudy(Study.load(summary.study_name, summary.storage, final="proxy"), summary)

    def cascade(self, out: str | os.PathLike[str],
                options: CascadeOptions = CascadeOptions()) -> CascadeBuild:  # noqa: B008
        """Plan, build and measure a cascade of this study's models, saved to `out`."""
        return cascade_from_study(self._study, out, storage=None, **_kwargs(options))
