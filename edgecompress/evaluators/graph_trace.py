"""One traced forward pass of any nn.Module, for evaluators/structure.py: each tensor's feature-map side
(through every torch function), global pooling, flattening of spatial maps, channel shuffles, attention, and
which modules add their input to their output (autograd's graph)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

_RESHAPES = {torch.reshape, torch.Tensor.reshape, torch.Tensor.view, torch.flatten, torch.Tensor.flatten}
_POOLS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "amax", "avg_pool2d", "max_pool2d"}
_SHUFFLES = {torch.transpose, torch.Tensor.transpose, torch.permute, torch.Tensor.permute, torch.Tensor.transpose_}


class Tracer(TorchFunctionMode):
    """Follows each tensor's feature-map side through every torch function; notes global pooling, flattening of
    spatial maps, channel shuffles and attention."""

    def __init__(self) -> None:
        super().__init__()
        self.side: dict[int, tuple[int, bool, int | None]] = {}  # id -> (side, pooled, source tensor id)
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.split: dict[int, int] = {}  # 5-D channel split -> id of the 4-D tensor it came from
        self.shuffled: dict[int, int] = {}
        self.shuffle_inputs: list[torch.Tensor] = []
        self.pool_inputs: list[int] = []
        self.flatten: bool = False
        self.attention: str | None = None

    def _info(self, t: torch.Tensor) -> tuple[int, bool, int | None] | None:
        return self.side.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in pytree.tree_leaves((args, kwargs))
               if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter)]  # activations, not weights
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            self.attention = "scaled_dot_product_attention"
        big = [t for t in ins if t.dim() == 4 and (t.shape[-1] * t.shape[-2] > 1 or name in _POOLS)]
        known = [self._info(t) for t in ins if self._info(t) is not None]
        for o in outs:
            if o.dim() == 4 and tuple(o.shape[-2:]) == (1, 1) and big and o.shape[1] == big[0].shape[1] \
                    and (name in _POOLS or not (self._info(big[0]) or (0, False))[1]):
                info = (min(big[0].shape[-2:]), True, id(big[0]))  # global pooling: keeps the pooled side
                self.pool_inputs.append(id(big[0]))
            elif o.dim() == 4 and not (known and all(k[1] for k in known) and tuple(o.shape[-2:]) == (1, 1)):
                info = (int(min(o.shape[-2:])), False, id(ins[0]) if ins else None)
            elif known:
                info = (min(k[0] for k in known), True, id(ins[0]))
            else:
                continue
            self.side[id(o)] = info
            self.keep.append(o)
        if func in _RESHAPES and ins and outs:
            src, o = ins[0], outs[0]
            if src.dim() == 4 and o.dim() == 5:
                self.split[id(o)] = id(src)
            elif id(src) in self.shuffled and o.dim() == 4:
                self.shuffle_inputs.append(self._by_id[self.shuffled[id(src)]])
            elif src.dim() == 4 and o.dim() == 2 and src.shape[-1] * src.shape[-2] > 1:
                info = self._info(src)
                if info is None or not info[1]:
                    self.flatten = True
        if func in _SHUFFLES and ins and outs and id(ins[0]) in self.split:
            self.shuffled[id(outs[0])] = self.split[id(ins[0])]
        elif name in ("contiguous", "clone") and ins and outs and id(ins[0]) in self.shuffled:
            self.shuffled[id(outs[0])] = self.shuffled[id(ins[0])]
        return out

    @property
    def _by_id(self) -> dict[int, torch.Tensor]:
        return {id(t): t for t in self.keep}


def _residual(out_fn: Any, in_fn: Any, max_unary: int = 3) -> bool:
    """Whether autograd node `out_fn` is (a few unary ops after) an addition one of whose operands is `in_fn`."""
    fn = out_fn
    for _ in range(max_unary + 1):
        if fn is None:
            return False
        if type(fn).__name__.startswith("AddBackward"):
            return any(nxt is in_fn for nxt, _ in fn.next_functions if nxt is not None)
        parents = [n for n, _ in fn.next_functions if n is not None and type(n).__name__ != "AccumulateGrad"]
        if len(parents) != 1:
            return False
        fn = parents[0]
    return False


def producers(t: torch.Tensor, layer_of: dict[int, str]) -> set[str]:
    """Conv/linear layers whose output channels reach tensor `t` through parameter-free ops (cat, split,
    activations, additions, reshapes) and norms; `layer_of` maps a layer output's autograd node to the layer."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if id(fn) in layer_of:  # a conv/linear output: that layer made these channels
            found.add(layer_of[id(fn)])
            continue
        stack += [n for n, _ in fn.next_functions if n is not None]
    return found


def trace(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[str, torch.Tensor] = {}
    in_fns: dict[str, Any] = {}
    residual: set[str] = set()
    attention = [n for m, n in names.items() if isinstance(m, nn.MultiheadAttention)
                 or (type(m).__name__.endswith("Attention") and hasattr(m, "qkv"))]

    def pre(m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            t = inputs[0]
            in_fns[names[m]] = t.grad_fn if t.grad_fn is not None else t  # leaf: compared by AccumulateGrad
            in_fns[names[m] + "#shape"] = tuple(t.shape)

    def post(m: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        n = names[m]
        outputs.setdefault(n, out)
        fn = in_fns.get(n)
        if fn is not None and in_fns.get(n + "#shape") == tuple(out.shape) and any(True for _ in m.parameters()):
            if isinstance(fn, torch.Tensor):  # the model's input itself
                return
            if _residual(out.grad_fn, fn):
                residual.add(n)

    handles = [m.register_forward_pre_hook(pre) for m in names if m is not model]
    handles += [m.register_forward_hook(post) for m in names if m is not model]
    tracer = Tracer()
    try:
        with torch.enable_grad(), tracer:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return {"outputs": outputs, "residual": residual, "tracer": tracer, "out": out, "attention": attention,
            "names": names}



class _ShuffleAsIdentity(TorchFunctionMode):
    """Channel shuffles (4-D -> 5-D view, transpose/permute, view back to 4-D) pass their input through
    unchanged, so autograd shows Torch-Pruning an identity where its index mapping of the 5-D view fails."""

    def __init__(self) -> None:
        super().__init__()
        self.split: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(5-D tensor) -> (it, its 4-D source)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and id(src) in self.split:
            source = self.split[id(src)][1]
            if func in _RESHAPES:
                return source
            out = func(*args, **kwargs)
            keeps = func in _SHUFFLES or getattr(func, "__name__", "") in ("contiguous", "clone")
            if isinstance(out, torch.Tensor) and keeps:
                self.split[id(out)] = (out, source)
            return out
        out = func(*args, **kwargs)
        if func in _RESHAPES and src is not None and src.dim() == 4 and isinstance(out, torch.Tensor) \
                and out.dim() == 5:
            self.split[id(out)] = (out, src)
        return out


@contextlib.contextmanager
def shuffle_as_identity() -> Iterator[None]:
    """Build Torch-Pruning's graph with every channel shuffle seen as an identity (its 5-D view otherwise
    divides by zero in `update_reshape_index_mapping`). Safe only because structure.py keeps every layer
    whose channels go through a shuffle, and each group coupled with one, out of pruning."""
    with _ShuffleAsIdentity():
        yield
