"""search.claim's protocol for Ray trials, whose running trials the study does not see (the driver writes a
Tune trial into the study only once it has finished).

The driver starts one small actor per search (`ClaimBoard`, no CPU) and hands its handle to every trial.
A trial claims its config hash on the board: the first claimant still running owns the config and trains;
the others wait, looking every `poll_s` at the study (the config-hash cache) and at the board:
- the owner finished complete: the driver writes its trial shortly; the waiter is served from it once the
  study has it (`ec_waited_for`, then `cached_from` in the study);
- the owner failed, was stopped or raised: it is off the board, the next claimant owns the config and trains;
- `wait_s` passed (an owner lost with its node never releases its claim): the waiter trains, with a note.
Without a board (unit tests) or a study this node can reach, a trial just trains (the cache cannot help).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from edgecompress.search.claim import POLL_S
from edgecompress.search.objective import find_cached

SETTLE_S = 60.0  # longest wait for the driver to write a finished owner's trial into the study


class ClaimBoard:
    """Who owns each config hash among the running Ray trials of one search (a Ray actor: `start_board`)."""

    def __init__(self) -> None:
        self.claimants: dict[str, list[str]] = {}
        self.done: dict[str, str] = {}  # hash -> Tune trial id of an owner that finished complete

    def claim(self, config_hash: str, trial_id: str) -> str:
        """Register `trial_id` as a claimant; returns the owner (the first claimant still running)."""
        queue = self.claimants.setdefault(config_hash, [])
        if trial_id not in queue:
            queue.append(trial_id)
        return queue[0]

    def look(self, config_hash: str) -> tuple[str | None, str | None]:
        """(the owner now, the trial that finished it complete)."""
        queue = self.claimants.get(config_hash) or [None]
        return queue[0], self.done.get(config_hash)

    def release(self, config_hash: str, trial_id: str, complete: bool) -> None:
        """`trial_id` ended (`complete`: with a result the driver writes into the study)."""
        queue = self.claimants.get(config_hash, [])
        if trial_id in queue:
            queue.remove(trial_id)
        if complete:
            self.done[config_hash] = trial_id


def start_board() -> Any:
    """The search's ClaimBoard actor (no CPU: it must run beside trials that take every CPU)."""
    import ray

    return ray.remote(num_cpus=0)(ClaimBoard).remote()


def claim(board: Any, load_study: Callable[[], optuna.Study], config_hash: str, trial_id: str, wait_s: float,
          poll_s: float = POLL_S) -> tuple[FrozenTrial | None, dict[str, Any]]:
    """Run the protocol for one Ray trial: (COMPLETE trial to serve from or None to train, report keys
    "ec_waited_for" / "ec_claim_note" for the study)."""
    try:
        study: optuna.Study | None = load_study()
        source = find_cached(study, config_hash)
    except Exception:  # noqa: BLE001 - the storage is not reachable from this node: no cache, no claim
        study, source = None, None
    if source is not None or board is None or study is None:
        return source, {}
    import ray

    ray.get(board.claim.remote(config_hash, trial_id))
    started, waited, done_since = time.monotonic(), None, None
    while True:
        owner, finisher = ray.get(board.look.remote(config_hash))
        if finisher is None and owner == trial_id:
            break
        now = time.monotonic()
        waited = finisher or owner
        if finisher is not None:  # finished complete: its trial is about to be in the study
            done_since = done_since or now
        if now - started >= wait_s or (done_since is not None and now - done_since >= SETTLE_S):
            return None, {"ec_claim_note": f"waited {now - started:.0f} s (the limit) for Ray trial {waited}, "
                                           "whose result did not reach the study: trained here"}
        time.sleep(poll_s)
        source = find_cached(study, config_hash)
        if source is not None:
            return source, {"ec_waited_for": source.number}
    if waited is not None:
        return None, {"ec_claim_note": f"Ray trial {waited} owned this config and ended without a result: "
                                       "trained here"}
    return None, {}


def release(board: Any, config_hash: str, trial_id: str, complete: bool) -> None:
    """Tell the board this trial ended (fire and forget)."""
    if board is not None:
        board.release.remote(config_hash, trial_id, complete)
