"""Frozen ternary layers for inference: ``for_inference(model)`` and ``TernaryInferenceLinear``.

A trained ``TernaryScaleTensor`` keeps what training needs: ``E`` (int8) and ``corr_accum`` (int64) per group,
the ballot counters and the update rule's buffers, and it recomputes its scale ``S`` from them at every call.
Generation needs none of that. ``for_inference(model)`` replaces, in place, every ``TernaryScaleTensor`` with a
``TernaryInferenceLinear`` that holds

    T_packed  uint8   [out_features, ceil(in_features / 4)]   the trits (format.py), unchanged
    S         float32 [out_features, in_features // group_size] the layer's scale, computed once
    bias      float32 [out_features] or None                   a converted model's frozen bias

or, in the ``tc`` layout (``layout``; ``format.tc_tiles``: the same bytes and scales in the order the tensor-core
decode GEMV's lanes read them, so that each of a warp's loads is contiguous), ``T_packed`` as ``T_tiles [N / 16,
in_features / 256, 2, 32, 16]`` and ``S`` as ``S_tiles [N / 16, in_features / 256, 2, 8, 256 / group_size]``.
``for_inference`` picks it for every layer on CUDA whose shape allows it (``layout="auto"``): on the H200 the GEMV
at one row took 3-24 % less time from it at six model shapes, and the ``3b`` step at batch 1 went from 892-893 to
938-939 tokens/s (``benchmarks/results/inference/h200-tc-layout/``). Under the same launch the outputs are the same
bits as from rows; the default launches of the two layouts differ, so their sums may round differently.

That is 0.3125 bytes a weight at group 64 (0.25 + 4 / 64) against 0.39 for the training state and 2 for bf16,
so a decode step reads 6.4x fewer weight bytes than the same model in bf16. ``W_eff = T * S`` is the trained
layer's ``effective_weight()`` bit for bit (``S`` is the reference's own ``bigint_scale``), so a frozen model's
outputs equal the trained model's up to the float summation order of the kernels.

The forward is ``ops.decode_forward`` (``ops/linear.py``'s ``decode_forward_torch`` reference,
``ops/decode_triton.py`` on CUDA: a GEMV kernel for 1-16 rows, expand + cuBLAS for prompts). A frozen layer has no
ballots: it cannot train (``ternary_step`` and the trainer ignore it); keep the trained model (or its checkpoint)
to train further.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .format import check_group_size, packed_shape, tc_rows, tc_tiles, tc_tiles_ok, tc_tiles_shapes
from .layer import TernaryScaleTensor, check_linear_input
from .ops.backend import get_ops
from .ops.linear import expand_weight

__all__ = ["TernaryInferenceLinear", "for_inference", "concat_linear", "LAYOUTS"]

#: a frozen layer's buffer layouts (module doc); ``for_inference`` also takes ``"auto"``
LAYOUTS = ("rows", "tc")

class TernaryInferenceLinear(nn.Module):
    """``y = x @ (T * S).T (+ bias)`` from ``T_packed`` and a fixed float32 group scale ``S``; no training state.

    Shapes: ``x [..., in_features] -> y [..., out_features]`` (fp32 / fp16 / bf16, y in x's dtype).
    Build one with ``from_trained(layer)`` (or ``for_inference(model)`` for a whole model).
    ``relu_square``: the layer returns ``relu(y) ** 2`` (exactly ``F.relu(y).square()`` on its plain output): the
    MLP's activation taken into the decode kernel's store (``with_relu_square``, ``for_inference``).
    ``layout``: ``"rows"`` or ``"tc"`` (module doc; ``to_layout`` converts the layer's own buffers).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, *, bias: bool = False,
                 device: Optional[torch.device] = None, backend: Optional[str] = None,
                 relu_square: bool = False, layout: str = "rows") -> None:
        super().__init__()
        check_group_size(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.backend = backend
        self.relu_square = relu_square
        t_shape, s_shape = self._shapes(layout)
        self.register_buffer("T_packed", torch.zeros(t_shape, dtype=torch.uint8, device=device))
        self.register_buffer("S", torch.zeros(s_shape, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    def _shapes(self, layout: str) -> tuple[tuple, tuple]:
        """``(T_packed, S)`` shapes of this layer in ``layout``; one-line ``ValueError`` for another name or a shape
        the ``tc`` layout does not take."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "rows":
            return packed_shape(self.out_features, self.in_features), (self.out_features,
                                                                       self.in_features // self.group_size)
        if not tc_tiles_ok(self.out_features, self.in_features, self.group_size):
            raise ValueError(f"layout 'tc' needs out_features % 16 == 0, in_features % 256 == 0 and group_size 64, "
                             f"128 or 256; this layer is [{self.out_features}, {self.in_features}] at group_size "
                             f"{self.group_size}")
        return tc_tiles_shapes(self.out_features, self.in_features, self.group_size)

    @property
    def layout(self) -> str:
        """``"tc"`` when the buffers hold ``T_tiles`` / ``S_tiles`` (5-D), else ``"rows"``."""
        return "tc" if self.T_packed.dim() == 5 else "rows"

    @torch.no_grad()
    def to_layout(self, layout: str) -> "TernaryInferenceLinear":
        """Rearrange this layer's ``T_packed`` and ``S`` into ``layout`` (new tensors on their device; the outputs
        stay the same bits); returns the layer."""
        self._shapes(layout)
        if layout != self.layout:
            convert = tc_tiles if layout == "tc" else tc_rows
            self.T_packed, self.S = convert(self.T_packed, self.S, self.in_features, self.group_size)
        return self

    @classmethod
    def from_trained(cls, layer: TernaryScaleTensor) -> "TernaryInferenceLinear":
        """The frozen twin of a trained layer (its pending ballots must be folded: ``ternary_step`` first)."""
        if not isinstance(layer, TernaryScaleTensor):
            raise TypeError(f"from_trained needs a TernaryScaleTensor, got {type(layer).__name__}")
        if layer.dirty:
            raise ValueError("from_trained: the layer has ballots not yet folded; call ternary_step(model) first")
        out = cls(layer.in_features, layer.out_features, layer.group_size, bias=layer.bias is not None,
                  device=torch.device("meta"), backend=layer.backend)
        out.T_packed = layer.T_packed.detach().clone()
        with torch.no_grad():
            out.S = layer.scale().to(torch.float32).contiguous()
        out.bias = None if layer.bias is None else layer.bias.detach().clone()
        return out

    @classmethod
    def concat(cls, layers: list["TernaryInferenceLinear"]) -> "TernaryInferenceLinear":
        """One frozen layer whose output is the layers' outputs side by side, ``[..., sum(out_features)]``: their
        rows stacked (``T_packed`` and ``S`` are row-major, so a row's bytes do not change; in the ``tc`` layout
        their blocks of 16 features). For projections that read the same input (attention's q, k, v and gate): one
        decode GEMV of 4N rows instead of four of N."""
        first = _check_stackable("concat", layers, cls, "in_features / group_size / backend / relu_square / layout",
                                 lambda m: (m.in_features, m.group_size, m.backend, m.relu_square, m.layout))
        out = cls(first.in_features, sum(m.out_features for m in layers), first.group_size,
                  bias=first.bias is not None, device=torch.device("meta"), backend=first.backend,
                  relu_square=first.relu_square, layout=first.layout)
        out.T_packed = torch.cat([m.T_packed for m in layers])
        out.S = torch.cat([m.S for m in layers]).contiguous()
        out.bias = None if first.bias is None else torch.cat([m.bias for m in layers])
        return out

    @classmethod
    def with_relu_square(cls, layer: "TernaryInferenceLinear") -> "TernaryInferenceLinear":
        """A layer on ``layer``'s buffers (shared, not copied) that returns ``relu(y) ** 2``."""
        if not isinstance(layer, cls):
            raise TypeError(f"with_relu_square needs a {cls.__name__}, got {type(layer).__name__}")
        out = cls(layer.in_features, layer.out_features, layer.group_size, bias=layer.bias is not None,
                  device=torch.device("meta"), backend=layer.backend, relu_square=True, layout=layer.layout)
        out.T_packed, out.S, out.bias = layer.T_packed, layer.S, layer.bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``."""
        check_linear_input(self, x, self.T_packed.device)
        lead = x.shape[:-1]
        # without a bias the op squares in its kernel's store; a bias comes first
        fused = self.relu_square and self.bias is None
        y = get_ops(x.device, self.backend).decode_forward(x.reshape(-1, self.in_features), self.T_packed, self.S,
                                                           self.in_features, self.group_size, fused)
        y = y.reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
            if self.relu_square:
                y = torch.relu(y).square()
        return y

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``W_eff = T * S`` ``[out_features, in_features]`` (allocates the full matrix)."""
        T_packed, S = self.T_packed, self.S
        if self.layout == "tc":
            T_packed, S = tc_rows(T_packed, S, self.in_features, self.group_size)
        return expand_weight(T_packed, S, self.in_features, self.group_size, dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}, frozen" + (", relu_square" if self.relu_square else "")
                + (", tc layout" if self.layout == "tc" else ""))


def for_inference(model: nn.Module, fuse_projections: bool = False, layout: str = "auto") -> nn.Module:
    """Replace every ``TernaryScaleTensor`` of ``model`` with its ``TernaryInferenceLinear`` (in place) and put
    the model in eval mode; returns ``model``. Layers with unfolded ballots are refused (one ``ValueError``
    naming the first). Anything else (embeddings, norms, float layers) is left as it is.

    ``fuse_projections``: modules that list sibling projections reading one input (``FUSABLE_PROJECTIONS``, e.g.
    ``ContextAttention``'s q, k, v, gate) get them as one ``concat`` layer under the listed name (the siblings
    are removed): one decode launch instead of four. Plain float ``nn.Linear`` siblings (a dense model, the
    baseline of ``bench_decode.py --fuse``) are fused the same way, their weights stacked (``concat_linear``).
    Modules that list projections whose output goes through ``relu(.) ** 2`` (``FUSABLE_RELU_SQUARE``: the
    ``MLP``'s ``up``) get those frozen layers ``with_relu_square`` (the module then leaves the activation to the
    layer: one kernel fewer a decode step's block; bit for bit the same values). Outputs equal the unfused ones
    up to float summation order, which is why it is off by default: the default frozen model keeps the trained
    model's layers one for one (decode speed with and without: ``docs/inference.md``, ``bench_decode.py --fuse``).

    ``layout``: ``"auto"`` (the default) puts every frozen layer whose buffers are on CUDA and whose shape allows it
    (``format.tc_tiles_ok``) in the ``tc`` layout, the rest in rows; ``"tc"`` every layer that allows it, on any
    device; ``"rows"`` none. The outputs are the same bits in either layout (the CPU and the other kernels read the
    ``tc`` layout back as rows at each call: slower there)."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"for_inference: layout must be 'auto', 'rows' or 'tc', got {layout!r}")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, TernaryScaleTensor)]
    for name, m in targets:
        if m.dirty:
            raise ValueError(f"for_inference: layer {name or '<root>'} has ballots not yet folded; call "
                             "ternary_step(model) first")
    if any(name == "" for name, _ in targets):
        raise TypeError("for_inference: model is itself a TernaryScaleTensor; use TernaryInferenceLinear.from_trained")
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, TernaryInferenceLinear.from_trained(m))
    if fuse_projections:
        for module in list(model.modules()):
            for fused_name, names in getattr(module, "FUSABLE_PROJECTIONS", ()):
                parts = [getattr(module, n, None) for n in names]
                if all(isinstance(p, TernaryInferenceLinear) for p in parts):
                    fused = TernaryInferenceLinear.concat(parts)
                elif all(type(p) is nn.Linear for p in parts):     # not a subclass: a QAT layer's scale is its own
                    fused = concat_linear(parts)
                else:
                    continue
                setattr(module, fused_name, fused)
                for n in names:
                    delattr(module, n)
            for name in getattr(module, "FUSABLE_RELU_SQUARE", ()):
                layer = getattr(module, name, None)
                if isinstance(layer, TernaryInferenceLinear) and not layer.relu_square:
                    setattr(module, name, TernaryInferenceLinear.with_relu_square(layer))
    if layout != "rows":
        for m in model.modules():
            if (isinstance(m, TernaryInferenceLinear) and tc_tiles_ok(m.out_features, m.in_features, m.group_size)
                    and (layout == "tc" or m.T_packed.device.type == "cuda")):
                m.to_layout("tc")
    return model.eval()


def _check_stackable(name: str, layers: list, cls: type, what: str, key) -> nn.Module:
    """The first of ``layers`` once they can be stacked row-wise into one layer: one or more ``cls``, equal in
    ``key(layer)`` (``what`` names it) and all with or all without a bias; else a one-line error."""
    if not layers or not all(isinstance(m, cls) for m in layers):
        raise TypeError(f"{name} needs one or more {cls.__name__} layers")
    first = layers[0]
    for m in layers[1:]:
        if key(m) != key(first):
            raise ValueError(f"{name}: layers differ in {what}: {first} vs {m}")
        if (m.bias is None) != (first.bias is None):
            raise ValueError(f"{name}: either every layer has a bias or none has")
    return first


def concat_linear(layers: list[nn.Linear]) -> nn.Linear:
    """One ``nn.Linear`` whose output is the layers' outputs side by side (their weight rows stacked), for float
    projections that read one input. One-line ``ValueError`` when they differ in ``in_features``, dtype, device or
    bias (``TypeError`` for no layers or another type)."""
    first = _check_stackable("concat_linear", layers, nn.Linear, "in_features / dtype / device",
                             lambda m: (m.in_features, m.weight.dtype, m.weight.device))
    out = nn.Linear(first.in_features, sum(m.out_features for m in layers), bias=first.bias is not None,
                    device="meta", dtype=first.weight.dtype)
    out.weight = nn.Parameter(torch.cat([m.weight.detach() for m in layers]),
                              requires_grad=first.weight.requires_grad)
    if first.bias is not None:
        out.bias = nn.Parameter(torch.cat([m.bias.detach() for m in layers]), requires_grad=first.bias.requires_grad)
    return out
