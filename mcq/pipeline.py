"""The one quantization pipeline of `mcq.quantize` (a model in memory) and `mcq.quantize_streaming`
(a causal LM read from its safetensors checkpoint, written straight into the file).

Both run the same steps from a tensor source (name -> float tensor: the captured model's own
tensors, or `mcq.stream`'s checkpoint reader) into a bundle sink (name -> tensor: a dict, or
`mcq.stream`'s file writer):

1. plan the qformat and batch the calibration samples (a rank of a distributed run: its shard);
2. run the captured main graph one node at a time over every batch (`calibrate.run_by_node`):
   observers and GPTQ Hessians fill as values pass; once a linear's input is known on every
   batch, its group's channel treatment is chosen (the SmoothQuant alpha searched if "auto"),
   the histogram of its transformed input taken and its weight quantized into the sink;
3. parameters of every input, weights no node observed, token tables, derived specs, float tensors;
4. sequential GPTQ (a sink in memory, one process) and the bundle's sections.

Each weight is read when a node first needs it and dropped after its last use, so memory holds
about one transformer block of weights plus the calibration activations of a few nodes, whatever
the depth; the same steps give the same bundle, byte for byte, from either source into either sink.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import torch
from torch import fx
from tqdm.auto import tqdm

from mcq import channels, gptq
from mcq import distributed as dist
from mcq.bundle import (Assembled, float_tensor_names, node_plan, rewire, sections, store_derived,
                        store_embedding, store_inputs, store_weight)
from mcq.calibrate import (Recorder, as_inputs, batches_of, check_reached, make_observers, observed_nodes,
                           run_by_node, shared_hessians, transformed_wanted)
from mcq.calibrators import Histogram
from mcq.capture import MODULE, Captured
from mcq.config import ConfigError, QuantConfig
from runtime import lower
from runtime.quant_modules import Observe

Source = Callable[[str], torch.Tensor]


def refuse_unsupported(cfg: QuantConfig, size: int, streaming: bool) -> None:
    """Steps that need the whole model in memory and one process, refused before any work."""
    if cfg.searches and (streaming or size > 1):
        raise ConfigError("automatic mixed precision (auto_max_increase, auto_max_fraction) quantizes many trial "
                          "models in memory, in one process: not with streaming or distributed calibration")
    if cfg.gptq_sequential and (streaming or size > 1):
        raise ConfigError("gptq_sequential runs the whole quantized model again after the first pass, in memory "
                          "and in one process: not with streaming, which writes each weight once, as soon as it is "
                          "quantized, nor distributed (set gptq_sequential: false, e.g. for the W4A16 presets)")


def calibration_batches(captured: Captured, plan: dict[str, Any], samples: Sequence[Any],
                        batch_size: int) -> list[Any]:
    """A generic module's samples, one call each; token id lists grouped into batches."""
    if captured.kind != MODULE:
        return batches_of(samples, batch_size)
    if not samples and any(e["inputs"] for e in plan["nodes"].values()):
        raise ValueError("quantizing activations of a captured module needs samples=[...] "
                         "(tuples of its inputs, or dicts of keyword arguments)")
    return [captured.graph_inputs(s) for s in samples]


def run(captured: Captured, cfg: QuantConfig, samples: Sequence[Any], source: Source, sink: Any, *,
        tokenizer: Any, batch_size: int, progress: bool, qparams: Any, rank: int = 0,
        size: int = 1) -> dict[str, Any] | None:
    """Quantize `captured`, its float tensors read from `source`, into `sink` (a dict, or any
    object that stores tensors by name and reads back the small ones); returns the bundle's
    sections. `sink` None: this rank of a distributed run only calibrates (returns None)."""
    import mcq
    from mcq.interop import ImportedQParams
    from mcq.plan import plan_qformat
    from mcq.sequential import refine

    heads = mcq.attention_heads(captured.model_config)
    plan = plan_qformat(captured.main_graph, cfg, heads)
    every = calibration_batches(captured, plan, samples, batch_size)
    batches = dist.shard(every, rank, size) if size > 1 else every
    shard = (list(range(rank, len(every), size)), len(every)) if size > 1 else None
    imported = ImportedQParams.load(qparams) if qparams is not None else None
    quantization = NodePass(captured, cfg, plan, source, imported, sink, shard)
    quantization.run(batches, progress)
    if sink is None:
        return None
    assembled = quantization.finish(heads, progress)
    if cfg.gptq_sequential and quantization.hessians:
        refine(captured, assembled, lambda k: source(quantization.weight_of[k]), quantization.chan, imported,
               batches, cfg.gptq_damp, cfg.gptq_fit_damp, progress, cfg.gptq_act_order)
    return sections(assembled, captured, cfg, tokenizer, mcq.__version__)


class Resident:
    """Weights read from a source and kept until released (after their last use in the graph)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            self.tensors[name] = self.source(name)
        return self.tensors[name]

    def release(self, name: str) -> None:
        self.tensors.pop(name, None)


class NodePass:
    """Step 2 and 3: observers, Hessians and channel plans, filled node by node; weights
    quantized into `sink` (None: only calibrate)."""

    def __init__(self, captured: Captured, cfg: QuantConfig, plan: dict[str, Any], source: Source,
                 imported: Any, sink: Any, shard: tuple[list[int], int] | None = None) -> None:
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
        self.alphas = {g[0]: cfg.for_node(g[0], "linear").smoothquant_alpha for g in groups}  # per-node overrides
        self.threshold = float(cfg.act_outlier_threshold)
        self.damp = float(cfg.gptq_damp)
        self.act_order = cfg.gptq_act_order
        self.wanted = transformed_wanted(plan, self.group_of)
        # linears whose static input range is searched against their output error (act_range_search)
        self.clip_search = {k for k, e in plan["nodes"].items() if e["kind"] == "linear" and "x" in e["inputs"]
                            and e["inputs"]["x"]["dtype"] != "bfloat16"
                            and cfg.for_node(k, "linear").act_range_search == "output_mse"}
        self.clipped: set[str] = set()
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
            weight = lambda k: self.weights.get(self.weight_of[k])  # noqa: E731
            alpha = self.alphas[members[0]]
            if alpha == "auto":
                alpha = channels.search_alpha(members, self.plan, self.observers[(members[0], "x")],
                                              [weight(k) for k in members], inputs, self.threshold,
                                              dist.sum_tensors if self.shard else None)
            plan = channels.group_plan(members, self.plan, self.observers, weight, float(alpha), self.threshold)
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
        if qkey in self.clip_search and qkey not in self.clipped:
            # one factor for the group's linears that ask for it (they read the same tensor)
            chosen = [k for k in (members or [qkey]) if k in self.clip_search]
            factor = channels.search_clip(self.chan.get(qkey), self.observers[(qkey, "x")],
                                          self.plan["nodes"][qkey]["inputs"]["x"],
                                          [self.weights.get(self.weight_of[k]) for k in chosen], inputs,
                                          dist.sum_tensors if self.shard else None)
            for k in chosen:
                self.observers[(k, "x")].clip = factor
                self.clipped.add(k)
        if self.sink is not None:
            self.node_chan[qkey] = node_plan(qkey, self.chan, self.imported)
            problem = gptq.Problem(h.value(), self.damp, act_order=self.act_order) if h is not None else None
            store_weight(self.sink, qkey, self.qformat["nodes"][qkey], self.weights.get(self.weight_of[qkey]),
                         self.node_chan[qkey], problem, self.imported)
        if self.weight_of[qkey] not in self.fetched:
            self.weights.release(self.weight_of[qkey])
        if h is not None:
            self.users[id(h)] -= 1
            if not self.users[id(h)]:
                h.sum = None  # the last linear reading this input is quantized: free X^T X

    def finish(self, heads: int, progress: bool) -> Assembled:
        """Parameters of every input, weights nothing observed, derived specs, float tensors."""
        sink = self.sink
        for qkey, entry in tqdm(self.qformat["nodes"].items(), desc="storing parameters", unit="node",
                                disable=not progress):
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
        return Assembled(self.graphs, sink, self.qformat)
