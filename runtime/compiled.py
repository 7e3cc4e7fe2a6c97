"""The compiled execution path: an entry point's GraphModule traced to ATen ops and compiled by
Inductor (fused C++ kernels for the float glue, direct calls of the integer GEMMs), with the
interpreted GraphModule as the fallback.

Why: a decode step interpreted op by op is a few thousand small ATen calls whose dispatch costs
more than the int8 matmuls themselves. Why not `torch.compile`: dynamo's bytecode trace of a
graph of thousands of nodes took minutes per entry point and its guards cost milliseconds per
step. Here `make_fx` traces the graph and `compile_fx` compiles it without guards (what that
buys and what compiling costs: docs/benchmarks.md, "Compiled reference path"); a variant is
compiled per input pattern (dtypes, which sizes are 0 or 1, which inputs are contiguous), and a
cheap check of the sizes the trace fixed sends any other call to the interpreter.

Numerics: the outputs equal the interpreter's bit for bit. The integer GEMMs are the same
`_int_mm` kernel (`int_gemm.int_matmul`, seeing fake tensors, only fixes the layout of a one-row
operand: no state is switched for the trace);
Inductor fuses only exactly rounded elementwise ops and calls the interpreter's ATen kernels for
reductions, transcendental functions and GEMMs (`EXACT_OPS`, spec Q.1), at a cost of about an
eighth of a decode step (CHANGELOG, sessions 6-7).

Inductor caches compiled graphs on disk (`TORCHINDUCTOR_CACHE_DIR`, by default under the
system temp dir): a later process traces again (make_fx and Inductor's own re-trace) but does
not lower or compile the C++ again. If compiling fails (no C++ compiler, an unsupported op), the
entry point warns once and runs interpreted.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from runtime import int_gemm

InputPattern = tuple[tuple[torch.dtype, tuple[int, ...], bool], ...]


def input_pattern(args: Sequence[torch.Tensor]) -> InputPattern:
    """What a compiled variant is specialized on: dtype, sizes 0 / 1 (kept, others as 2) and
    contiguity of each input."""
    return tuple((x.dtype, tuple(min(s, 2) for s in x.shape), x.is_contiguous()) for x in args)


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    int_gemm.int8_gemm_is_exact()  # probed (and cached) on real tensors, before anything is traced
    # no duck sizing: two inputs that happen to have equal sizes (a past length of 64 and a
    # head size of 64) must not become one symbol
    # (patch: added to the config module at import by torch's install_config_module, not in its stubs)
    with torch.fx.experimental._config.patch(use_duck_shape=False), torch.no_grad():  # type: ignore[attr-defined]
        yield


@dataclass
class Variant:
    """One compiled form of an entry point and the size contract its trace assumed."""

    run: Callable[..., Any]
    fixed: list[tuple[int, int, int]]  # (input, dim, size) the trace specialized
    tied: list[list[tuple[int, int]]]  # (input, dim) groups that share one size symbol
    compile_seconds: float

    def accepts(self, args: Sequence[torch.Tensor]) -> bool:
        if any(args[i].shape[d] != size for i, d, size in self.fixed):
            return False
        return all(len({args[i].shape[d] for i, d in group}) == 1 for group in self.tied)


def _contract(traced: fx.GraphModule) -> tuple[list[tuple[int, int, int]], list[list[tuple[int, int]]]]:
    """Sizes the trace fixed (constants after its shape guards) and sizes it tied together."""
    fixed: list[tuple[int, int, int]] = []
    symbols: dict[Any, list[tuple[int, int]]] = {}  # sympy symbol -> (input, dim)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        for d, size in enumerate(node.meta["val"].shape):
            if isinstance(size, int):
                fixed.append((i, d, size))
                continue
            expr = size.node.shape_env.replace(size.node.expr)
            if expr.is_number:
                fixed.append((i, d, int(expr)))
            elif expr.is_Symbol:
                symbols.setdefault(expr, []).append((i, d))
    return fixed, [g for g in symbols.values() if len(g) > 1]


# Ops whose float32 result is one IEEE rounding of exact arithmetic (or exact: moves, casts,
# compares, integer ops), so a fused C++ kernel gives the interpreter's bits. Every other op of a
# trace (reductions, transcendental functions, GEMMs) runs as a call of the same ATen kernel the
# interpreter calls: Inductor's own versions sum in another order (a mean over 576 channels, the
# P.V bmm of one row, which it turns into a product and a sum) or use other vectorized cos / exp,
# and one last-bit change upstream of a static int8 quantizer flips a rounding now and then,
# which moved SmolLM2 W8A8KV8's logits and parted greedy tokens (CHANGELOG, sessions 6-7).
EXACT_FLOAT_GLUE = True  # False: Inductor's own reductions and functions (measurement only)
EXACT_OPS = frozenset("""
    view _unsafe_view reshape permute transpose t expand clone contiguous slice select unsqueeze
    squeeze cat stack split split_with_sizes index index_select gather embedding as_strided alias
    copy copy_ _to_copy to detach lift_fresh_copy empty empty_like zeros zeros_like ones ones_like
    full full_like new_zeros new_ones new_empty new_full scalar_tensor arange fill fill_ masked_fill
    where constant_pad_nd repeat expand_copy slice_scatter select_scatter
    add sub rsub mul div neg abs sign sgn floor ceil round trunc clamp clamp_min clamp_max maximum
    minimum sqrt rsqrt eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and
    bitwise_or bitwise_not bitwise_xor bitwise_left_shift bitwise_right_shift __rshift__ __lshift__
    __and__ __or__ isnan isinf remainder fmod copysign index_fill index_put _int_mm sym_size
    sym_numel sym_stride
""".split())


def _exact(op: torch._ops.OpOverload, args: tuple[Any, ...]) -> bool:
    if op.overloadpacket.__name__ in EXACT_OPS:
        return True
    # x ** 2 is x * x in both ATen's kernel and Inductor's lowering (the norms' mean of squares)
    return op == torch.ops.aten.pow.Tensor_Scalar and args[1] == 2


def _inexact_ops(traced: fx.GraphModule) -> set[torch._ops.OpOverload]:
    if not EXACT_FLOAT_GLUE:
        return set()
    return {n.target for n in traced.graph.nodes if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload) and not _exact(n.target, n.args)}


@contextlib.contextmanager
def _aten_kernels_for(ops: set[torch._ops.OpOverload]) -> Iterator[None]:
    """Inductor lowers `ops` to calls of their ATen kernels (no decomposition, no fusion) while
    it compiles; its tables are restored after. A do-nothing custom pass names those ops in
    Inductor's cache key, so a graph cached without them (another program sharing the cache
    directory) is not reused. It names the vector ISA the C++ kernels are built for too:
    Inductor's key leaves it out, and a graph cached by a process with another
    `ATEN_CPU_CAPABILITY` (AVX-512 kernels, read by an AVX2 wrapper) returned garbage."""
    from torch._inductor import config, lowering
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.decomposition import decompositions, select_decomp_table

    class AtenKernelsKey(CustomGraphPass):
        def __call__(self, graph: fx.Graph) -> None:
            pass

        def uuid(self) -> str:
            return (f"mcq-aten-kernels-2:{pick_vec_isa()}:"
                    + ",".join(sorted(str(op) for op in ops)))

    saved_lowerings: dict[Callable[..., Any] | str, Callable[..., Any]] = {
        op: lowering.lowerings[op] for op in ops if op in lowering.lowerings}
    # the table compile_fx uses is a copy made once per process (functools.cache): both lose them
    cached = select_decomp_table()
    tables = [decompositions] if cached is decompositions else [decompositions, cached]
    saved_decomps = [{op: t.pop(op) for op in ops if op in t} for t in tables]
    for op in ops:
        lowering.lowerings[op] = lowering.fallback_handler(op, add_to_fallback_set=False)
    try:
        # emulate_precision_casts: a fused chain of bf16 ops rounds to bf16 after each op, as
        # the interpreter does, not once at the end
        with config.patch(post_grad_custom_post_pass=AtenKernelsKey(), emulate_precision_casts=True):
            yield
    finally:
        for op in ops:
            lowering.lowerings.pop(op, None)
        lowering.lowerings.update(saved_lowerings)
        for table, saved in zip(tables, saved_decomps):
            table.update(saved)


def compile_variant(module: fx.GraphModule, args: Sequence[torch.Tensor]) -> Variant:
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    start = time.perf_counter()
    with _tracing():
        # the graph's weights are real tensors (memory-mapped): they stay constants of the trace
        traced = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    fixed, tied = _contract(traced)
    # the trace's symbolic inputs as examples: real ones would make Inductor specialize every size
    examples = [n.meta["val"] for n in traced.graph.nodes if n.op == "placeholder"]
    with torch.no_grad(), _aten_kernels_for(_inexact_ops(traced)):
        run = compile_fx(traced, examples)
    assert callable(run)  # (compile_fx returns a file's path or weights for ahead-of-time builds only)
    return Variant(run, fixed, tied, time.perf_counter() - start)


class CompiledEntryPoint:
    """Calls a compiled variant for the inputs' pattern (compiling it on first use); on a compile
    error falls back to the interpreted module for good."""

    def __init__(self, name: str, module: fx.GraphModule) -> None:
        self.name, self.interpreted = name, module
        self.variants: dict[InputPattern, Variant] = {}
        self.error: str | None = None

    @property
    def compiled(self) -> bool:
        return self.error is None

    def __call__(self, *args: torch.Tensor) -> Any:
        key = input_pattern(args)
        variant = self.variants.get(key)
        if variant is None and self.error is None:
            try:
                variant = self.variants[key] = compile_variant(self.interpreted, args)
            except Exception as e:  # noqa: BLE001 - any compiler failure leaves the interpreter
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(f"entry point {self.name!r}: compiling failed ({self.error}); running the "
                              "interpreted graph", RuntimeWarning, stacklevel=2)
        if variant is not None and variant.accepts(args):
            with torch.no_grad():
                return variant.run(*args)
        return self.interpreted(*args)
