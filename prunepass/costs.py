"""FLOPs (multiply-accumulates) and parameter counts as sympy polynomials in the widths of the
prunable groups, derived once from the IR and evaluated in microseconds for any plan."""

from __future__ import annotations

import math
from collections.abc import Callable

import sympy
import torch
from torch import fx

from prunepass.analysis import Analysis
from prunepass.dims import Dim, Sym
from prunepass.rules._ops import overloads

_CONV = set(overloads("conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding", "conv2d.padding",
                      "conv3d.padding", "convolution.default"))
_CONV_T = set(overloads("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input"))
_LINEAR = set(overloads("linear.default"))
_MATMUL = set(overloads("matmul.default", "mm.default", "bmm.default", "addmm.default", "baddbmm.default"))
_SDPA = set(overloads("scaled_dot_product_attention.default"))


class CostModel:
    """``macs(widths)`` and ``params(widths)`` for ``widths = {group name: channels kept}``."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.group_names = [g.name for g in analysis.prunable_groups]
        self._symbols = {name: sympy.Symbol(name, positive=True, integer=True) for name in self.group_names}
        self.params_expr = sympy.expand(self._params())
        self.macs_expr = sympy.expand(self._macs())
        args = [self._symbols[n] for n in self.group_names]
        self._params_fn: Callable = sympy.lambdify(args, self.params_expr, "math")
        self._macs_fn: Callable = sympy.lambdify(args, self.macs_expr, "math")
        self.base_params = self.params()
        self.base_macs = self.macs()

    # ---------------------------------------------------------------- expressions
    def expr(self, d: Dim) -> sympy.Expr:
        """Size of a dim as a polynomial in the prunable group widths."""
        return self._expr(self.analysis.flow.solver.norm(d))

    def _expr(self, x) -> sympy.Expr:
        if isinstance(x, int):
            return sympy.Integer(x)
        if isinstance(x, Sym):
            name = self.analysis._names.get(x)
            if name in self._symbols:
                return self._symbols[name]
            return sympy.Integer(self.analysis.flow.solver.size_of(x))
        return sympy.Add(*[sympy.Mul(*[self._expr(f) for f in seg]) for seg in x.segs])

    def _dims(self, node: fx.Node) -> list[sympy.Expr]:
        return [self.expr(d) for d in self.analysis.flow.env[node]]

    def _params(self) -> sympy.Expr:
        total = sympy.Integer(0)
        for node in self.analysis.flow.graph.nodes:
            gi = self.analysis.captured.inputs.get(node.name) if node.op == "placeholder" else None
            if gi is None or gi.kind != "parameter" or node.name in self.analysis.captured.aliases:
                continue
            dims = self.analysis.flow.env.get(node)
            total += sympy.Mul(*self._dims(node)) if dims else sympy.Integer(1)
        return total

    def _macs(self) -> sympy.Expr:
        total = sympy.Integer(0)
        for node in self.analysis.flow.graph.nodes:
            if node.op == "call_function":
                total += self.node_macs(node)
        return total

    def node_macs(self, node: fx.Node) -> sympy.Expr:
        """Multiply-accumulates of one node (convolutions, linear layers, matmuls, attention)."""
        env = self.analysis.flow.env
        if not isinstance(env.get(node), list):
            return sympy.Integer(0)
        out = sympy.Mul(*self._dims(node))
        op = node.target
        if op in _CONV or op in _CONV_T:
            w = self._dims(node.args[1])
            per_out = sympy.Mul(*w[1:]) if op in _CONV else sympy.Mul(*w[2:]) * w[0] / self._groups(node)
            if op in _CONV_T:
                x = self._dims(node.args[0])
                return sympy.Mul(*x) * w[1] * sympy.Mul(*w[2:])
            return out * per_out
        if op in _LINEAR:
            return out * self._dims(node.args[1])[1]
        if op in _MATMUL:
            a = node.args[1] if str(op).startswith(("aten.addmm", "aten.baddbmm")) else node.args[0]
            return out * self._dims(a)[-1]
        if op in _SDPA:
            q, k = self._dims(node.args[0]), self._dims(node.args[1])
            v = self._dims(node.args[2])
            batch = sympy.Mul(*q[:-2])
            return batch * q[-2] * k[-2] * (q[-1] + v[-1])
        return sympy.Integer(0)

    @staticmethod
    def _groups(node: fx.Node) -> int:
        g = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        return int(g)

    # ---------------------------------------------------------------- evaluation
    def _args(self, widths: dict[str, int] | None) -> list[int]:
        sizes = {g.name: g.size for g in self.analysis.prunable_groups}
        if widths:
            sizes.update({k: v for k, v in widths.items() if k in sizes})
        return [sizes[n] for n in self.group_names]

    def params(self, widths: dict[str, int] | None = None) -> int:
        return int(round(self._params_fn(*self._args(widths))))

    def macs(self, widths: dict[str, int] | None = None) -> int:
        return int(round(self._macs_fn(*self._args(widths))))

    def flops(self, widths: dict[str, int] | None = None) -> int:
        """FLOPs counted as 2 x MACs (the convention of torch.utils.flop_counter)."""
        return 2 * self.macs(widths)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """2 x (q.k^T + p.v) multiply-accumulates, like the counter's GPU attention kernels."""
    *batch, lq, e = query_shape
    s, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * lq * s * (e + ev)


def count_flops(model: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> int:
    """Independent FLOP count of an eager module (torch.utils.flop_counter; the CPU attention
    kernel, which the counter does not know, is counted like the GPU kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {op.overloadpacket: _sdpa_flops for op in overloads(
        "_scaled_dot_product_flash_attention_for_cpu.default", "_scaled_dot_product_attention_math.default")}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(*args, **(kwargs or {}))
    return int(counter.get_total_flops())


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CostModel", "count_flops", "count_params", "math"]
