"""TrialRecord: typed reads of a trial's user attrs (today's defaults), and the writers, on real Optuna trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from edgecompress.study import TrialRecord
from edgecompress.study import attrs as A


def test_absent_attributes_read_as_the_search_always_did() -> None:
    rec = TrialRecord.of({})
    assert rec.fidelity == A.DEFAULT_FIDELITY == "proxy"
    assert rec.violations == {} and rec.prune_clamped == {} and rec.val_curve == [] and rec.enqueued is False
    for field in ("config", "config_hash", "state_detail", "fail_reason", "artefact_dir", "artefact_uri",
                  "cached_from", "waited_for", "claim_note", "latency_source", "retry_of", "proxy_trial",
                  "weights_hash"):
        assert getattr(rec, field) is None, field
    assert not rec.has("config_hash")


def test_stored_names_are_the_attrs_constants() -> None:
    fields = TrialRecord.fields()
    assert fields["weights_hash"] == A.WEIGHTS_HASH and fields["val_curve"] == A.VAL_CURVE
    assert fields["latency_source"] == A.LATENCY_SOURCE and fields["config_hash"] == A.CONFIG_HASH
    assert TrialRecord.attrs(config_hash="h", weights_hash="w", cached_from=None) == {
        A.CONFIG_HASH: "h", A.WEIGHTS_HASH: "w", A.CACHED_FROM: None}
    with pytest.raises(TypeError, match="no trial attribute 'bogus'"):
        TrialRecord.attrs(bogus=1)


def test_typed_reads_of_wrong_types_fall_back_to_the_default() -> None:
    rec = TrialRecord.of({A.CACHED_FROM: 3.0, A.RETRY_OF: True, A.FIDELITY: 1, A.VIOLATIONS: "x", A.CONFIG: [1]})
    assert rec.cached_from == 3 and rec.retry_of is None and rec.fidelity == "proxy"
    assert rec.violations == {} and rec.config is None


def test_frozen_trial_round_trip_metrics_and_links() -> None:
    attrs = {"accuracy": 0.9, **TrialRecord.attrs(
        config={"prune": 0.5}, config_hash="abc", state_detail="complete", violations={"max_size_bytes": -1.0},
        artefact_dir="/x", latency_source="estimated", fidelity="final", proxy_trial=4, weights_hash="ff")}
    t = create_trial(state=TrialState.COMPLETE, values=[0.9], params={"p": 0.5},
                     distributions={"p": FloatDistribution(0, 1)}, user_attrs=attrs)
    rec = TrialRecord.of(t)
    assert (rec.config, rec.config_hash, rec.state_detail) == ({"prune": 0.5}, "abc", "complete")
    assert (rec.latency_source, rec.fidelity, rec.proxy_trial, rec.weights_hash) == ("estimated", "final", 4, "ff")
    assert rec.violations == {"max_size_bytes": -1.0} and rec.artefact_dir == "/x"
    assert rec.links == {A.PROXY_TRIAL: 4, A.FIDELITY: "final", A.CONFIG_HASH: "abc"}
    assert "accuracy" in rec.metrics and A.CONFIG not in rec.metrics and A.LATENCY_SOURCE in rec.metrics


def test_write_sets_user_attrs_on_a_live_trial() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    trial = study.ask()
    TrialRecord.write(trial, config_hash="h1", artefact_dir="/t/0", val_curve=[0.5, 0.6])
    assert trial.user_attrs == {A.CONFIG_HASH: "h1", A.ARTEFACT_DIR: "/t/0", A.VAL_CURVE: [0.5, 0.6]}
    rec = TrialRecord.of(trial)
    assert (rec.config_hash, rec.val_curve) == ("h1", [0.5, 0.6])
    with pytest.raises(TypeError):
        TrialRecord.of(42)
