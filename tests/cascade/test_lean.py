"""LeanCascade (array stages) routes and combines exactly like CascadeModel (nn.Module stages)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.cascade.planning.plan import CascadePlan, StagePlan
from edgecompress.cascade.serving.cascade_model import CascadeModel
from edgecompress.cascade.serving.lean import LeanCascade, module_stage


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10)).eval()


@pytest.mark.parametrize("combine", ["last", "sum", "seed_alpha"])
def test_lean_equals_cascade_model(combine: str) -> None:
    stages = [tiny_cnn(0), tiny_cnn(1), tiny_cnn(2)]
    x = torch.randn(64, 1, 28, 28)
    # thresholds at the median confidence of each stage, so every stage keeps some samples and passes some
    from edgecompress.cascade.planning.confidence import confidence
    from edgecompress.evaluators.splits import resize_batch

    with torch.no_grad():
        c0 = confidence(stages[0](resize_batch(x, 14)).numpy(), "margin")
        c1 = confidence(stages[1](resize_batch(x, 20)).numpy(), "margin")
    t0 = float(np.median(c0))
    t1 = float(np.median(c1[c0 < t0]))  # among the samples stage 0 escalates
    thr = [t0, t1]
    plan = CascadePlan(stages=[StagePlan("a", 14, 0.1), StagePlan("b", 20, 0.2), StagePlan("c", 28, 0.4)],
                       thresholds=thr, kind="margin", combine=combine)
    ref_logits, ref_exit = CascadeModel(stages, plan, in_chans=1).route(x)
    lean_logits, lean_exit = LeanCascade([module_stage(s) for s in stages], plan).route(x.numpy())
    assert np.array_equal(lean_exit, ref_exit.numpy())
    assert set(lean_exit.tolist()) == {0, 1, 2}  # the routing was exercised at every stage
    np.testing.assert_allclose(lean_logits, ref_logits.numpy(), rtol=1e-5, atol=1e-6)
    # batch of one takes the fast paths
    one_l, one_e = LeanCascade([module_stage(s) for s in stages], plan).route(x[:1].numpy())
    np.testing.assert_allclose(one_l, ref_logits[:1].numpy(), rtol=1e-5, atol=1e-6)
    assert one_e[0] == ref_exit[0].item()
