"""Capture models as ATen graphs with torch.export: a Hugging Face causal LM as two graphs
(prefill, decode), a Hugging Face encoder (BERT style) or any exportable nn.Module as one
(`forward`).

The KV cache is explicit: prefill returns each layer's keys/values, decode takes the past ones
as inputs and returns only the new token's. Every tensor that enters the cache passes through a
marker op (`mcq.kv_point`) so quantization finds the cache without knowing the model family.
Quant-point identities (qkeys) are module path + op kind + occurrence, computed here once and
identical in both graphs.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.export import Dim, export
from torch.utils._pytree import tree_flatten_with_path

from runtime.ir import Graph, Node, Ref, Symbol, TensorRef, TensorSpec
from runtime.lower import past_input_name, present_output_name
from runtime.ops import DTYPE_NAMES, KV_POINT


class CaptureError(RuntimeError):
    pass


class _Steps:
    """The capture's long steps on stderr (torch.export takes minutes on a large model): the
    step now running and how many are done."""

    def __init__(self, names: list[str], progress: bool) -> None:
        from tqdm.auto import tqdm

        self.names = iter(names)
        self.bar = tqdm(total=len(names), desc=f"capturing: {next(self.names)}", unit="step", disable=not progress)

    def done(self) -> None:
        self.bar.update()
        name = next(self.names, None)
        if name is None:
            self.bar.close()
        else:
            self.bar.set_description(f"capturing: {name}")


@torch.library.custom_op("mcq_capture::kv_point", mutates_args=())
def _kv_point(x: torch.Tensor, layer: int, which: int) -> torch.Tensor:
    return x.clone()


@_kv_point.register_fake
def _(x: torch.Tensor, layer: int, which: int) -> torch.Tensor:
    return torch.empty_like(x)


def _cache_class():  # imported lazily: transformers is only needed to capture HF models
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class MarkedLayer(DynamicLayer):
        """A cache layer that marks new keys/values and remembers them for the graph outputs."""

        def __init__(self, layer: int) -> None:
            super().__init__()
            self.layer = layer

        def update(self, keys: torch.Tensor, values: torch.Tensor, *args: Any, **kwargs: Any):
            keys = torch.ops.mcq_capture.kv_point(keys, self.layer, 0)
            values = torch.ops.mcq_capture.kv_point(values, self.layer, 1)
            self.new_keys, self.new_values = keys, values
            if not self.is_initialized:
                self.keys, self.values, self.is_initialized, self.device = keys, values, True, keys.device
            else:
                self.keys = torch.cat([self.keys, keys], dim=-2)
                self.values = torch.cat([self.values, values], dim=-2)
            return self.keys, self.values

    def make(n_layers: int, past: tuple[torch.Tensor, ...] | None = None) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = [MarkedLayer(i) for i in range(n_layers)]
        if past is not None:
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.is_initialized, layer.device = True, layer.keys.device
        return cache

    return make


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # left padding: a token's position counts only the real tokens before it
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PrefillWrapper(nn.Module):
    def __init__(self, model: nn.Module, n_layers: int) -> None:
        super().__init__()
        self.model, self.n_layers, self.make_cache = model, n_layers, _cache_class()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        cache = self.make_cache(self.n_layers)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=_positions(attention_mask), past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in cache.layers for t in (layer.new_keys, layer.new_values)])


class DecodeWrapper(nn.Module):
    def __init__(self, model: nn.Module, n_layers: int) -> None:
        super().__init__()
        self.model, self.n_layers, self.make_cache = model, n_layers, _cache_class()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: tuple[torch.Tensor, ...]):
        cache = self.make_cache(self.n_layers, past)
        position_ids = attention_mask.long().sum(-1, keepdim=True) - 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in cache.layers for t in (layer.new_keys, layer.new_values)])


CAUSAL_LM, ENCODER, MODULE = "causal_lm", "encoder", "module"
ENCODER_OUTPUTS = ("last_hidden_state", "sentence_embedding")


@dataclass
class Captured:
    """The graphs of a model, the float tensors they read, and what the manifest needs.

    kind: CAUSAL_LM (prefill + decode graphs, calibrated on token ids), ENCODER (one `forward`
    graph over input_ids + attention_mask, calibrated on token ids) or MODULE (one `forward`
    graph over the module's own inputs, calibrated on input tuples)."""

    graphs: dict[str, Graph]
    tensors: dict[str, torch.Tensor]
    family: str
    model_config: dict[str, Any]
    kv_shape: dict[str, int] = field(default_factory=dict)  # heads, head_dim, layers
    kind: str = CAUSAL_LM
    arg_names: tuple[str, ...] = ()  # MODULE: the forward's parameters, in order
    output_specs: dict[str, list[TensorSpec]] = field(default_factory=dict)  # per graph, where known

    @property
    def main_graph(self) -> Graph:
        """The graph calibration runs: prefill for a causal LM, forward otherwise."""
        return self.graphs["prefill" if self.kind == CAUSAL_LM else "forward"]

    def graph_inputs(self, sample: Any) -> tuple[torch.Tensor, ...]:
        """A MODULE calibration sample (a tuple of the forward's arguments, a dict of keyword
        arguments, or one tensor) as the main graph's inputs, in order."""
        if isinstance(sample, torch.Tensor):
            sample = (sample,)
        args = dict(sample) if isinstance(sample, Mapping) else dict(zip(self.arg_names, sample))
        flat = dict(_flat_names(args))
        wanted = [i.name for i in self.main_graph.inputs]
        missing = [n for n in wanted if not isinstance(flat.get(n), torch.Tensor)]
        if missing:
            raise CaptureError(f"calibration sample has no tensor for graph input(s) {', '.join(missing)} "
                               f"(graph inputs: {', '.join(wanted)})")
        for spec in self.main_graph.inputs:
            if not spec.accepts(flat[spec.name].shape):
                raise CaptureError(f"calibration sample: input {spec.name!r} has shape {list(flat[spec.name].shape)}, "
                                   f"the graph takes {spec.shape} (capture with dynamic_shapes for sizes that vary)")
        return tuple(flat[n] for n in wanted)


_DROPPED = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
}
_SHAPE_OPS = {
    "aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.expand.default",
    "aten.permute.default", "aten.transpose.int", "aten.clone.default", "aten.unsqueeze.default",
    "aten.cat.default", "aten.alias.default", "aten.slice.Tensor", "aten.t.default",
}
_SOFTMAX_OPS = {"aten._softmax.default", "aten.softmax.int"}
_SCORE_OPS = {"aten.mul.Tensor", "aten.div.Tensor", "aten.add.Tensor", "aten.sub.Tensor", "aten._to_copy.default",
              "aten.where.self", "aten.masked_fill.Scalar"}
WRAPPER_PREFIX = "model."


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = str(target)
        return KV_POINT if name.startswith("mcq_capture.kv_point") else name
    if getattr(target, "__module__", None) in ("_operator", "operator") or target in vars(operator).values():
        return f"_operator.{target.__name__}"
    raise CaptureError(f"cannot capture call to {target!r}: not an ATen op or a Python operator")


def _strip(path: str, prefix: str = WRAPPER_PREFIX) -> str:
    return path[len(prefix):] if prefix and path.startswith(prefix) else path


def _module_path(node: torch.fx.Node, prefix: str = WRAPPER_PREFIX) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return _strip(list(stack.values())[-1][0], prefix)


def _to_graph(ep: torch.export.ExportedProgram, name: str, input_names: list[str],
              input_dims: dict[str, dict[int, str]], output_names: list[str],
              tensors: dict[str, torch.Tensor], prefix: str = WRAPPER_PREFIX) -> Graph:
    """`prefix`: the wrapper's attribute path stripped from tensor names and qkeys."""
    sig = ep.graph_signature
    lifted: dict[str, str] = {}
    user_inputs: list[str] = []
    constants: dict[str, Any] = {}  # non-tensor user inputs (None, flags): baked into the graph
    for spec in sig.input_specs:
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            fqn = _strip(spec.target, prefix)
            lifted[spec.arg.name] = fqn
            value = ep.state_dict.get(spec.target)
            if value is None:
                value = ep.constants[spec.target]
            tensors.setdefault(fqn, value.detach().contiguous())
        elif spec.kind.name == "USER_INPUT":
            user_inputs.append(spec.arg.name)
            if not isinstance(spec.arg, torch.export.graph_signature.TensorArgument):
                constants[spec.arg.name] = getattr(spec.arg, "value", None)
        else:
            raise CaptureError(f"{name}: unsupported graph input kind {spec.kind}")
    if len(user_inputs) != len(input_names):
        raise CaptureError(f"{name}: expected {len(input_names)} inputs, export gave {len(user_inputs)}")
    renamed = dict(zip(user_inputs, input_names))

    def conv(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a.name in lifted:
                return TensorRef(lifted[a.name])
            if a.name in constants:
                return conv(constants[a.name])
            return Ref(renamed.get(a.name, a.name))
        if isinstance(a, (list, tuple)):
            return [conv(x) for x in a]
        if isinstance(a, torch.dtype):
            return Symbol("dtype", DTYPE_NAMES[a])
        if isinstance(a, torch.device):
            return Symbol("device", "cpu")
        if isinstance(a, torch.layout):
            return Symbol("layout", "strided")
        if isinstance(a, torch.memory_format):
            return Symbol("memory_format", str(a).removeprefix("torch."))
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        raise CaptureError(f"{name}: cannot serialize argument {a!r} of type {type(a).__name__}")

    inputs = []
    for ph, iname in zip(user_inputs, input_names):
        if ph in constants:
            continue
        val = next(n for n in ep.graph.nodes if n.name == ph).meta["val"]
        dims = input_dims.get(iname, {})
        shape = [dims[i] if i in dims else int(d) for i, d in enumerate(val.shape)]
        inputs.append(TensorSpec(iname, DTYPE_NAMES[val.dtype], shape))

    nodes: list[Node] = []
    occurrences: Counter[tuple[str, str]] = Counter()
    outputs: list[tuple[str, Any]] = []
    for n in ep.graph.nodes:
        if n.op == "call_function":
            op = _op_name(n.target)
            if op in _DROPPED:
                continue
            node = Node(n.name, op, [conv(a) for a in n.args], {k: conv(v) for k, v in n.kwargs.items()})
            path = _module_path(n, prefix)
            if op == "aten.linear.default":
                node.qkey = f"{path}/linear{occurrences[(path, 'linear')]}"
                occurrences[(path, "linear")] += 1
            elif op == "aten.bmm.default":
                node.qkey = f"{path}/bmm{occurrences[(path, 'bmm')]}"
                occurrences[(path, "bmm")] += 1
            elif op == KV_POINT:
                node.qkey = f"{path}/{'kv'[int(n.args[2])]}_cache"
            elif op == "aten.embedding.default":
                node.qkey = f"{path}/embedding{occurrences[(path, 'embedding')]}"
                occurrences[(path, "embedding")] += 1
            nodes.append(node)
        elif n.op == "output":
            values = n.args[0]
            if len(values) != len(output_names):
                raise CaptureError(f"{name}: expected {len(output_names)} outputs, export gave {len(values)}")
            outputs = [(o, conv(v)) for o, v in zip(output_names, values) if v is not None]
        elif n.op not in ("placeholder",):
            raise CaptureError(f"{name}: unsupported graph node {n.op} {n.target}")
    graph = Graph(name, inputs, nodes, outputs)
    _annotate_bmm_sources(graph)
    return graph


def _annotate_bmm_sources(graph: Graph) -> None:
    """Record, on each attention bmm, which KV-cache point its second operand comes from."""
    by_name = {n.name: n for n in graph.nodes}

    def source(v: Any, depth: int = 0) -> str | None:
        if not isinstance(v, Ref) or depth > 32 or v.name not in by_name:
            return None
        node = by_name[v.name]
        if node.op == KV_POINT:
            return node.qkey
        if node.op in _SHAPE_OPS:
            for a in node.args:
                for x in (a if isinstance(a, list) else [a]):
                    found = source(x, depth + 1)
                    if found:
                        return found
        return None

    users: dict[str, list[Any]] = {}
    for node in graph.nodes:
        for a in node.args:
            for x in (a if isinstance(a, list) else [a]):
                if isinstance(x, Ref):
                    users.setdefault(x.name, []).append(node)

    def feeds_softmax(name: str, depth: int = 0) -> bool:
        """Whether a value reaches a softmax through shape ops and the scaling / mask ops between
        attention scores and their softmax."""
        if depth > 8:
            return False
        for user in users.get(name, []):
            if user.op in _SOFTMAX_OPS:
                return True
            if (user.op in _SHAPE_OPS or user.op in _SCORE_OPS) and feeds_softmax(user.name, depth + 1):
                return True
        return False

    for node in graph.nodes:
        if node.op == "aten.bmm.default":
            src = source(node.args[1])
            if src:
                node.meta["b_source"] = src
            if feeds_softmax(node.name):  # Q.K^T (P.V reads the softmax instead)
                node.meta["attention_scores"] = True


def _decompositions():
    table = torch.export.default_decompositions()
    del table[torch.ops.aten.linear.default]  # keep linears whole: they are quant points
    return table


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    with warnings.catch_warnings():
        # export's notes on transformers internals are not actionable for mcq's users
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
        yield


@contextlib.contextmanager
def _eager_attention(cfg: Any) -> Iterator[None]:
    """Explicit Q.K^T and P.V matmuls (not a fused kernel): they are quant points."""
    previous_attn = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        yield
    finally:
        cfg._attn_implementation = previous_attn


def _hf_config(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if isinstance(v, (bool, int, float, str)) or v is None}


def capture_causal_lm(model: nn.Module, example_len: int = 8, progress: bool = False) -> Captured:
    """Capture an HF causal LM (GPT-J, Llama, GPT-2 style) as prefill + decode graphs."""
    cfg = model.config
    family = getattr(cfg, "model_type", type(model).__name__)
    n_layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))
    swapped = _conv1d_as_linear(model)
    try:
        with _eager_attention(cfg), _quiet_export():
            return _capture(model, cfg, family, n_layers, example_len, progress)
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)


def is_hf_encoder(model: Any) -> bool:
    """A Hugging Face model that cannot generate (BertModel and the like), not a causal LM."""
    return hasattr(model, "config") and callable(getattr(model, "can_generate", None)) \
        and not model.can_generate()


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding: the mean of the unmasked tokens' states, L2-normalized (as
    sentence-transformers' Pooling(mean) + Normalize: x / max(||x||, 1e-12))."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return mean / (mean * mean).sum(-1, keepdim=True).sqrt().clamp(min=1e-12)


class EncoderWrapper(nn.Module):
    """An HF encoder as (last_hidden_state, sentence_embedding) of (input_ids, attention_mask)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, mean_pool_normalize(hidden, attention_mask)


def capture_encoder(model: nn.Module, example_len: int = 8, progress: bool = False) -> Captured:
    """Capture an HF encoder (BERT style) as one `forward` graph: input_ids and attention_mask
    [batch, seq] (dynamic; right padding) give last_hidden_state and sentence_embedding."""
    cfg = model.config
    model.eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(cfg.vocab_size), (2, example_len), generator=gen)
    mask = torch.ones(2, example_len, dtype=torch.long)
    mask[0, example_len - 3:] = 0  # right padding in the example keeps the mask path general
    batch = Dim("batch", min=1, max=256)
    seq = Dim("seq", min=2, max=int(getattr(cfg, "max_position_embeddings", 0) or 32768))
    dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with _eager_attention(cfg), _quiet_export():
        graph, tensors, outputs = _export_graph(EncoderWrapper(model), (ids, mask), {}, dims,
                                                list(ENCODER_OUTPUTS), WRAPPER_PREFIX, progress)
    return Captured({"forward": graph}, tensors, getattr(cfg, "model_type", type(model).__name__),
                    _hf_config(cfg), kind=ENCODER, arg_names=("input_ids", "attention_mask"),
                    output_specs={"forward": outputs})


def _key_text(key: Any) -> str:
    for attr in ("idx", "key", "name"):  # SequenceKey, MappingKey, GetAttrKey
        if hasattr(key, attr):
            return f".{getattr(key, attr)}"
    return f".{key}"


def _flat_names(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, leaf) for every leaf of each named value: nested tuples, lists and dicts add
    `.<index>` / `.<key>` to the name (`past.0`, `output.logits`)."""
    out = []
    for name, value in values.items():
        leaves, _ = tree_flatten_with_path(value)
        out.extend((name + "".join(_key_text(k) for k in path), leaf) for path, leaf in leaves)
    return out


def _dim_names(values: Mapping[str, Any], dynamic_shapes: Any) -> dict[tuple[str, int], str]:
    """(input name, axis) -> the name of the torch.export Dim given for it in `dynamic_shapes`."""
    if dynamic_shapes is None:
        return {}
    specs = dict(dynamic_shapes) if isinstance(dynamic_shapes, Mapping) \
        else dict(zip(values, dynamic_shapes))
    out: dict[tuple[str, int], str] = {}

    def walk(name: str, value: Any, spec: Any) -> None:
        if spec is None:
            return
        if isinstance(value, torch.Tensor):
            axes = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
            for axis, dim in axes:
                if isinstance(getattr(dim, "__name__", None), str):
                    out[(name, int(axis))] = dim.__name__
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{name}.{k}", v, spec.get(k))
        elif isinstance(value, (list, tuple)):
            for i, (v, s) in enumerate(zip(value, spec)):
                walk(f"{name}.{i}", v, s)

    for name, value in values.items():
        walk(name, value, specs.get(name))
    return out


def _export_graph(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic_shapes: Any,
                  output_names: list[str] | None, prefix: str, progress: bool = False
                  ) -> tuple[Graph, dict[str, torch.Tensor], list[TensorSpec]]:
    """Export `module` once as the `forward` graph (torch.export `dynamic_shapes`; a dynamic size
    is named after its Dim). Input names follow the forward's parameters, output names the
    returned structure unless `output_names` is given."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    named = _flat_names(bound.arguments)
    if output_names is None:
        with torch.no_grad():
            output_names = [n for n, _ in _flat_names({"output": module(*args, **kwargs)})]
    names = _dim_names(bound.arguments, dynamic_shapes)
    steps = _Steps(["exporting forward", "decomposing forward"], progress)
    with torch.no_grad():
        try:
            ep = export(module, tuple(bound.args), dict(bound.kwargs), dynamic_shapes=dynamic_shapes, strict=True)
        except Exception as strict_error:  # noqa: BLE001 - some modules export only non-strict
            try:
                ep = export(module, tuple(bound.args), dict(bound.kwargs), dynamic_shapes=dynamic_shapes,
                            strict=False)
            except Exception:
                raise CaptureError(f"torch.export cannot capture {type(module).__name__}: {strict_error}") \
                    from strict_error
        steps.done()
        ep = ep.run_decompositions(_decompositions())
    # symbolic sizes take the name of the Dim that introduced them (else the symbol, e.g. "s0")
    placeholders = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    input_names = [n for n, _ in named]
    symbol_names: dict[str, str] = {}
    for ph, iname in zip(user, input_names):
        val = placeholders.get(ph)
        for axis, d in enumerate(getattr(val, "shape", ())):
            if isinstance(d, torch.SymInt) and (iname, axis) in names:
                symbol_names.setdefault(str(d), names[(iname, axis)])
    input_dims = {}
    for ph, iname in zip(user, input_names):
        val = placeholders.get(ph)
        input_dims[iname] = {axis: symbol_names.get(str(d), str(d))
                             for axis, d in enumerate(getattr(val, "shape", ())) if isinstance(d, torch.SymInt)}
    tensors: dict[str, torch.Tensor] = {}
    graph = _to_graph(ep, "forward", input_names, input_dims, output_names, tensors, prefix)
    steps.done()
    returned = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    outputs = [TensorSpec(o, DTYPE_NAMES[v.meta["val"].dtype],
                          [symbol_names.get(str(d), str(d)) if isinstance(d, torch.SymInt) else int(d)
                           for d in v.meta["val"].shape])
               for o, v in zip(output_names, returned) if isinstance(v, torch.fx.Node)]
    return graph, tensors, outputs


def capture_module(module: nn.Module, example_inputs: Any, dynamic_shapes: Any = None,
                   progress: bool = False) -> Captured:
    """Capture any nn.Module torch.export can capture as one `forward` graph.

    `example_inputs`: a tuple of positional arguments (or one tensor), or a dict of keyword
    arguments; `dynamic_shapes`: torch.export's spec for them (None: every size is fixed).
    Graph inputs are named after the forward's parameters (`x`, or `past.0` inside a tuple),
    outputs `output` (one tensor) or `output.<index>` / `output.<key>` (tuples, dicts)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    args, kwargs = ((), dict(example_inputs)) if isinstance(example_inputs, Mapping) \
        else (tuple(example_inputs), {})
    module.eval()
    with _quiet_export():
        graph, tensors, outputs = _export_graph(module, args, kwargs, dynamic_shapes, None, "", progress)
    names = tuple(inspect.signature(module.forward).parameters)
    return Captured({"forward": graph}, tensors, type(module).__name__, {}, kind=MODULE, arg_names=names,
                    output_specs={"forward": outputs})


def _conv1d_as_linear(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """GPT-2's Conv1D (x @ W + b, W stored [in, out]) becomes an equivalent nn.Linear for the
    capture, so it is a linear quant point; the caller puts the originals back afterwards."""
    from transformers.pytorch_utils import Conv1D

    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None,
                                   device=child.weight.device)  # meta stays meta (streaming capture)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                swapped.append((parent, name, child))
    return swapped


def _capture(model: nn.Module, cfg: Any, family: str, n_layers: int, example_len: int = 8,
             progress: bool = False) -> Captured:
    model.eval()
    steps = _Steps(["exporting prefill", "decomposing prefill", "exporting decode", "decomposing decode"], progress)
    vocab = int(cfg.vocab_size)
    gen = torch.Generator().manual_seed(0)
    batch = Dim("batch", min=1, max=256)
    seq = Dim("seq", min=2, max=32768)
    past = Dim("past", min=1, max=32768)
    ids = torch.randint(0, vocab, (2, example_len), generator=gen)
    mask = torch.ones(2, example_len, dtype=torch.long)
    mask[0, :2] = 0  # left padding in the example keeps the mask path general
    # a model on the meta device (streaming: no weights in memory) is traced with meta inputs
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        prefill_wrapper = PrefillWrapper(model, n_layers)
        outs = prefill_wrapper(ids, mask)
    kv = tuple(o.detach() for o in outs[1:])
    heads, head_dim = int(kv[0].shape[1]), int(kv[0].shape[-1])
    kv_names = [present_output_name(i // 2, i % 2) for i in range(2 * n_layers)]
    past_names = [past_input_name(i // 2, i % 2) for i in range(2 * n_layers)]

    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        ep = export(prefill_wrapper, (ids, mask), strict=True,
                    dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        steps.done()
        ep = ep.run_decompositions(_decompositions())
    prefill = _to_graph(ep, "prefill", ["input_ids", "attention_mask"],
                        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
                        ["logits", *kv_names], tensors)
    steps.done()

    step_ids = torch.randint(0, vocab, (2, 1), generator=gen).to(device)
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long, device=device)], dim=1)
    with torch.no_grad():
        ep = export(DecodeWrapper(model, n_layers), (step_ids, step_mask, kv), strict=True,
                    dynamic_shapes=({0: batch}, {0: batch, 1: past + 1},
                                    tuple({0: batch, 2: past} for _ in kv)))
        steps.done()
        ep = ep.run_decompositions(_decompositions())
    past_dims = {n: {0: "batch", 2: "past"} for n in past_names}
    decode = _to_graph(ep, "decode", ["input_ids", "attention_mask", *past_names],
                       {"input_ids": {0: "batch"}, "attention_mask": {0: "batch", 1: "past+1"}, **past_dims},
                       ["logits", *kv_names], tensors)
    steps.done()
    return Captured({"prefill": prefill, "decode": decode}, tensors, family, _hf_config(cfg),
                    {"layers": n_layers, "heads": heads, "head_dim": head_dim})
