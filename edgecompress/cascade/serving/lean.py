"""LeanCascade: the cascade routing of CascadeModel over array-in/array-out stages (e.g. ONNX Runtime
sessions), for serving and for latency measurement: numpy arrays throughout, no nn.Module dispatch, so
per-call routing overhead stays small next to sub-millisecond models.

Outputs equal CascadeModel's for the same stages (tested); use CascadeModel for a portable torch artefact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from edgecompress.cascade.planning.confidence import confidence
from edgecompress.cascade.planning.plan import CascadePlan, combine_weight, escalates
from edgecompress.evaluators.splits import resize_batch
from edgecompress.runtime.deployed import Deployed

ArrayStage = Callable[[np.ndarray], np.ndarray]


def resize_array(a: np.ndarray, size: int) -> np.ndarray:
    """The data pipeline's resize (antialiased bilinear) on an N x C x H x W float32 array."""
    if a.shape[-1] == size and a.shape[-2] == size:
        return a
    return resize_batch(torch.from_numpy(a), size).numpy()


def module_stage(module: torch.nn.Module) -> ArrayStage:
    """An nn.Module as an array stage (eval, no grad)."""
    module.eval()

    def run(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(a)).float().numpy()

    return run


def shared_pool_stages(paths: Sequence[str], threads: int = 2) -> list[ArrayStage]:
    """ONNX Runtime sessions for stages called in turn that share ONE intra-op thread pool: the process's global
    pool (runtime.backend_ort.use_global_thread_pool; its first call fixes the size for the whole process, and every
    later session of the process uses it), so idle per-session pools do not spin on the cores the next stage
    needs. Serve the fused graph (cascade/serving/fused.py) where one session will do."""
    import onnxruntime as ort

    from edgecompress.runtime.backend_ort import ort_session_options, use_global_thread_pool

    use_global_thread_pool(threads)
    out: list[ArrayStage] = []
    for p in paths:
        sess = ort.InferenceSession(str(p), sess_options=ort_session_options(threads, spinning=False),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out.append(lambda a, s=sess, n=name: s.run(None, {n: np.ascontiguousarray(a, dtype=np.float32)})[0])
    return out


def deployed_stage(deployed: Deployed) -> ArrayStage:
    """A deploy.Deployed model as an array stage (ONNX Runtime: the session is called directly)."""
    return deployed.run_array


class LeanCascade:
    """Calls stage k only on the samples still uncertain after stage k-1 (same rule as CascadeModel)."""

    def __init__(self, stages: Sequence[ArrayStage], plan: CascadePlan) -> None:
        if len(stages) != len(plan.stages):
            raise ValueError(f"plan has {len(plan.stages)} stages but {len(stages)} were given")
        self.stages, self.plan = list(stages), plan
        self._weight = combine_weight(plan.combine, plan.alpha)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.route(x)[0]

    def route(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits N x classes, exit stage per sample) for a float32 N x C x H x W array."""
        plan, m, n = self.plan, len(self.stages), x.shape[0]
        exit_stage = np.full(n, m - 1, dtype=np.int64)
        active: np.ndarray | None = None
        out: np.ndarray | None = None
        running: np.ndarray | None = None
        for k, stage in enumerate(self.stages):
            xk = x if active is None else x[active]
            z = stage(resize_array(xk, plan.stages[k].input_size))
            running = z if (running is None or self._weight is None) else running + self._weight * z
            if k < m - 1:
                conf = confidence(z, plan.kind, plan.temperatures[k])
                escalate = escalates(conf, plan.lows[k], plan.thresholds[k])
                n_esc = int(escalate.sum())
                if n_esc == len(escalate):
                    continue
                if n_esc > 0:
                    if active is None:
                        active = np.arange(n)
                    if out is None:
                        out = np.empty((n, running.shape[1]), dtype=np.float32)
                    stay = ~escalate
                    out[active[stay]] = running[stay]
                    exit_stage[active[stay]] = k
                    active, running = active[escalate], running[escalate]
                    continue
            # everybody still routed exits at stage k
            if active is None:
                exit_stage[:] = k
                return running.astype(np.float32, copy=False), exit_stage
            assert out is not None
            out[active] = running
            exit_stage[active] = k
            break
        assert out is not None
        return out, exit_stage
