"""Claims on a configuration: concurrent workers of one study never train the same config twice.

The config-hash cache serves a config that a COMPLETE trial already evaluated. Two workers (independent
processes on one PostgreSQL or journal study) that draw the same config at the same moment would both miss
it and both train; this protocol makes one of them the owner and the other wait for its result. Every trial
runs it at its start, after recording its `config_hash` user attr:

1. a COMPLETE trial with the same hash whose artefacts are usable: serve from it (the cache);
2. else the RUNNING trials with that hash are the claimants, and the lowest trial number owns the config:
   the owner trains; every other claimant waits (a look every `poll_s`) until the owner ends:
   - owner COMPLETE: the waiter is served from its result (step 1; `waited_for` records the owner);
   - owner FAIL, PRUNED (its evaluation failed, or a dead owner was failed by the heartbeat or the pid
     check): it is no longer RUNNING, so the lowest remaining claimant owns the config and trains it;
3. a RUNNING trial with a lower number that has not recorded its hash yet (asked just before this one, it is
   between ask and claim) may be a claimant too: wait until it has (at most `settle_s`, and not for a trial
   started longer ago than that), so two workers that draw one config at once agree on the owner whatever
   order their writes land in;
4. waiting is bounded by `wait_s` (the owner's time budget): past it the waiter trains itself, with a note
   saying why (an owner left RUNNING that nothing fails: a storage without heartbeat, another host).

`refresh` runs before each look while waiting (the search's dead-trial recovery: Optuna's
fail_stale_trials and the pid check), so a stale owner is failed by its waiters themselves.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgecompress.study.attrs import CONFIG_HASH

POLL_S = 0.5  # between two looks at the study while waiting
SETTLE_S = 10.0  # longest wait for a lower-numbered trial to record its config hash


def wait_limit(trial_budget_s: float) -> float:
    """How long a waiter waits for its owner: EDGECOMPRESS_CLAIM_WAIT_S, else the owner's time budget (the
    experiment's finetune.max_seconds) plus a minute (the isolated evaluator's kill grace and the tell)."""
    env = os.environ.get("EDGECOMPRESS_CLAIM_WAIT_S")
    return float(env) if env else float(trial_budget_s) + 60.0


@dataclass
class Claim:
    """What a trial does with its config: serve from `source` (a COMPLETE trial), or train (source None).
    `waited_for`: the owner this trial waited for (None: it did not wait); `note`: why a waiter trains."""

    source: FrozenTrial | None = None
    waited_for: int | None = None
    note: str | None = None


def owner_of(trials: list[FrozenTrial], number: int, config_hash: str) -> int:
    """Who owns `config_hash` as trial `number` sees it: the lowest-numbered RUNNING trial below `number`
    with that hash or with no hash recorded yet (it may be a claimant), else `number` itself."""
    lower = [t.number for t in trials if t.state == TrialState.RUNNING and t.number < number
             and t.user_attrs.get(CONFIG_HASH, config_hash) == config_hash]
    return min(lower) if lower else number


def claim_config(
    study: optuna.Study,
    number: int,
    config_hash: str,
    wait_s: float,
    usable: Callable[[FrozenTrial], bool] = lambda t: True,
    refresh: Callable[[], object] | None = None,
    poll_s: float = POLL_S,
    settle_s: float = SETTLE_S,
) -> Claim:
    """Run the claim protocol (module docstring) for trial `number` of `study`, whose `config_hash` user
    attr is already recorded. Returns once this trial may train, or with the COMPLETE trial to serve from."""
    started = time.monotonic()
    waited_for: int | None = None
    undecided_since: dict[int, float] = {}
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        for t in trials:
            if (t.state == TrialState.COMPLETE and t.number != number
                    and t.user_attrs.get(CONFIG_HASH) == config_hash and usable(t)):
                return Claim(source=t, waited_for=waited_for)
        now = time.monotonic()
        # a lower trial without a hash only blocks for settle_s (it may be stuck before its claim)
        for t in trials:
            if t.state == TrialState.RUNNING and CONFIG_HASH not in t.user_attrs:
                undecided_since.setdefault(t.number, now)
        live = [t for t in trials if t.state == TrialState.RUNNING and (CONFIG_HASH in t.user_attrs or (
            now - undecided_since[t.number] < settle_s and _age_s(t) < settle_s))]
        owner = owner_of(live, number, config_hash)
        if owner >= number:
            return Claim(waited_for=waited_for, note=_took_over(waited_for))
        if CONFIG_HASH in _attrs(live, owner):
            waited_for = owner
        if now - started >= wait_s:
            who = f"trial {owner}" if owner == waited_for else f"trial {owner} (not yet claimed)"
            return Claim(waited_for=waited_for, note=(
                f"waited {now - started:.0f} s (the limit) for {who}, still RUNNING with no heartbeat failing "
                "it: trained here"))
        time.sleep(poll_s)
        if refresh is not None:
            refresh()


def _age_s(t: FrozenTrial) -> float:
    """Seconds since a trial started (its worker's clock; 0 when unknown): a trial left RUNNING long ago
    without a hash (its worker died between ask and claim) blocks no one."""
    if t.datetime_start is None:
        return 0.0
    return (datetime.datetime.now() - t.datetime_start).total_seconds()


def _attrs(trials: list[FrozenTrial], number: int) -> dict:
    return next((t.user_attrs for t in trials if t.number == number), {})


def _took_over(waited_for: int | None) -> str | None:
    if waited_for is None:
        return None
    return f"trial {waited_for} owned this config and ended without a usable result: trained here"
