"""`--gpus-per-trial` without a GPU: Ray accepts declared (logical) GPUs, so a local Ray with num_gpus=2 runs
a tiny search with one GPU per trial; each trial records the GPU id Ray assigned it, and its evaluator is
told to use CUDA only where torch has it (here: a CPU fallback with a one-line note, not a crash)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from edgecompress.search.ray_device import trial_device
from edgecompress.study import load_study


def test_trial_device_from_assigned_gpus(fakes) -> None:
    exp = fakes.small_experiment(device={"device": "cuda"})
    same, attrs = trial_device(exp, 0.0, [], False)
    assert same is exp and attrs == {"ray_gpu_ids": []}
    cuda, attrs = trial_device(exp, 1.0, [1], True)
    assert cuda.device.device == "cuda" and attrs == {"ray_gpu_ids": ["1"], "trial_device": "cuda"}
    cpu, attrs = trial_device(exp, 1.0, [1], False)
    assert cpu.device.device == "cpu" and exp.device.device == "cuda"  # a copy: the experiment is untouched
    assert attrs["trial_device"] == "cpu" and "\n" not in attrs["device_note"]
    assert "GPU 1" in attrs["device_note"] and "torch.cuda.is_available() is False" in attrs["device_note"]


@pytest.mark.slow  # ~35 s on 2 loaded cores (Ray start-up)
def test_one_declared_gpu_per_trial_and_cpu_fallback(fakes, tmp_path: Path, runs: Path) -> None:
    import ray
    import ray.cloudpickle

    from edgecompress.search.ray_runner import run_ray_search

    for name in (fakes.FakeEvaluator.__module__, __name__):  # Ray workers cannot import test modules
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])
    log = tmp_path / "calls.log"

    class Told(fakes.FakeEvaluator):
        """Records the device its experiment told it to use, and what torch says in the trial."""

        def __init__(self, exp) -> None:  # noqa: ANN001
            super().__init__(log, delay=2.0, epochs=0)
            self.device = exp.device.device

        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            result = super().__call__(config, artefact_dir, None)
            result.metrics.update(told_device=self.device, cuda_in_trial=torch.cuda.is_available())
            return result

    assert not ray.is_initialized()  # run_ray_search starts its own Ray, declaring 2 x 1 GPUs
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False},
                                 space={"prune": {"low": 0.0, "high": 0.7}})
    summary = run_ray_search(exp, "gpus", trials=2, max_concurrent=2, cpus_per_trial=1.0, gpus_per_trial=1.0,
                             evaluator_factory=Told)
    assert summary.stats.finished == 2 and not ray.is_initialized()
    trials = load_study("gpus").trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        ids = t.user_attrs["ray_gpu_ids"]
        assert len(ids) == 1 and ids[0] in ("0", "1")  # one GPU id each
        assert t.user_attrs["ray_resources"].get("GPU") == 1.0
        cuda = t.user_attrs["cuda_in_trial"]
        assert t.user_attrs["told_device"] == t.user_attrs["trial_device"] == ("cuda" if cuda else "cpu")
        if not cuda:
            assert "evaluated on CPU" in t.user_attrs["device_note"]
