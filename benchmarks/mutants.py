"""Issue 24's guarantee, measured: a mutant of a valid bundle (one value, name, dtype, shape or
reference changed in its sections or parameter tensors; every hash re-signed, as a hostile
sender would) either fails `mcq_format.validate` with a format error, or loads and runs one
prefill and one decode step with finite outputs.

    PYTHONPATH=. python benchmarks/mutants.py --count 10000 [--families qformat,params,manifest,graph] \
        [--paths reference,default,q3] [--seed 0]

Prints how many mutants each family made, how each ended (refused with a format error, ran
finite, ran with NaN/inf outputs, raised another exception, ran past the time limit) and the
first few of every bad outcome, to reproduce by seed. Mutants come from four conformance bundles
(1-layer Llama W8A8KV8, GPT-2 rotated W8A8KV8, GPT-2 W8A16, GPT-J W8A8KV8).
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "spec" / "conformance")]

import generate as gen  # noqa: E402  (spec/conformance/generate.py: Parts re-signs every hash)
import mcq_format  # noqa: E402
from mcq_format import constants as C  # noqa: E402

VALID = ROOT / "spec" / "conformance" / "v1.0" / "valid"
BASES = ("llama-mini-w8a8kv8", "gpt2-mini-w8a8kv8-rotated", "gpt2-tiny-w8a16", "gptj-tiny-w8a8kv8")
POOL: tuple[Any, ...] = (0, 1, -1, 2, 7, 127, 300, 2**31, 2**64 - 1, 0.5, -0.0, 1e-30, float("nan"), float("inf"),
                         None, True, False, "", "0", "int3", "int4", "int8", "fp8_e4m3fn", "bfloat16", "float32",
                         "tensor", "channel", "head", "group", "rotated_tensor", [], {}, [1], [0, 1])
FLOATS = (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-38, 1e30, 3.5)
INTS = (0, 1, -1, 127, -128, 255, 300, -300, 2**31 - 1)
TIME_LIMIT_S = 5  # per execution path
MEMORY_LIMIT_MIB = 200 + 400  # the 200 MB over a child's baseline (torch + runtime: ~200-400 MiB)
FAMILIES = ("qformat", "params", "manifest", "graph")


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value inside nested maps and lists (containers included)."""
    out = [path]
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            out += _leaves(obj[k], path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, path + (i,))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _drop(obj: Any, path: tuple[Any, ...]) -> None:
    for k in path[:-1]:
        obj = obj[k]
    if isinstance(obj, dict):
        del obj[path[-1]]
    else:
        obj.pop(path[-1])


def _value(rng: random.Random, p: gen.Parts) -> Any:
    if rng.random() < 0.25:  # a name that exists: another tensor
        return rng.choice(sorted(p.tensors))
    return copy.deepcopy(rng.choice(POOL))


def mutate_qformat(rng: random.Random, p: gen.Parts) -> str:
    nodes = p.sections["qformat"]["nodes"]
    qkey = rng.choice(sorted(nodes))
    paths = [q for q in _leaves(nodes[qkey]) if q]
    path = rng.choice(paths)
    if rng.random() < 0.2:
        _drop(nodes[qkey], path)
        return f"qformat {qkey} {'/'.join(map(str, path))}: dropped"
    value = _value(rng, p)
    _set(nodes[qkey], path, value)
    return f"qformat {qkey} {'/'.join(map(str, path))} = {value!r:.40}"


def mutate_params(rng: random.Random, p: gen.Parts) -> str:
    names = [n for n in sorted(p.tensors) if n.rsplit(".", 1)[-1] in ("scale", "zero_point", "smooth", "outliers")
             or n.startswith("rotation.") or n.endswith("/weight")]
    name = rng.choice(names)
    dtype, shape, data = p.tensors[name]
    arr = np.frombuffer(data, dtype=C.DTYPES[dtype].numpy).reshape(shape).copy()
    how = rng.choice(("value", "value", "value", "dtype", "shape"))
    if how == "value" and arr.size:
        i = rng.randrange(arr.size)
        v = rng.choice(FLOATS if arr.dtype.kind == "f" else INTS)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr.reshape(-1)[i] = np.array(v).astype(arr.dtype)
        p.tensors[name] = (dtype, shape, arr.tobytes())
        return f"tensor {name}[{i}] = {v!r}"
    if how == "dtype":
        new = rng.choice([d for d in ("F32", "F16", "I8", "U8", "I32", "I64", "BF16") if d != dtype])
        size = C.DTYPES[new].itemsize
        n = len(data) // size
        p.tensors[name] = (new, [n], data[: n * size])
        return f"tensor {name}: {dtype} -> {new}[{n}]"
    cut = arr.reshape(-1)[: max(0, arr.size - rng.choice((1, arr.size // 2 or 1)))]
    p.tensors[name] = (dtype, [cut.size], cut.tobytes())
    return f"tensor {name}: {list(shape)} -> [{cut.size}]"


def mutate_manifest(rng: random.Random, p: gen.Parts) -> str:
    man = p.sections["manifest"]
    paths = [q for q in _leaves(man) if q and q[0] in ("kv_cache", "tokenizer", "quant", "entry_points")]
    path = rng.choice(paths)
    value = _value(rng, p)
    _set(man, path, value)
    return f"manifest {'/'.join(map(str, path))} = {value!r:.40}"


def mutate_graph(rng: random.Random, p: gen.Parts) -> str:
    name = rng.choice(sorted(k for k in p.sections if k.startswith("graph/")))
    g = p.sections[name]
    i = rng.randrange(len(g["nodes"]))
    node = g["nodes"][i]
    paths = [q for q in _leaves({"args": node["args"], "kwargs": node["kwargs"]}) if len(q) > 1]
    if not paths:
        return "graph: no args"
    path = rng.choice(paths)
    earlier = [n["name"] for n in g["nodes"][:i]] + [x["name"] for x in g["inputs"]]
    choice = rng.random()
    if choice < 0.3 and earlier:
        value: Any = ["ref", rng.choice(earlier)]
    elif choice < 0.45:
        value = ["tensor", rng.choice(sorted(p.tensors))]
    else:
        value = copy.deepcopy(rng.choice(POOL))
        if isinstance(value, str):
            value = ["str", value]
    _set({"args": node["args"], "kwargs": node["kwargs"]}, path, value)
    return f"{name} node {node['name']} {'/'.join(map(str, path))} = {value!r:.40}"


MUTATORS: dict[str, Callable[[random.Random, gen.Parts], str]] = {
    "qformat": mutate_qformat, "params": mutate_params, "manifest": mutate_manifest, "graph": mutate_graph}


def run_bundle(path: Path, base: str, engine: str | None) -> tuple[bool, list[np.ndarray]]:
    """Load, then one prefill and one decode step on the base vector's inputs: (finite, the
    logits of both steps). engine "q3": the reference path at qlevel 3."""
    import runtime
    import torch

    model = runtime.load(path, qlevel=3, engine="reference") if engine == "q3" else runtime.load(path, engine=engine)
    pre = np.load(VALID / f"{base}.prefill.q4.npz")
    ids = torch.from_numpy(pre["in.input_ids"])
    mask = torch.from_numpy(pre["in.attention_mask"])
    logits, cache = model.prefill(ids, mask)
    step, _ = model.decode(ids[:, -1], cache)
    out = [np.array(x.detach() if isinstance(x, torch.Tensor) else x) for x in (logits, step)]
    return all(bool(np.isfinite(x.astype(np.float32)).all()) for x in out), out


def _has_weight_only(path: Path) -> bool:
    nodes = mcq_format.read(path).sections["qformat"]["nodes"]
    return any(e["kind"] == "linear" and e.get("weight") and not e["inputs"].get("x") for e in nodes.values())


def _run_paths(path: Path, base: str, paths: list[str]) -> str:
    """How the mutant ran on each path; with "reference" and "q3" both listed, qlevels 3 and 4
    must give bit-identical logits (spec Q.1; bundles with weight-only linears excepted: those run
    bf16 kernels at qlevel 4, within spec Q.4a's bound of qlevel 3)."""
    results, logits = [], {}
    for engine in paths:
        try:
            finite, logits[engine] = run_bundle(path, base, None if engine == "default" else engine)
            results.append("ran" if finite else "non-finite")
        except mcq_format.McqFormatError as e:
            results.append(f"refused at load {e.code}")
        except Exception as e:  # noqa: BLE001 - what the property forbids, counted by type
            results.append(f"exception {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:140])
    if "reference" in logits and "q3" in logits and not _has_weight_only(path) and not all(
            np.array_equal(a, b) for a, b in zip(logits["reference"], logits["q3"])):
        results.append("qlevel 3 != qlevel 4")
    bad = [r for r in results if r != "ran"]
    return bad[0] if bad else "ran"


_CONTEXT: Any = None


def _context() -> Any:
    """A forkserver: children fork from a clean process that imported torch and the runtime but
    ran nothing (forking a process whose OpenMP threads already ran deadlocks the child)."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["torch", "runtime", "mcq_format", "mutants"])
    return _CONTEXT


def _child(conn: Any, path: str, base: str, paths: list[str]) -> None:
    import resource

    try:
        result = _run_paths(Path(path), base, paths)
    except BaseException as e:  # noqa: BLE001
        result = f"exception {type(e).__name__}"
    conn.send((result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    conn.close()


def outcome(path: Path, base: str, paths: list[str]) -> tuple[str, float]:
    """(how the mutant ended, the child's peak RSS in MiB). Loading and running happen in a child
    process, so that a crash, a hang or a memory blow-up is counted, not fatal."""
    try:
        mcq_format.validate(path)
    except mcq_format.McqFormatError as e:
        return f"refused {e.code}", 0.0
    except Exception as e:  # noqa: BLE001 - the validator itself must only raise format errors
        return f"validate raised {type(e).__name__}: {e}"[:160], 0.0
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, str(path), base, paths))
    proc.start()
    send.close()
    proc.join(TIME_LIMIT_S * len(paths))
    if proc.is_alive():
        proc.kill()
        proc.join()
        return "time limit", 0.0
    if proc.exitcode is not None and proc.exitcode < 0:
        return f"crash {signal.Signals(-proc.exitcode).name}", 0.0
    try:
        result, rss = receive.recv() if receive.poll(1) else ("exception (no result)", 0.0)
    except EOFError:
        result, rss = "exception (no result)", 0.0
    receive.close()
    return result, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--paths", default="reference,default",
                    help="execution paths a valid mutant must run on (q3: the reference path at qlevel 3, "
                         "compared bit for bit with reference)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="examples listed per bad outcome")
    ap.add_argument("--start", type=int, default=0, help="first mutant index (to reproduce one: --start N --count 1)")
    ap.add_argument("--verbose", action="store_true", help="print every mutant before running it")
    args = ap.parse_args()
    families = args.families.split(",")
    warnings.simplefilter("ignore")
    originals = {b: gen.Parts(VALID / f"{b}.mcq") for b in BASES}
    gen.ORIGINAL = originals[BASES[0]]
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    t0 = time.time()
    peak = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.start, args.start + args.count):
            rng = random.Random(args.seed * 1_000_003 + i)
            base = rng.choice(BASES)
            family = rng.choice(families)
            p = copy.deepcopy(originals[base])
            what = MUTATORS[family](rng, p)
            if args.verbose:
                print(f"seed {i} {base}: {what}", flush=True)
            path = Path(tmp) / f"m{i}.mcq"
            path.write_bytes(p.build())
            result, rss = outcome(path, base, args.paths.split(","))
            if rss > MEMORY_LIMIT_MIB and result == "ran":
                result = "memory limit"
            peak = max(peak, rss)
            path.unlink()
            kind = result.split(" ")[0] if result.startswith("refused") else result.split(":")[0]
            counts[(family, kind)] += 1
            if not (result == "ran" or result.startswith("refused")) and len(examples[kind]) < args.show:
                examples[kind].append(f"seed {i} {base}: {what}\n      -> {result}")
            if (i + 1 - args.start) % 500 == 0:
                print(f"{i + 1} mutants, {time.time() - t0:.0f} s", flush=True)
    kinds = sorted({k for _, k in counts})
    print(f"\n{args.count} mutants in {time.time() - t0:.0f} s, paths {args.paths}, largest child RSS "
          f"{peak:.0f} MiB\n")
    print("| family | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for f in families:
        print(f"| {f} | " + " | ".join(str(counts[(f, k)]) for k in kinds) + " |")
    bad = sum(v for (_, k), v in counts.items() if k not in ("ran", "refused"))
    print(f"\nproperty {'HOLDS' if not bad else 'BROKEN'}: {bad} mutants neither refused nor run finite")
    for result, ex in sorted(examples.items()):
        print(f"\n{result}:")
        for e in ex:
            print(f"  {e}")


if __name__ == "__main__":
    main()
