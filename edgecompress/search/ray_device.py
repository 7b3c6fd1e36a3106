"""The device a Ray trial evaluates on, from the GPUs Ray assigned it (`--gpus-per-trial`).

Ray schedules a trial that asks for GPUs on a node with that many free (physical or declared with
`ray start --num-gpus`) and sets CUDA_VISIBLE_DEVICES to the ids it assigned (`ray.get_gpu_ids()`). The
trial's evaluator is told to use CUDA only where torch can use it (`torch.cuda.is_available()` inside the
trial); where it cannot (a GPU declared on a node without CUDA, a CPU-only torch), the trial runs on CPU and
records a one-line note instead of failing. A trial that asked for no GPU keeps the experiment's device.
The study records the outcome per trial: `ray_gpu_ids`, `trial_device` and, on a fallback, `device_note`.
"""

from __future__ import annotations

from typing import Any

from edgecompress.spaces.experiment import ExperimentConfig

RAY_GPU_IDS = "ray_gpu_ids"
TRIAL_DEVICE = "trial_device"
DEVICE_NOTE = "device_note"


def trial_device(exp: ExperimentConfig, gpus_per_trial: float, gpu_ids: list[Any],
                 cuda_available: bool) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The experiment a trial's evaluator is built from (its device set from the assigned GPUs) and the
    attrs describing that choice. Without GPUs asked, `exp` unchanged and only the (empty) ids recorded."""
    attrs: dict[str, Any] = {RAY_GPU_IDS: [str(g) for g in gpu_ids]}
    if not gpus_per_trial:
        return exp, attrs
    if cuda_available:
        device = "cuda"
    else:
        device = "cpu"
        attrs[DEVICE_NOTE] = (f"Ray assigned GPU {', '.join(attrs[RAY_GPU_IDS]) or '(none)'} but "
                              "torch.cuda.is_available() is False on this node: evaluated on CPU")
    attrs[TRIAL_DEVICE] = device
    return exp.model_copy(update={"device": exp.device.model_copy(update={"device": device})}), attrs


def assigned(ray: Any, gpus_per_trial: float) -> tuple[list[Any], bool]:
    """(GPU ids Ray assigned to this trial, whether torch can use CUDA here); ([], False) outside Ray or
    when the trial asked for no GPU (torch's CUDA is then not initialised for nothing)."""
    if not gpus_per_trial or not ray.is_initialized():
        return [], False
    import torch

    return list(ray.get_gpu_ids()), bool(torch.cuda.is_available())


def where(ray: Any) -> dict[str, Any]:
    """The Ray node and the resources Ray assigned to this trial (none outside a Ray worker)."""
    if not ray.is_initialized():  # outside a Ray worker (unit tests): asking would start a local Ray
        return {"ec_node": None, "ec_resources": None}
    try:
        ctx = ray.get_runtime_context()
        return {"ec_node": ctx.get_node_id(), "ec_resources": dict(ctx.get_assigned_resources())}
    except Exception:  # noqa: BLE001 - called outside a Ray worker (unit tests)
        return {"ec_node": None, "ec_resources": None}
