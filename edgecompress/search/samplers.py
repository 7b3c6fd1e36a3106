"""Sampler choice: nsga2, tpe, random, grid, qmc, and `auto` (picked from the budget and the space).

`auto` rule (multi-objective):
  1. the discrete space has no more points than the budget        -> grid (exhaustive is optimal)
  2. budget >= AUTO_NSGA2_POPULATIONS x population (300 by default) -> NSGA-II
  3. otherwise                                                     -> multi-objective TPE
Single objective: TPE (or grid by rule 1). NSGA-II's first generation is random, so it needs several
populations to beat TPE; with fewer than 2 populations of trials a warning is returned.
"""

from __future__ import annotations

from typing import Any

import optuna

from edgecompress.errors import ConfigError
from edgecompress.spaces.space import SearchSpace

SAMPLERS = ("auto", "nsga2", "tpe", "random", "grid", "qmc", "fixed")  # fixed: enqueued configs only
# 30, not 10: on the tabular benchmark (bench/search.py, 156 real configs, 100 seeds) NSGA-II from 100
# trials reached 0.992 of the true front's hypervolume vs TPE's 0.9997; it re-samples duplicates in a
# small discrete space. TPE stays cheap (~9 ms/trial at 500 trials), so it keeps the budget longer.
AUTO_NSGA2_POPULATIONS = 30


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler usable from an ask/tell loop: no study.stop() (which only works inside optimize);
    the runner asks `exhausted(study)` (Optuna's public `is_exhausted`) instead."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        return None

    def exhausted(self, study: optuna.Study) -> bool:
        return self.is_exhausted(study)


class FixedSampler(optuna.samplers.RandomSampler):
    """Runs only the enqueued trials (finalize: a fixed list of configs); the runner stops when none waits.

    Optuna serves enqueued params before asking the sampler, so sampling itself never happens: if it is
    asked anyway (nothing enqueued), it refuses rather than invent a config."""

    def exhausted(self, study: optuna.Study) -> bool:
        return not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any) -> Any:
        raise ConfigError(f"fixed sampler: trial {trial.number} has no enqueued value for {param_name!r}")


def resolve_sampler_name(name: str, n_objectives: int, budget: int, population: int, space: SearchSpace) -> str:
    """The concrete sampler `auto` stands for (other names are returned as given)."""
    if name not in SAMPLERS:
        raise ConfigError(f"`sampler` {name!r}: valid samplers are {', '.join(SAMPLERS)}")
    if name != "auto":
        return name
    size = space.size()
    if size is not None and size <= budget:
        return "grid"
    if n_objectives > 1 and budget >= AUTO_NSGA2_POPULATIONS * population:
        return "nsga2"
    return "tpe"


def make_sampler(
    name: str, seed: int | None, budget: int, population: int, space: SearchSpace
) -> tuple[optuna.samplers.BaseSampler, list[str]]:
    """Build a concrete sampler (already resolved from `auto`); returns it and user-facing warnings."""
    warnings: list[str] = []
    if name == "nsga2":
        if budget < 2 * population:
            warnings.append(
                f"NSGA-II with population {population} gets {budget} trials (< 2 populations): its first "
                "generation is random, so this is close to random search; use --sampler tpe or more trials"
            )
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed), warnings
    if name == "tpe":
        startup = max(5, min(10, budget // 5))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup), warnings
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed), warnings
    if name == "grid":
        try:
            grid = space.grid()
        except ConfigError as e:
            raise ConfigError(f"`sampler` grid: {e}") from None
        return AskTellGridSampler(grid, seed=seed), warnings
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False), warnings
    if name == "fixed":
        return FixedSampler(seed=seed), warnings
    raise ConfigError(f"`sampler` {name!r}: valid samplers are {', '.join(SAMPLERS)}")
