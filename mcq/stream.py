"""Streaming quantization: a causal LM larger than memory, read from its safetensors checkpoint.

The model is built and captured on the meta device: no weight is materialized. Calibration then
runs the captured prefill graph node by node over the whole calibration set at once. Each weight
is read from the checkpoint when a node first needs it and dropped after its last use, so memory
holds about one transformer block of weights plus the calibration activations, whatever the
depth. A linear's weight is quantized (SmoothQuant, outlier channels, GPTQ) as soon as its input
has been observed on every batch, and every finished tensor goes straight to a
`mcq_format.StreamWriter`.

Every observer sees the same batches in the same order as in `mcq.quantize`, through the same
graph ops, and the same functions turn them into parameters: the bundle is byte-identical to the
one `mcq.quantize(...).save(...)` writes for the same model, samples and config.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import fx
from tqdm.auto import tqdm

from mcq import channels, gptq
from mcq import distributed as dist
from mcq.bundle import (Assembled, float_tensor_names, node_plan, rewire, sections, store_derived,
                        store_embedding, store_inputs, store_weight, to_numpy)
from mcq.calibrate import (Recorder, as_inputs, batches_of, check_reached, make_observers, shared_hessians,
                           transformed_wanted)
from mcq.calibrators import Histogram
from mcq.config import ConfigError, QuantConfig, default_config
from runtime import lower
from runtime.quant_modules import Observe

CHECKPOINT_INDEX = "model.safetensors.index.json"


class Checkpoint:
    """The tensors of a Hugging Face safetensors checkpoint (one file, or shards with an index).

    Each read opens its shard, copies the tensor out and closes the shard: no memory map
    outlives a read (mapped pages would count in the process's resident memory)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / CHECKPOINT_INDEX
        self.files: dict[str, Path] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                self.files = {str(k): self.folder / str(v) for k, v in dict(weight_map).items()}
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        else:
            for shard in sorted(self.folder.glob("*.safetensors")):
                with safe_open(shard, framework="pt") as f:
                    for name in f.keys():
                        self.files.setdefault(name, shard)
        if not self.files:
            raise FileNotFoundError(f"{self.folder}: no safetensors checkpoint (*.safetensors, {CHECKPOINT_INDEX}); "
                                    "streaming reads the weights from safetensors files")
        missing = sorted({str(p) for p in self.files.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{index}: names shard(s) that do not exist: {', '.join(missing[:3])}")

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name)


def meta_model(folder: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, torch.Tensor],
                                                        dict[str, list[str]], set[str]]:
    """The causal LM of a model folder with its parameters on the meta device.

    Returns (model, buffers computed at construction, e.g. rotary tables: name -> CPU tensor,
    tied-parameter aliases: name -> other names of the same parameter, names of GPT-2 Conv1D
    weights, which the capture turns into linears and so reads transposed)."""
    from mcq.extras import require

    init_empty_weights = require("accelerate", "streaming quantization (--stream)").init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(folder)
    try:
        # buffers stay real: they are small and computed, not stored in every checkpoint
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as e:
        raise ValueError(f"{folder}: streaming quantizes causal LMs ({type(config).__name__}: {e})") from None
    model.tie_weights()  # as loading does (empty init skips it): tied names share one tensor
    model.eval()
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    aliases = {n: [m for m in names if m != n] for names in by_id.values() for n in names}
    conv1d = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, Conv1D)}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to("meta")
    return model, buffers, aliases, conv1d


class TensorSource:
    """The captured graph's float tensors by name, read on demand: from the checkpoint (through
    tied aliases; Conv1D weights transposed), else the buffers computed with the model; checked
    against the shape and converted to the dtype of the model's (meta) tensor."""

    def __init__(self, checkpoint: Checkpoint, like: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 aliases: dict[str, list[str]], transposed: set[str]) -> None:
        self.checkpoint, self.like, self.buffers = checkpoint, like, buffers
        self.aliases, self.transposed = aliases, transposed

    def __call__(self, name: str) -> torch.Tensor:
        like = self.like[name]
        found = next((c for c in (name, *self.aliases.get(name, ())) if c in self.checkpoint), None)
        if found is not None:
            t = self.checkpoint.read(found)
            if name in self.transposed:
                t = t.t()
        elif name in self.buffers:
            t = self.buffers[name]
        else:
            raise KeyError(f"{self.checkpoint.folder}: tensor {name!r} is not in the checkpoint")
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(f"{self.checkpoint.folder}: tensor {name!r} has shape {list(t.shape)} in the checkpoint, "
                             f"the model's config gives {list(like.shape)}")
        return t.to(like.dtype).contiguous()


class Resident:
    """Weights read from a source and kept until released (after their last use in the graph)."""

    def __init__(self, source: Callable[[str], torch.Tensor]) -> None:
        self.source = source
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            self.tensors[name] = self.source(name)
        return self.tensors[name]

    def release(self, name: str) -> None:
        self.tensors.pop(name, None)


def observed_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that lead to an Observe module: all that calibration needs to run (not the
    logits, nor the cache outputs)."""
    modules = dict(gm.named_modules())
    return ancestors([n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], Observe)])


def ancestors(roots: Sequence[fx.Node]) -> set[fx.Node]:
    """`roots` and every node they read, directly or not."""
    needed: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    return needed


def run_by_node(gm: fx.GraphModule, inputs: Sequence[tuple[Any, ...]], fetch: Callable[[Any], Any],
                release: Callable[[Any], None], before: Callable[[int], None],
                after: Callable[[fx.Node, list[Any]], None], progress: bool = True,
                needed: set[fx.Node] | None = None, desc: str = "calibrating (streaming)") -> None:
    """Run `gm` one node at a time over every input tuple (one per batch).

    A get_attr node's value is `fetch(its stand-in tensor)`, one for all batches, and
    `release(stand-in)` follows its last use; every other value is dropped after its last use. Only
    the `needed` nodes run (default: `observed_nodes`). `before(b)` runs before each batch's call
    of a node, `after(node, values)` once a node (or a graph input) has its value on every batch."""
    nodes = list(gm.graph.nodes)
    modules = dict(gm.named_modules())
    needed = observed_nodes(gm) if needed is None else needed
    last: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        if n in needed:
            last[n] = i  # a value nobody reads is dropped at once
            for a in n.all_input_nodes:
                last[a] = i
    for n in reversed(nodes):  # a weight lives as long as its widened copy (released together)
        if n in last and n.op == "call_function" and n.all_input_nodes \
                and all(a.op == "get_attr" for a in n.all_input_nodes):
            for a in n.all_input_nodes:
                last[a] = max(last[a], last[n])
    dying: dict[int, list[fx.Node]] = {}
    for n, i in last.items():
        dying.setdefault(i, []).append(n)
    per_batch: dict[fx.Node, list[Any]] = {}
    shared: dict[fx.Node, Any] = {}
    placeholders = iter(range(len(inputs[0]) if inputs else 0))
    for i, n in enumerate(tqdm(nodes, desc=desc, unit="node", disable=not progress)):
        if n.op == "placeholder":
            k = next(placeholders)
            if n in needed:
                per_batch[n] = [b[k] for b in inputs]
                after(n, per_batch[n])
        elif n not in needed or n.op == "output":
            pass
        elif n.op == "get_attr":
            shared[n] = fetch(getattr(gm, str(n.target)))
        elif n.op in ("call_function", "call_module") and n.all_input_nodes \
                and all(a in shared for a in n.all_input_nodes):
            # reads only weights (a float64 copy for calibration, `lower.widen`): one value for
            # all batches, not one copy per batch
            fn = modules[n.target] if n.op == "call_module" else n.target
            shared[n] = fn(*fx.node.map_arg(n.args, shared.__getitem__), **fx.node.map_arg(n.kwargs, shared.__getitem__))  # type: ignore[operator]
            after(n, [shared[n]] * len(inputs))
        elif n.op in ("call_function", "call_module"):
            fn = modules[n.target] if n.op == "call_module" else n.target
            outs = []
            for b in range(len(inputs)):
                pick = lambda a: shared[a] if a in shared else per_batch[a][b]  # noqa: E731
                before(b)
                outs.append(fn(*fx.node.map_arg(n.args, pick), **fx.node.map_arg(n.kwargs, pick)))  # type: ignore[operator]
            per_batch[n] = outs
            after(n, outs)
        else:
            raise RuntimeError(f"streaming calibration: unsupported fx node {n.op} {n.target}")
        for a in dying.get(i, ()):
            per_batch.pop(a, None)
            if a in shared:
                del shared[a]
                if a.op == "get_attr":
                    release(getattr(gm, str(a.target)))


class _Sink:
    """The bundle's tensors as streaming produces them: spooled to the writer at once; small ones
    (parameters, smoothing vectors) also kept, for the steps that read them back (derived specs)."""

    KEEP_BYTES = 1 << 20

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.kept: dict[str, torch.Tensor] = {}

    def __setitem__(self, name: str, t: torch.Tensor) -> None:
        self.writer.add(name, to_numpy(t))
        if t.numel() * t.element_size() <= self.KEEP_BYTES:
            self.kept[name] = t

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.kept[name]

    def __contains__(self, name: object) -> bool:
        return name in self.writer


class _Streaming:
    """One streaming calibration: observers, Hessians and channel plans, filled node by node;
    weights quantized into `sink` (None on ranks other than 0: they only calibrate)."""

    def __init__(self, captured: Any, cfg: QuantConfig, plan: dict[str, Any], source: Callable[[str], torch.Tensor],
                 imported: Any, sink: _Sink | None, shard: tuple[list[int], int] | None = None) -> None:
        """`shard`: (global ids of this rank's batches, number of batches in all) when distributed."""
        graph = captured.main_graph
        self.captured, self.plan, self.source, self.imported, self.sink, self.shard = \
            captured, plan, source, imported, sink, shard
        self.qformat, self.graphs, self.weight_of = rewire(captured, plan)
        self.observers = make_observers(plan)
        self.hessians = shared_hessians(graph, plan)
        self.recorder = Recorder(self.observers, self.hessians)
        groups = channels.groups(graph, plan)
        self.group_of = {k: g for g in groups for k in g}
        self.alphas: dict[str, float] = {}
        for g in groups:
            alpha = cfg.for_node(g[0], "linear").smoothquant_alpha
            if alpha == "auto":
                raise ConfigError(f"smoothquant_alpha: 'auto' ({g[0]}) searches on every batch with all candidate "
                                  "weights in memory; streaming takes a fixed alpha")
            self.alphas[g[0]] = float(alpha)
        self.threshold = float(cfg.act_outlier_threshold)
        self.damp = float(cfg.gptq_damp)
        self.act_order = cfg.gptq_act_order
        self.wanted = transformed_wanted(plan, self.group_of)
        self.weights = Resident(source)
        self.chan: dict[str, channels.ChannelPlan] = {}
        self.node_chan: dict[str, Any] = {}
        self.users = Counter(id(h) for h in self.hessians.values())  # qkeys left to quantize per Hessian
        self.synced: set[int] = set()
        self.fetched: set[str] = set()

    def run(self, batches: list[Any], progress: bool) -> None:
        if not self.observers and not self.hessians:
            return  # nothing to observe (weight-only, round to nearest): weights are quantized in `finish`
        names = {id(t): name for name, t in self.captured.tensors.items()}
        gm = lower.build(self.captured.main_graph, self.captured.tensors.__getitem__, self.plan, lower.OBSERVE,
                         self.recorder)
        # weights the pass fetches and releases itself; the others (lm_head's: its logits are not
        # needed) are dropped as soon as they are quantized
        self.fetched = {names[id(getattr(gm, str(n.target)))] for n in observed_nodes(gm) if n.op == "get_attr"}

        def fetch(stand_in: torch.Tensor) -> torch.Tensor:
            return self.weights.get(names[id(stand_in)])

        def release(stand_in: torch.Tensor) -> None:
            self.weights.release(names[id(stand_in)])

        def before(b: int) -> None:
            self.recorder.batch = b

        with torch.no_grad():
            run_by_node(gm, [as_inputs(b) for b in batches], fetch, release, before, self._after, progress)
        check_reached(self.observers)

    def _after(self, node: fx.Node, values: list[Any]) -> None:
        module = node.graph.owning_module.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(module, Observe):
            return
        qkey, role = module.qkey, module.role
        h = self.hessians.get(qkey) if role == "x" else None
        if self.shard:  # every rank reaches the same Observe nodes in the same order
            if (qkey, role) in self.observers:
                dist.sync_observer(self.observers[(qkey, role)], values, *self.shard)
            if h is not None and id(h) not in self.synced:
                self.synced.add(id(h))
                dist.sync_hessian(h)
        if role == "x" and (self.plan["nodes"][qkey].get("weight")):
            self._linear(qkey, values, h)

    def _linear(self, qkey: str, inputs: list[torch.Tensor], h: Any) -> None:
        """The input of linear `qkey` is observed on every batch: plan its group's channels, stream
        the transformed histogram, quantize its weight (and free what only it needed)."""
        members = self.group_of.get(qkey)
        if members and qkey not in self.chan:
            plan = channels.group_plan(members, self.plan, self.observers,
                                       lambda k: self.weights.get(self.weight_of[k]), self.alphas.get(members[0]),
                                       self.threshold)
            self.chan.update({k: plan for k in members})
        if qkey in self.wanted:
            obs = self.observers[(qkey, "x")]
            xs = [channels.transformed_input(x, self.chan[qkey]) for x in inputs]
            if self.shard:
                obs.transformed = dist.replay_histogram(xs, *self.shard)
            else:
                obs.transformed = Histogram()
                for x in xs:
                    obs.transformed.update(x)
        if self.sink is not None:
            self.node_chan[qkey] = node_plan(qkey, self.chan, self.imported)
            store_weight(self.sink, qkey, self.qformat["nodes"][qkey], self.weights.get(self.weight_of[qkey]),
                         self.node_chan[qkey], gptq.Problem(h.value(), self.damp, act_order=self.act_order) if h is not None else None,
                         self.imported)
        if self.weight_of[qkey] not in self.fetched:
            self.weights.release(self.weight_of[qkey])
        if h is not None:
            self.users[id(h)] -= 1
            if not self.users[id(h)]:
                h.sum = None  # the last linear reading this input is quantized: free X^T X

    def finish(self, heads: int, progress: bool) -> Assembled:
        """Parameters of every input, weights nothing observed, derived specs, float tensors."""
        sink = self.sink
        assert sink is not None
        for qkey, entry in self.qformat["nodes"].items():
            if entry["kind"] == "embedding":
                continue  # after the linears: a tied table may reuse an lm_head's stored weight
            if qkey not in self.node_chan:
                self.node_chan[qkey] = node_plan(qkey, self.chan, self.imported)
                if entry.get("weight"):
                    store_weight(sink, qkey, entry, self.source(self.weight_of[qkey]), self.node_chan[qkey], None,
                                 self.imported)
            store_inputs(sink, qkey, entry, self.observers, self.node_chan[qkey], self.imported)
        for qkey, entry in self.qformat["nodes"].items():
            if entry["kind"] == "embedding":
                store_embedding(sink, qkey, entry, self.source(self.weight_of[qkey]), self.weight_of, self.qformat,
                                self.graphs, self.imported)
        store_derived(sink, self.qformat, heads, self.imported)
        for name in tqdm(float_tensor_names(self.graphs, sink), desc="writing float tensors", unit="tensor",
                         disable=not progress):
            sink[name] = self.source(name)
        return Assembled(self.graphs, {}, self.qformat)


def quantize_streaming(model_dir: str | os.PathLike[str], output: str | os.PathLike[str],
                       config: QuantConfig | None = None, *, data: str | os.PathLike[str] | None = None,
                       samples: Sequence[Sequence[int]] | None = None, seq_len: int = 256,
                       max_samples: int | None = 64, batch_size: int = 4, progress: bool = True,
                       qparams: str | os.PathLike[str] | None = None, distributed: bool = False) -> Path | None:
    """Quantize the causal LM in `model_dir` (config.json + safetensors, sharded or not) into
    `output` without ever holding the model in memory; see the module docstring.

    Calibration data as in `mcq.quantize` (`samples`, else `data`, else the built-in text with the
    folder's tokenizer, else seeded random tokens). `distributed=True`: this process is one rank
    of an initialized torch.distributed group; each rank calibrates its shard of the batches, the
    statistics are all-reduced (`mcq.distributed`) and rank 0 writes `output`. Returns the path
    written (None on the other ranks)."""
    import mcq
    from mcq.capture import capture_causal_lm
    from mcq.examples import load_tokenizer
    from mcq.interop import ImportedQParams
    from mcq.plan import plan_qformat

    cfg = config or default_config()  # the same recipe as `mcq quantize` without --preset
    if cfg.searches:
        raise ConfigError("automatic mixed precision (auto_max_increase, auto_max_fraction) quantizes many trial "
                          "models in memory: not with streaming")
    if cfg.gptq_sequential:
        raise ConfigError("gptq_sequential runs the whole quantized model again after the first pass: not with "
                          "streaming, which writes each weight once, as soon as it is quantized (set "
                          "gptq_sequential: false, e.g. for the W4A16 presets)")
    rank, size = dist.world(distributed)
    folder, out = Path(model_dir), Path(output)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a model folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: the output folder does not exist")
    checkpoint = Checkpoint(folder)
    model, buffers, aliases, transposed = meta_model(folder)
    captured = capture_causal_lm(model)
    tokenizer = load_tokenizer(folder)
    heads = mcq.attention_heads(captured.model_config)
    plan = plan_qformat(captured.main_graph, cfg, heads)
    if samples is None:
        samples = mcq.token_samples(captured, tokenizer, data, seq_len, max_samples)
    every = batches_of(samples, batch_size)
    batches = dist.shard(every, rank, size)
    shard = (list(range(rank, len(every), size)), len(every)) if size > 1 else None
    source = TensorSource(checkpoint, captured.tensors, buffers, aliases, transposed)
    imported = ImportedQParams.load(qparams) if qparams is not None else None
    if rank != 0:
        _Streaming(captured, cfg, plan, source, imported, None, shard).run(batches, progress)
        _barrier(size)
        return None
    import mcq_format

    with mcq_format.StreamWriter(out) as writer:
        stream = _Streaming(captured, cfg, plan, source, imported, _Sink(writer), shard)
        stream.run(batches, progress)
        assembled = stream.finish(heads, progress)
        writer.finish(sections(assembled, captured, cfg, tokenizer, mcq.__version__))
    _barrier(size)
    return out


def _barrier(size: int) -> None:
    """Every rank returns once rank 0 has written the bundle."""
    if size > 1:
        import torch.distributed

        torch.distributed.barrier()
