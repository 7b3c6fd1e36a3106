"""The whole cascade as ONE ONNX graph: one session, one thread pool, measured as deployed.

Graph (input `input`: float N x C x H x W as the data pipeline gives it, any N >= 1):
  stage 0 runs on the batch (in-graph antialiased Resize to its size; none for a stage whose input is the native
  size, as a `crop: dic` stage's is: its own graph, box net -> crop -> classifier, starts from the raw canvas and
  crops at its classifier's resolution), its confidence (margin, max-softmax
  or negative entropy of softmax(logits / T)) is computed in the graph, and the samples inside the
  escalation band (low < conf < threshold, the rule of plan.escalates) are picked by NonZero; an `If` runs the
  next stage only when at least one sample escalates (batch 1 with nothing to escalate costs stage 0 plus
  the confidence), on those samples alone (Gather), and writes their outputs back (ScatterND). Later stages
  nest the same way inside the `then` branch. Outputs: `logits` (N x classes, combined per the plan) and
  `exit_stage` (int64 N). Each stage's deployed model (fp32 or int8 QDQ) is inlined with its names
  prefixed `s<k>/`; its weights live in the (sub)graph that runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecompress.cascade.planning.plan import CascadePlan, combine_weight
from edgecompress.errors import EdgeCompressError

FUSED_OPSET = 18  # Resize with antialias
INPUT, LOGITS, EXIT = "input", "logits", "exit_stage"

__all__ = ["EXIT", "INPUT", "LOGITS", "FusedCheck", "check_fused", "fused_cascade_graph", "fused_session",
           "measure_fused_overheads"]


def _load(model: Any) -> Any:
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _prepared(model: Any, k: int) -> Any:
    """Stage model at opset >= 18 with every name prefixed `s<k>/`."""
    from onnx import compose, version_converter

    model = _load(model)
    if _opset(model) < FUSED_OPSET:
        try:
            model = version_converter.convert_version(model, FUSED_OPSET)
        except Exception as e:  # noqa: BLE001 - the converter raises many types
            raise EdgeCompressError(f"fused cascade: cannot convert stage {k} to opset {FUSED_OPSET}: "
                                    f"{str(e).splitlines()[0]}") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise EdgeCompressError(f"fused cascade: stage {k} must have one input and one output, has "
                                f"{len(inputs)} and {len(model.graph.output)}")
    return compose.add_prefix(model, f"s{k}/")


class _Builder:
    """Collects nodes for one (sub)graph; names are globally unique (SSA over all nested graphs)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.inits = prefix, [], []

    def const(self, name: str, value: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        full = f"{self.prefix}{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        full = f"{self.prefix}{name}"
        self.nodes.append(helper.make_node(op, inputs, [full], name=f"{full}_op", **attrs))
        return full


def _confidence(b: _Builder, z: str, kind: str, temperature: float, classes: int) -> str:
    """Per-sample confidence of N x C logits `z`, as cascade.planning.confidence computes it (float32)."""
    if temperature != 1.0:
        z = b.node("Div", [z, b.const("temperature", np.float32(temperature), np.float32)], "z_t")
    if kind == "entropy":
        logp = b.node("LogSoftmax", [z], "logp", axis=1)
        plogp = b.node("Mul", [b.node("Exp", [logp], "p"), logp], "plogp")
        return b.node("ReduceSum", [plogp, b.const("axis1", [1], np.int64)], "conf", keepdims=0)
    p = b.node("Softmax", [z], "softmax", axis=1)
    if kind == "max_softmax" or classes == 1:
        return b.node("ReduceMax", [p, b.const("axis1", [1], np.int64)], "conf", keepdims=0)
    top = b.node("TopK", [p, b.const("k2", [2], np.int64)], "top2", axis=1)
    diff = b.node("Sub", [b.node("Slice", [top, b.const("s0", [0], np.int64), b.const("e1", [1], np.int64),
                                           b.const("ax", [1], np.int64)], "top1"),
                          b.node("Slice", [top, b.const("s1", [1], np.int64), b.const("e2", [2], np.int64),
                                           b.const("ax2", [1], np.int64)], "top2nd")], "margin2")
    return b.node("Squeeze", [diff, b.const("sq_ax", [1], np.int64)], "conf")


def _fix_topk_outputs(b: _Builder) -> None:
    """TopK has two outputs (values, indices): give the indices a name of their own."""
    for n in b.nodes:
        if n.op_type == "TopK" and len(n.output) == 1:
            n.output.append(n.output[0] + "_idx")


def fused_cascade_graph(stage_models: Sequence[Any], plan: CascadePlan, in_chans: int, native_size: int,
                        num_classes: int) -> Any:
    """ONE ONNX ModelProto running `plan` over `stage_models` (ModelProto or .onnx path, one float NCHW input and
    one logits output each, dynamic batch), input at `native_size`; see the module docstring for the graph."""
    import onnx
    from onnx import TensorProto, helper

    m = len(plan.stages)
    if len(stage_models) != m:
        raise ValueError(f"plan has {m} stages but {len(stage_models)} stage models were given")
    models = [_prepared(sm, k) for k, sm in enumerate(stage_models)]
    w = combine_weight(plan.combine, plan.alpha)
    resize_attrs = {"mode": "linear", "antialias": 1, "exclude_outside": 1,
                    "coordinate_transformation_mode": "half_pixel"}
    fvec = helper.make_tensor_value_info  # shorthand

    def block(k: int, idx: str | None, prev_running: str | None) -> tuple[_Builder, str, str]:
        """Nodes of stage k (and, nested, of every later stage) on the samples `idx` (None: all).
        Returns the builder and the names of its (M x classes) outputs and (M,) exit stages."""
        b = _Builder(f"c{k}/")
        x = INPUT if idx is None else b.node("Gather", [INPUT, idx], "x", axis=0)
        size = plan.stages[k].input_size
        if size != native_size:
            n_c = b.node("Shape", [x], "nc", start=0, end=2)
            sizes = b.node("Concat", [n_c, b.const("hw", [size, size], np.int64)], "sizes", axis=0)
            x = b.node("Resize", [x, "", "", sizes], "resized", **resize_attrs)
        sm = models[k]
        inits = {i.name for i in sm.graph.initializer}
        s_in = next(i.name for i in sm.graph.input if i.name not in inits)
        b.nodes.append(helper.make_node("Identity", [x], [s_in], name=f"c{k}/stage_in_op"))
        b.nodes.extend(sm.graph.node)
        b.inits.extend(sm.graph.initializer)
        z = sm.graph.output[0].name
        running = z if (prev_running is None or w is None) else b.node(
            "Add", [prev_running, b.node("Mul", [z, b.const("w", np.float32(w), np.float32)], "wz")], "running")
        if k == m - 1:
            ex = b.node("ConstantOfShape", [b.node("Shape", [running], "n", start=0, end=1)], "exit",
                        value=helper.make_tensor("v", TensorProto.INT64, [1], [k]))
            return b, running, ex
        conf = _confidence(b, z, plan.kind, plan.temperatures[k], num_classes)
        esc = b.node("Less", [conf, b.const("thr", np.float32(_f32(plan.thresholds[k])), np.float32)], "below")
        if plan.lows[k] != -math.inf:
            above = b.node("Greater", [conf, b.const("low", np.float32(_f32(plan.lows[k])), np.float32)], "above")
            esc = b.node("And", [above, esc], "escalate")
        lidx = b.node("Squeeze", [b.node("NonZero", [esc], "nz"), b.const("ax0", [0], np.int64)], "lidx")
        gidx = lidx if idx is None else b.node("Gather", [idx, lidx], "gidx", axis=0)
        n_esc = b.node("ReduceSum", [b.node("Cast", [esc], "esc_i", to=TensorProto.INT64)], "n_esc", keepdims=0)
        cond = b.node("Greater", [n_esc, b.const("zero", np.int64(0), np.int64)], "any")
        ex0 = b.node("ConstantOfShape", [b.node("Shape", [esc], "n", start=0, end=1)], "exit0",
                     value=helper.make_tensor("v", TensorProto.INT64, [1], [k]))
        prev = None if w is None else b.node("Gather", [running, lidx], "run_active", axis=0)
        sub, sub_out, sub_exit = block(k + 1, gidx, prev)
        sidx = sub.node("Unsqueeze", [lidx, sub.const("ax1", [1], np.int64)], "scatter_idx")
        t_out = sub.node("ScatterND", [running, sidx, sub_out], "then_out")
        t_exit = sub.node("ScatterND", [ex0, sidx, sub_exit], "then_exit")
        _fix_topk_outputs(sub)
        then_g = helper.make_graph(sub.nodes, f"stage{k + 1}", [],
                                   [fvec(t_out, TensorProto.FLOAT, None), fvec(t_exit, TensorProto.INT64, None)],
                                   initializer=sub.inits)
        e_out = f"c{k}/else_out"
        e_exit = f"c{k}/else_exit"
        else_g = helper.make_graph(
            [helper.make_node("Identity", [running], [e_out], name=f"{e_out}_op"),
             helper.make_node("Identity", [ex0], [e_exit], name=f"{e_exit}_op")],
            f"keep{k}", [], [fvec(e_out, TensorProto.FLOAT, None), fvec(e_exit, TensorProto.INT64, None)])
        out, ex = f"c{k}/out", f"c{k}/exit"
        b.nodes.append(helper.make_node("If", [cond], [out, ex], name=f"c{k}/if_op", then_branch=then_g,
                                        else_branch=else_g))
        return b, out, ex

    b, out, ex = block(0, None, None)
    b.nodes.append(helper.make_node("Identity", [out], [LOGITS], name="logits_op"))
    b.nodes.append(helper.make_node("Identity", [ex], [EXIT], name="exit_op"))
    _fix_topk_outputs(b)
    graph = helper.make_graph(
        b.nodes, "edgecompress_cascade",
        [fvec(INPUT, TensorProto.FLOAT, ["N", in_chans, native_size, native_size])],
        [fvec(LOGITS, TensorProto.FLOAT, ["N", num_classes]), fvec(EXIT, TensorProto.INT64, ["N"])],
        initializer=b.inits, doc_string=f"cascade {' -> '.join(plan.names)}, {plan.kind}, combine {plan.combine}")
    opsets: dict[str, int] = {"": FUSED_OPSET}
    for sm in models:
        for o in sm.opset_import:
            d = "" if o.domain == "ai.onnx" else o.domain
            opsets[d] = max(opsets.get(d, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="edgecompress.cascade")
    model.ir_version = max(8, *(sm.ir_version for sm in models))
    model.metadata_props.add(key="edgecompress.cascade_plan", value=_plan_json(plan))
    onnx.checker.check_model(model)
    return model


def _f32(t: float) -> float:
    """A threshold as float32 (+-inf kept): the runtime compares float32 confidences."""
    return float(np.float32(t)) if math.isfinite(t) else t


def _plan_json(plan: CascadePlan) -> str:
    import json

    return json.dumps(plan.to_dict(), sort_keys=True)


def fused_session(model: Any, threads: int = 2, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session for a fused cascade (ModelProto or path), with the deploy options."""
    import onnxruntime as ort

    from edgecompress.runtime.backend_ort import ort_session_options

    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, sess_options=ort_session_options(threads, spinning),
                                providers=["CPUExecutionProvider"])


@dataclass
class FusedCheck:
    """Agreement of the fused graph with the reference cascade on a set of inputs."""

    samples: int
    argmax_agreement: float
    route_agreement: float
    max_abs_diff: float  # over samples routed alike
    tolerance: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        return self.argmax_agreement >= self.min_agreement and self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_fused(session: Any, reference: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                batches: Sequence[np.ndarray], tolerance: float = 1e-3, min_agreement: float = 0.999,
                rel_tolerance: float = 0.0) -> FusedCheck:
    """Run the fused `session` and `reference` (x -> (logits, exit stage), e.g. CascadeModel.route or
    LeanCascade.route) on `batches`; logits are compared where both route a sample to the same exit (a sample
    within float rounding of a threshold may route differently; the argmax agreement bounds how often).
    The tolerance is max(`tolerance`, `rel_tolerance` x the largest |reference logit|): int8 stages fed by the
    in-graph resize instead of torch's can land one activation quantisation step apart."""
    n = agree = same_route = 0
    diff = scale = 0.0
    for x in batches:
        logits, ex = session.run([LOGITS, EXIT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})
        ref_logits, ref_ex = reference(x)
        ref_logits, ref_ex = np.asarray(ref_logits), np.asarray(ref_ex)
        scale = max(scale, float(np.abs(ref_logits).max()) if ref_logits.size else 0.0)
        n += len(x)
        agree += int((logits.argmax(1) == ref_logits.argmax(1)).sum())
        same = ex == ref_ex
        same_route += int(same.sum())
        if same.any():
            diff = max(diff, float(np.abs(logits[same] - ref_logits[same]).max()))
    if n == 0:
        raise ValueError("batches must hold at least one input (check_fused)")
    return FusedCheck(n, agree / n, same_route / n, diff, max(tolerance, rel_tolerance * scale), min_agreement)


def _linear_stage(in_chans: int, size: int, classes: int, seed: int) -> Any:
    """A trivial real stage (Flatten -> MatMul) at `size`: what the fused graph costs beyond its stages."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((in_chans * size * size, classes)).astype(np.float32) * 0.05
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_chans, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", FUSED_OPSET)])
    m.ir_version = 8
    return m


def _block_ms(fns: Sequence[Callable[[], Any]], calls: int, rounds: int) -> list[float]:
    """Per-call ms of each function: the fastest of `rounds` interleaved blocks of `calls` calls (drift hits all
    alike; the least-disturbed block stands for the uncontended cost on a shared machine)."""
    from edgecompress.runtime.timing import TimingOptions, time_blocks

    return time_blocks(fns, TimingOptions(warmup=max(10, calls // 4), rounds=rounds, calls=calls))


def measure_fused_overheads(in_chans: int, native_size: int, first_size: int, classes: int, kind: str = "margin",
                            batch_size: int = 1, threads: int = 2, calls: int = 200,
                            rounds: int = 7) -> dict[str, float]:
    """Measured cost of the fused graph beyond its stages, at `batch_size`, with trivial stages:
    `call_overhead_ms` (every call: input resize to `first_size`, confidence, the If test) and
    `routing_overhead_ms` (when some sample escalates: NonZero, Gather, resize, ScatterND)."""
    from edgecompress.cascade.planning.plan import StagePlan

    s0, s1 = _linear_stage(in_chans, first_size, classes, 0), _linear_stage(in_chans, native_size, classes, 1)
    x = np.random.default_rng(2).standard_normal((batch_size, in_chans, native_size, native_size)).astype(np.float32)
    x0 = np.ascontiguousarray(x[:, :, :first_size, :first_size])
    sess = [fused_session(s0, threads), fused_session(s1, threads)]
    fused = []
    for thr in (-math.inf, math.inf):
        plan = CascadePlan(stages=[StagePlan("a", first_size, 1.0), StagePlan("b", native_size, 1.0)],
                           thresholds=[thr], kind=kind)
        fused.append(fused_session(fused_cascade_graph([s0, s1], plan, in_chans, native_size, classes), threads))
    empty = fused_session(_identity_graph(), threads)  # the cost of one run() call itself
    a, b, none, every, call = _block_ms(
        [lambda: sess[0].run(None, {"input": x0}), lambda: sess[1].run(None, {"input": x}),
         lambda: fused[0].run(None, {INPUT: x}), lambda: fused[1].run(None, {INPUT: x}),
         lambda: empty.run(None, {"input": x0})], calls, rounds)
    return {"call_overhead_ms": max(0.0, none - a), "routing_overhead_ms": max(0.0, every - none - (b - call)),
            "run_call_ms": call, "batch_size": float(batch_size)}


def _identity_graph() -> Any:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "empty",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", FUSED_OPSET)])
    m.ir_version = 8
    return m
