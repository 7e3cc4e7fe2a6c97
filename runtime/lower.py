"""Graph section + qformat -> torch.fx.GraphModule at a chosen qlevel (spec: "Qlevels").

Modes:
- FLOAT (0): the captured graph as is (float weights required).
- OBSERVE: float graph with calibration hooks at every quant point (toolkit only), computed in
  float64 where the graph computes in float32 (see `widen`).
- 2: fake quantization in float (quantize-dequantize), float KV cache.
- 3: every quantized tensor is materialized in its storage dtype; the integer arithmetic of
  linears and attention matmuls is emulated exactly in float64; KV cache in kv dtype.
- 4: integer kernels (int8 x int8 -> int32) at linears and attention matmuls; bit-identical to 3,
  except weight-only linears, which run on torch's packed bf16 kernels within spec Q.4a.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import fx, nn

from mcq_format import quant as quant_formats
from runtime import numerics
from runtime.ir import Graph, Node, Ref, Symbol, TensorRef
from runtime.memory import Arena
from runtime.numerics import QuantParams
from runtime.ops import DTYPES, KV_POINT, LAYOUTS, MEMORY_FORMATS, OPS
from runtime.quant_modules import (
    Dequantize,
    FakeQuantize,
    LastPosition,
    Observe,
    Observer,
    OutlierProduct,
    QBmm,
    QEmbedding,
    QLinear,
    Quantize,
    QuantizeInput,
    WeightOnlyLinear,
)
from runtime.weight_only import BF16_INT4, prepare_weight_only

FLOAT = 0
OBSERVE = -1
QLEVELS = (FLOAT, 2, 3, 4)

LINEAR = "aten.linear.default"
BMM = "aten.bmm.default"
EMBEDDING = "aten.embedding.default"

TensorSource = Callable[[str], torch.Tensor]

_T = TypeVar("_T")


class LoweringError(ValueError):
    pass


def widen(x: Any) -> Any:
    """float32 -> float64 (anything else unchanged): what calibration computes in.

    Why: float32 kernels round differently from one CPU to the next (BLAS and vectorized loops
    sum in other orders), and calibration decisions amplify last-bit differences: GPTQ's error
    feedback turns one flipped rounding into a different weight row (docs/benchmarks.md, issue
    22). Observed in float64, statistics agree across CPUs to ~1e-16 and round to the same
    float32 values, so the bundle's bytes do too."""
    return x.to(torch.float64) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x


def past_input_name(layer: int, which: int) -> str:
    return f"past.{layer}.{'kv'[which]}"


def present_output_name(layer: int, which: int) -> str:
    return f"present.{layer}.{'kv'[which]}"


# quant format id (spec Q.2a) -> (numerics kind, bits)
# (from mcq_format's registry: the format and the runtime share one table)
_KINDS = {"int": numerics.INT, "fp8": numerics.FP8, "bf16": numerics.BF16}
FORMATS = {fid: (_KINDS[f.kind], f.bits) for fid, f in quant_formats.FORMATS.items()}
SUPPORTED_GRANULARITIES = quant_formats.GRANULARITIES


def _format(spec: Mapping[str, Any]) -> tuple[str, int]:
    fmt = FORMATS.get(spec.get("dtype", ""))
    if fmt is None or fmt[1] != spec.get("nbits"):
        raise LoweringError(f"quant format {spec.get('dtype')!r} with {spec.get('nbits')} bits is not "
                            f"implemented by this runtime (scale tensor {spec.get('scale')!r})")
    return fmt


def grid(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(qmin, qmax) of a spec's format: the integer range, or +-448 for fp8."""
    kind, bits = _format(spec)
    if kind == numerics.INT:
        return numerics.qrange(bits, bool(spec["symmetric"]))
    return -int(numerics.FP8_MAX), int(numerics.FP8_MAX)


def quant_params(spec: Mapping[str, Any], tensor: TensorSource) -> QuantParams:
    kind, _ = _format(spec)
    gran = spec.get("granularity", "tensor")
    if gran not in SUPPORTED_GRANULARITIES:
        raise LoweringError(f"granularity {gran!r} is not implemented by this runtime (scale tensor "
                            f"{spec.get('scale')!r})")
    qmin, qmax = grid(spec)
    no_scale = kind == numerics.BF16  # a cast: the spec names no scale
    return QuantParams(
        scale=torch.ones(()) if no_scale else tensor(spec["scale"]).to(torch.float32),
        zero_point=torch.zeros((), dtype=torch.int32) if no_scale else tensor(spec["zero_point"]).to(torch.int32),
        qmin=qmin,
        qmax=qmax,
        axis=None if gran in ("tensor", "rotated_tensor") or no_scale else int(spec["axis"]),
        per_head=gran == "head",
        smooth=tensor(spec["smooth"]).to(torch.float32) if spec.get("smooth") else None,
        outliers=tensor(spec["outliers"]).to(torch.int64) if spec.get("outliers") else None,
        group_size=int(spec["group_size"]) if gran == "group" else None,
        kind=kind,
        rotation=rotation_factors(spec, tensor) if gran == "rotated_tensor" else None,
    )


def rotation_factors(spec: Mapping[str, Any], tensor: TensorSource) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The (A, B) Kronecker factors a "rotated_tensor" spec names (spec Q.2): square float32 matrices."""
    names = spec.get("rotation")
    if not isinstance(names, (list, tuple)) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise LoweringError(f"granularity rotated_tensor needs 'rotation': [A, B] (two tensor names), got "
                            f"{names!r} (scale tensor {spec.get('scale')!r})")
    factors = tuple(tensor(n).to(torch.float32) for n in names)
    for name, f in zip(names, factors):
        if f.dim() != 2 or f.shape[0] != f.shape[1]:
            raise LoweringError(f"rotation factor {name!r} has shape {list(f.shape)}: a square matrix is required")
    a, b = factors
    # an identity A (block-diagonal rotation) multiplies nothing: skipping it gives the same values
    return (None if torch.equal(a, torch.eye(a.shape[0])) else a), b


def table_params(spec: Mapping[str, Any], tensor: TensorSource) -> tuple[QuantParams, torch.Tensor | None]:
    """An embedding table's row quantization and the smoothing its rows are divided by (spec Q.3a):
    `smooth` here divides dequantized rows, it does not pre-divide a quantizer's input."""
    qp = quant_params({k: v for k, v in spec.items() if k != "smooth"}, tensor)
    return qp, tensor(spec["smooth"]).to(torch.float32) if spec.get("smooth") else None


def stored_weight(name: str, spec: Mapping[str, Any], tensor: TensorSource) -> torch.Tensor:
    """A quantized weight as numerics takes it: int4 unpacked from its two-per-byte file layout."""
    w = tensor(name)
    if spec.get("dtype") == "int4":
        if not isinstance(spec.get("shape"), list):
            raise LoweringError(f"int4 weight {name!r}: its spec has no unpacked 'shape' (spec Q.2a)")
        shape = [int(d) for d in spec["shape"]]
        return numerics.unpack_int4(w, shape[-1]).reshape(shape)
    return w


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    """Zero-copy view of a (possibly read-only, memory-mapped) array."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only mmap: the runtime never writes weights
        return torch.from_numpy(a)


class _Builder:
    def __init__(self, graph: Graph, tensor: TensorSource, qformat: Mapping[str, Any] | None,
                 mode: int, observer: Observer | None, shared: dict[Any, Any] | None = None,
                 last_position_logits: bool = False) -> None:
        if mode not in QLEVELS and mode != OBSERVE:
            raise LoweringError(f"qlevel must be one of {QLEVELS}, got {mode}")
        if mode == OBSERVE and observer is None:
            raise LoweringError("OBSERVE mode needs an observer")
        self.graph, self.tensor, self.mode, self.observer = graph, tensor, mode, observer
        self.qnodes: Mapping[str, Any] = (qformat or {}).get("nodes", {}) if mode != FLOAT else {}
        self.fx = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, fx.Node] = {}
        self.attrs: dict[str, fx.Node] = {}
        self.widened: dict[str, fx.Node] = {}  # OBSERVE: the float64 value of each attr
        self.modules = 0
        # kv points hold both forms at qlevels 3/4: stored (graph outputs) and dequantized (consumers)
        self.stored: dict[str, fx.Node] = {}
        # past-KV inputs (qlevels 3/4) -> their dequantization, emitted at the first consumer, not
        # beside the placeholders: each layer's float copy of its past then lives only while that
        # layer runs, instead of every layer's at once for the whole step
        self.pending_dequantize: dict[str, nn.Module] = {}
        # weights prepared for kernels (unpacked, packed, row sums) are made once per model, not
        # once per graph: prefill and decode share them (load time and resident memory)
        self.shared: dict[Any, Any] = {} if shared is None else shared
        self.output_refs = {v.name for _, v in graph.outputs if isinstance(v, Ref)}
        # generation needs the logits of the last position only: the linear that produces the
        # `logits` output reads just that position (1/seq of the work, no [seq, vocab] temporaries)
        self.last_position_of = {v.name for n, v in graph.outputs if n == "logits" and isinstance(v, Ref)} \
            if last_position_logits else set()
        self.fake_quant_nodes: dict[str, tuple[str, str]] = {}  # qlevel 2: fx node -> (qkey, role)

    # -- helpers -------------------------------------------------------------------------------
    def once(self, key: Any, make: Callable[[], _T]) -> _T:
        if key not in self.shared:
            self.shared[key] = make()
        made: _T = self.shared[key]
        return made

    def release(self, name: str) -> None:
        """A stored tensor no kernel reads any more (repacked): its file pages may leave memory
        (a tensor source from a file offers `release`; in-memory sources do not)."""
        release = getattr(self.tensor, "release", None)
        if release is not None:
            release(name)

    def get_attr(self, name: str, value: torch.Tensor | None = None) -> fx.Node:
        if name not in self.attrs:
            attr = "t_" + re.sub(r"\W", "_", name) + f"_{len(self.attrs)}"
            self.root.register_buffer(attr, self.tensor(name) if value is None else value, persistent=False)
            self.attrs[name] = self.fx.get_attr(attr)
            if self.mode == OBSERVE:  # widened where read (the buffer stays the source's tensor)
                self.widened[name] = self.fx.call_function(widen, (self.attrs[name],))
        return self.widened.get(name, self.attrs[name])

    def call_module(self, module: nn.Module, args: tuple[Any, ...], hint: str) -> fx.Node:
        name = f"q{self.modules}_" + re.sub(r"\W", "_", hint)
        self.modules += 1
        self.root.add_module(name, module)
        return self.fx.call_module(name, args)

    def value(self, v: Any) -> Any:
        if isinstance(v, Ref):
            if v.name in self.pending_dequantize:
                self.env[v.name] = self.call_module(self.pending_dequantize.pop(v.name), (self.env[v.name],), v.name)
            if v.name not in self.env:
                raise LoweringError(f"graph {self.graph.name}: reference to unknown value {v.name!r}")
            return self.env[v.name]
        if isinstance(v, TensorRef):
            return self.get_attr(v.name)
        if isinstance(v, Symbol):
            tables: dict[str, Mapping[str, Any]] = {"dtype": DTYPES, "layout": LAYOUTS, "memory_format": MEMORY_FORMATS}
            table = tables.get(v.tag)
            if v.tag == "device":
                return torch.device("cpu")
            if table is None or v.name not in table:
                raise LoweringError(f"graph {self.graph.name}: unknown {v.tag} {v.name!r}")
            if self.mode == OBSERVE and table[v.name] == torch.float32:
                return torch.float64
            return table[v.name]
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return v

    def qp(self, spec: Mapping[str, Any], linear_input: bool = False) -> QuantParams:
        if spec.get("granularity") == "rotated_tensor" and not linear_input:
            raise LoweringError(f"graph {self.graph.name}: granularity rotated_tensor is defined for linear "
                                f"inputs only (spec Q.2), not here (scale tensor {spec.get('scale')!r})")
        return quant_params(spec, self.tensor)

    # -- build ---------------------------------------------------------------------------------
    def build(self) -> fx.GraphModule:
        kv_specs = self._kv_specs_by_layer()
        for inp in self.graph.inputs:
            ph = self.fx.placeholder(re.sub(r"\W", "_", inp.name))
            if self.mode == OBSERVE:
                ph = self.fx.call_function(widen, (ph,))
            spec = kv_specs.get(inp.name)
            if spec is not None and self.mode in (3, 4):
                self.pending_dequantize[inp.name] = Dequantize(self.qp(spec))
            self.env[inp.name] = ph
        for node in self.graph.nodes:
            self.env[node.name] = self.lower_node(node)
        outs = []
        for _, v in self.graph.outputs:
            if isinstance(v, Ref) and v.name in self.stored:
                outs.append(self.stored[v.name])
            else:
                outs.append(self.value(v))
        self.fx.output(tuple(outs))
        if self.mode in (3, 4):
            self.share_input_quantizers()
        return fx.GraphModule(self.root, self.fx, class_name=f"mcq_{self.graph.name}_q{self.mode}")

    def share_input_quantizers(self) -> None:
        """Linears reading one value through equal input quantizers (q/k/v, gate/up) take one
        quantization of it: the same integers, a third of the quantizing work per layer."""
        groups: dict[fx.Node, list[list[tuple[fx.Node, QLinear]]]] = {}
        for node in self.fx.nodes:
            module = self.root.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, QLinear) or not isinstance(node.args[0], fx.Node):
                continue
            families = groups.setdefault(node.args[0], [])
            family = next((f for f in families
                           if numerics.same_input_quantizer(f[0][1].input_qp, module.input_qp)), None)
            if family is None:
                families.append([(node, module)])
            else:
                family.append((node, module))
        for x, families in groups.items():
            for family in (f for f in families if len(f) > 1):
                with self.fx.inserting_before(family[0][0]):
                    xq = self.call_module(QuantizeInput(family[0][1].prepared), (x,), "shared_input")
                for node, _ in family:
                    node.kwargs = {**node.kwargs, "xq": xq}

    def _kv_specs_by_layer(self) -> dict[str, Mapping[str, Any]]:
        specs = {}
        for node in self.graph.nodes:
            if node.op == KV_POINT and node.qkey is not None and node.qkey in self.qnodes:
                layer, which = int(node.args[1]), int(node.args[2])
                specs[past_input_name(layer, which)] = self.qnodes[node.qkey]["inputs"]["x"]
        return specs

    def lower_node(self, node: Node) -> fx.Node:
        if node.op not in OPS:
            raise LoweringError(f"graph {self.graph.name}: node {node.name}: op {node.op!r} is not in the opset")
        q = self.qnodes.get(node.qkey) if node.qkey else None
        if node.op == LINEAR and node.name in self.last_position_of:
            return self.lower_linear(node, None if self.mode == FLOAT else q)
        if q is None or self.mode == FLOAT:
            if node.op == KV_POINT:
                kv: fx.Node = self.value(node.args[0])
                return kv
            return self.fx.call_function(OPS[node.op], tuple(self.value(a) for a in node.args),
                                         {k: self.value(v) for k, v in node.kwargs.items()})
        if node.op == LINEAR:
            return self.lower_linear(node, q)
        if node.op == BMM:
            return self.lower_bmm(node, q)
        if node.op == KV_POINT:
            return self.lower_kv(node, q)
        if node.op == EMBEDDING:
            return self.lower_embedding(node, q)
        raise LoweringError(f"graph {self.graph.name}: node {node.name}: no quantized form of {node.op}")

    def quant_input(self, x: fx.Node, spec: Mapping[str, Any], qkey: str, role: str,
                    linear_input: bool = False) -> fx.Node:
        """The activation as the float graph sees it after its quant point (qlevels 2/3, observe)."""
        if self.mode == OBSERVE:
            assert self.observer is not None
            return self.call_module(Observe(qkey, role, self.observer), (x,), qkey)
        qp = self.qp(spec, linear_input)
        if self.mode == 2:
            node = self.call_module(FakeQuantize(qp), (x,), qkey)
            self.fake_quant_nodes[node.name] = (qkey, role)
            return node
        stored = self.call_module(Quantize(qp), (x,), qkey)
        return self.call_module(Dequantize(qp), (stored,), qkey)

    def lower_linear(self, node: Node, q: Mapping[str, Any] | None) -> fx.Node:
        x = self.value(node.args[0])
        if node.name in self.last_position_of:
            x = self.call_module(LastPosition(), (x,), "last_position")
        if q is None:
            return self.fx.call_function(OPS[LINEAR], (x, *(self.value(a) for a in node.args[1:])),
                                         {k: self.value(v) for k, v in node.kwargs.items()})
        bias = self.value(node.args[2]) if len(node.args) > 2 else None
        wspec, xspec = q.get("weight"), q["inputs"].get("x")
        w_ref = node.args[1]
        if xspec is not None and xspec.get("granularity") == "rotated_tensor" and self.mode != OBSERVE:
            _, b = rotation_factors(xspec, self.tensor)  # checks the factors
            a_size = int(self.tensor(xspec["rotation"][0]).shape[0])
            width = self._input_width(w_ref, wspec)
            if width is not None and a_size * b.shape[0] != width:
                raise LoweringError(f"{node.qkey}: rotation factors {a_size} x {b.shape[0]} do not cover "
                                    f"the linear's {width} input channels")
        if self.mode == OBSERVE or wspec is None:
            w = self.value(w_ref)
        else:
            assert isinstance(w_ref, TensorRef)
            def wq() -> torch.Tensor:
                # int4 weights unpack to int8: a copy kept only where a kernel reads that form (a
                # packed weight-only kernel does not, and holding both doubled W4A16's memory)
                return self.once(("stored", w_ref.name), lambda: stored_weight(w_ref.name, wspec, self.tensor))
            # read when needed: a repacked weight's scales are not read again
            wqp: Callable[[], QuantParams] = functools.cache(lambda: self.qp(wspec))
            if self.mode in (3, 4) and xspec is not None and numerics.has_kernel(wqp(), self.qp(xspec, True)):
                def qlinear() -> QLinear:
                    outlier_w = self.tensor(q["outlier_weight"]) if q.get("outlier_weight") else None
                    return QLinear(wq(), wqp(), self.qp(xspec, True), outlier_w, emulate=self.mode == 3)
                return self.call_module(self.once(("qlinear", node.qkey), qlinear), (x, bias), node.qkey or "")
            if self.mode == 4 and xspec is None:  # weight-only: torch's bf16 kernels (spec Q.4a)
                # a graph output (the logits) keeps float32 precision: the two-digit int8 kernel
                precise = node.name in self.output_refs
                def weight_only() -> WeightOnlyLinear | None:
                    stored = self.shared.get(("stored", w_ref.name))  # unpacked for this call only
                    kernel = prepare_weight_only(
                        stored if stored is not None else stored_weight(w_ref.name, wspec, self.tensor), wqp(), precise)
                    if kernel is None:
                        return None
                    if kernel.packed.data_ptr() != self.tensor(w_ref.name).data_ptr():
                        arena = self.once("arena", Arena)
                        kernel = dataclasses.replace(kernel, packed=arena.keep(kernel.packed),
                                                     scales=arena.keep(kernel.scales))
                        if stored is None:  # the kernel reads its own copy from now on
                            self.release(w_ref.name)
                            if kernel.kind == BF16_INT4:  # its scales and zero points too
                                for key in ("scale", "zero_point"):
                                    if isinstance(wspec.get(key), str):
                                        self.release(wspec[key])
                    return WeightOnlyLinear(kernel)
                module = self.once(("weight_only", node.qkey, precise), weight_only)
                if module is not None:
                    return self.call_module(module, (x, bias), node.qkey or "")
            if self.mode == 2:  # weights dequantized once; activations fake-quantized per call
                w = self.get_attr(w_ref.name + "#dequantized",
                                  self.once(("dequantized", w_ref.name), lambda: numerics.dequantize(wq(), wqp())))
            else:  # weight-only (or no kernel for the pair): stored weight dequantized per call
                w = self.call_module(Dequantize(wqp()), (self.get_attr(w_ref.name + "#stored", wq()),),
                                     node.qkey or "")
        raw = x
        if xspec is not None:
            x = self.quant_input(x, xspec, node.qkey or "", "x", linear_input=True)
        elif self.mode == OBSERVE:  # weight-only: the toolkit still sees the input (GPTQ Hessians)
            x = self.quant_input(x, {}, node.qkey or "", "x")
        y = self.fx.call_function(OPS[LINEAR], (x, w, bias))
        if self.mode != OBSERVE and q.get("outlier_weight") and xspec is not None:
            side = OutlierProduct(self.qp(xspec, True), self.tensor(q["outlier_weight"]))
            y = self.fx.call_function(OPS["aten.add.Tensor"], (y, self.call_module(side, (raw,), node.qkey or "")))
        return y

    def _input_width(self, w_ref: Any, wspec: Mapping[str, Any] | None) -> int | None:
        """Input channels of a linear's weight (the unpacked shape for int4)."""
        if not isinstance(w_ref, TensorRef):
            return None
        if wspec is not None and isinstance(wspec.get("shape"), list):
            return int(wspec["shape"][-1])
        return int(self.tensor(w_ref.name).shape[-1])

    def lower_bmm(self, node: Node, q: Mapping[str, Any]) -> fx.Node:
        a, b = self.value(node.args[0]), self.value(node.args[1])
        aspec, bspec = q["inputs"].get("a"), q["inputs"].get("b")
        if self.mode in (3, 4) and aspec is not None and bspec is not None \
                and self.qp(aspec).kind == self.qp(bspec).kind:
            module = QBmm(self.qp(aspec), self.qp(bspec), emulate=self.mode == 3)
            return self.call_module(module, (a, b), node.qkey or "")
        if aspec is not None:
            a = self.quant_input(a, aspec, node.qkey or "", "a")
        # b comes out of the quantized KV cache: already on its grid at qlevel 2
        if bspec is not None and not bspec.get("source"):
            b = self.quant_input(b, bspec, node.qkey or "", "b")
        return self.fx.call_function(OPS[BMM], (a, b))

    def lower_embedding(self, node: Node, q: Mapping[str, Any]) -> fx.Node:
        table_ref, ids = node.args[0], self.value(node.args[1])
        spec = q.get("weight")
        if self.mode == OBSERVE or not spec:
            return self.fx.call_function(OPS[EMBEDDING], tuple(self.value(a) for a in node.args))
        assert isinstance(table_ref, TensorRef)
        if spec.get("dtype") != "int8" or spec.get("granularity") != "channel" or spec.get("axis") != 0:
            raise LoweringError(f"embedding {node.qkey!r}: only int8 tables with one scale per row "
                                f"(granularity channel, axis 0) are defined (spec Q.3a)")
        qp, smooth = table_params(spec, self.tensor)
        table_q = self.tensor(table_ref.name)
        if self.mode == 2:  # the whole table dequantized once, then a float lookup (same values)
            def rows() -> torch.Tensor:
                table = numerics.dequantize(table_q, qp)
                return table / smooth if smooth is not None else table
            table = self.get_attr(table_ref.name + "#rows", self.once(("rows", table_ref.name), rows))
            return self.fx.call_function(OPS[EMBEDDING], (table, ids))
        return self.call_module(QEmbedding(table_q, qp, smooth), (ids,), node.qkey or "")

    def lower_kv(self, node: Node, q: Mapping[str, Any]) -> fx.Node:
        x = self.value(node.args[0])
        spec = q["inputs"]["x"]
        if self.mode in (OBSERVE, 2):
            return self.quant_input(x, spec, node.qkey or "", "x")
        qp = self.qp(spec)
        stored = self.call_module(Quantize(qp), (x,), node.qkey or "")
        self.stored[node.name] = stored
        return self.call_module(Dequantize(qp), (stored,), node.qkey or "")


def build(graph: Graph, tensor: TensorSource, qformat: Mapping[str, Any] | None = None,
          mode: int = FLOAT, observer: Observer | None = None, shared: dict[Any, Any] | None = None,
          last_position_logits: bool = False) -> fx.GraphModule:
    """Rebuild `graph` as an fx.GraphModule at qlevel `mode` (FLOAT, OBSERVE, 2, 3, 4).

    `shared`: one dict passed to the builds of one model's graphs, so that weights prepared for
    kernels are made once and shared by every graph that reads them. `last_position_logits`: the
    `logits` output holds the last position only ([batch, 1, vocab]; for generation)."""
    return _Builder(graph, tensor, qformat, mode, observer, shared, last_position_logits).build()


def build_with_names(graph: Graph, tensor: TensorSource, qformat: Mapping[str, Any] | None = None,
                     mode: int = FLOAT) -> tuple[fx.GraphModule, dict[str, str]]:
    """`build`, plus the fx node name holding each graph node's value (for reports and debugging)."""
    gm, names, _ = build_with_attrs(graph, tensor, qformat, mode)
    return gm, names


def build_with_attrs(graph: Graph, tensor: TensorSource, qformat: Mapping[str, Any] | None = None,
                     mode: int = FLOAT) -> tuple[fx.GraphModule, dict[str, str], dict[str, str]]:
    """`build_with_names`, plus the GraphModule attribute holding each tensor the graph reads
    (keyed like `tensor`'s names; at qlevel 2 a linear's weight is `{name}#dequantized`)."""
    builder = _Builder(graph, tensor, qformat, mode, None)
    gm = builder.build()
    return gm, {name: node.name for name, node in builder.env.items()}, \
        {name: str(node.target) for name, node in builder.attrs.items()}


def build_with_fake_quant_points(graph: Graph, tensor: TensorSource, qformat: Mapping[str, Any]
                                 ) -> tuple[fx.GraphModule, dict[str, tuple[str, str]]]:
    """The qlevel-2 GraphModule and, for each of its activation fake-quantizers, the fx node name
    -> (qkey, input role): what a report needs to measure each quant point from the bundle alone."""
    builder = _Builder(graph, tensor, qformat, 2, None)
    gm = builder.build()
    return gm, dict(builder.fake_quant_nodes)
