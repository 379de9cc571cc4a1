"""Simplify a traced ELBO graph: fold the shapes a trace records, and drop arithmetic that changes nothing.

A trace records every shape that Python code read (``x.size(0)`` for a plate, ``broadcast_all`` and ``expand`` in
the distributions, Pyro's plate scale recomputed from constants as ``to``, ``detach``, ``mul``, ``div``), and the
arithmetic of general code on the values it happened to get: a plate scale of 1, a standard prior's loc 0 and
scale 1 in the KL, ``broadcast_tensors`` of tensors that already have one shape. Each is a few microseconds per
step, and the ones that need gradients an autograd node as well. A graph here is specialised to its argument
shapes (they are part of its key), so folding the shapes is exact, and so is dropping ``x * 1``, ``x / 1`` and
``x - 0`` (IEEE arithmetic gives x itself, and its gradient is passed on unchanged) where the result has x's shape
and dtype. On the MLP VAE: 112 operations traced, 47 after the shapes are folded, 30 in the end
(docs/performance.md).

torch offers its passes (the ones its optimising executor runs, without that executor's own autodiff) and its
graph editing only as ``torch._C`` functions, hence the fallback to the graph as traced.
"""

from __future__ import annotations

from typing import Any

import torch

# (operation, position of the constant, its neutral value); sub's alpha must be 1.
_NEUTRAL = {"aten::mul": ((1, 1.0), (0, 1.0)), "aten::div": ((1, 1.0),), "aten::sub": ((1, 0.0),)}


def simplified(compiled: Any) -> Any:
    """``compiled`` (a traced function) with the shapes folded and the neutral arithmetic dropped, or itself."""
    try:
        graph = compiled.graph.copy()
        torch._C._jit_pass_peephole(graph, False)  # sizes of complete tensor types become constants
        torch._C._jit_pass_constant_propagation(graph)  # random ops are never folded
        torch._C._jit_pass_peephole(graph, False)
        torch._C._jit_pass_cse(graph)
        if not any(node.kind().endswith("_") for node in graph.nodes()):  # no in-place op could see an alias
            _drop_neutral_arithmetic(graph)
            _drop_same_shape_broadcasts(graph)
        torch._C._jit_pass_dce(graph)
        return torch._C._create_function_from_graph(getattr(compiled, "name", "graph"), graph)
    except (AttributeError, RuntimeError, TypeError):
        return compiled


def _same_type(a: Any, b: Any) -> bool:
    ta, tb = a.type(), b.type()
    if not (isinstance(ta, torch._C.TensorType) and isinstance(tb, torch._C.TensorType)):
        return False
    sizes = ta.sizes()
    return sizes is not None and sizes == tb.sizes() and ta.scalarType() == tb.scalarType() is not None


def _is_constant(value: Any, neutral: float) -> bool:
    if value.node().kind() != "prim::Constant":
        return False
    c = value.toIValue()
    if isinstance(c, torch.Tensor):
        return c.numel() > 0 and bool((c == neutral).all())
    return isinstance(c, int | float) and not isinstance(c, bool) and c == neutral


def _returned(value: Any) -> bool:
    return any(use.user.kind() == "prim::Return" for use in value.uses())


def _drop_neutral_arithmetic(graph: Any) -> None:
    for node in list(graph.nodes()):
        inputs = list(node.inputs())
        arity_ok = len(inputs) == 3 and _is_constant(inputs[2], 1.0) if node.kind() == "aten::sub" else len(inputs) == 2
        for position, neutral in _NEUTRAL.get(node.kind(), ()) if arity_ok else ():  # div's rounding mode: 3 inputs
            other, out = inputs[1 - position], node.output()
            if _is_constant(inputs[position], neutral) and _same_type(other, out) and not _returned(out):
                out.replaceAllUsesWith(other)
                break


def _drop_same_shape_broadcasts(graph: Any) -> None:
    """``ListUnpack(broadcast_tensors(ListConstruct(a, b, ...)))`` of tensors of one shape and dtype is (a, b, ...)."""
    for node in list(graph.nodes()):
        if node.kind() != "aten::broadcast_tensors":
            continue
        build = node.input().node()
        uses = node.output().uses()
        if build.kind() != "prim::ListConstruct" or len(uses) != 1 or uses[0].user.kind() != "prim::ListUnpack":
            continue
        parts, unpacked = list(build.inputs()), list(uses[0].user.outputs())
        if len(parts) == len(unpacked) and all(_same_type(p, u) for p, u in zip(parts, unpacked, strict=True)):
            if not any(_returned(u) for u in unpacked):
                for p, u in zip(parts, unpacked, strict=True):
                    u.replaceAllUsesWith(p)
