"""Fuzz the `.mcq` reader: every input must be accepted or rejected with an McqFormatError.

    python benchmarks/fuzz_reader.py [--inputs 100000] [--workers 1] [--state out/fuzz/state.json]
                                     [--seed 0] [--flips 1000] [--no-tracemalloc]

Inputs are mutations of the small valid bundles of spec/conformance/v1.0/valid (deterministic per
input index and --seed): bit flips, byte overwrites, insertions, deletions, truncations, header
JSON mutations (the header re-framed with a correct length), msgpack section mutations with the
section hash re-signed (structured edits of the decoded object, or raw byte edits of the msgpack)
so that they reach the decoder and the schema checks, tensor-data edits, and random bytes.  Each
input is written to a file and checked with ``mcq_format.validate(path, verify=True)``.

Recorded per input: the outcome (accepted, or the error class), the wall time, and the peak
Python heap allocation during the call (tracemalloc; numpy buffers are traced, the read-only
memory map is not an allocation).  Anything that is not an McqFormatError (or a hang past
--timeout seconds) is a failure: the input is saved under ``<state dir>/crashes/``.

The run is resumable: inputs are processed in chunks whose results are merged into --state after
each chunk; rerunning with the same arguments continues where it stopped.  --flips N also
measures N random single-bit flips per seed bundle (all must be rejected).  Prints summary tables;
exit status 1 when any failure was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mcq_format  # noqa: E402
from mcq_format import constants as C  # noqa: E402
from mcq_format.container import RawTensor, build_header, open_container  # noqa: E402
from mcq_format.sections import encode_section  # noqa: E402

SEEDS = [ROOT / "spec/conformance/v1.0/valid/llama-mini-w8a8kv8.mcq",
         ROOT / "spec/conformance/v1.0/valid/gpt2-mini-w8a8kv8-tensor-sym.mcq"]
CHUNK = 500
MEMORY_LIMIT = 2 * 2**30  # address space of a fuzz process


class Seed:
    """A valid bundle, as bytes and taken apart (model tensors, raw sections, metadata)."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.header_len = int.from_bytes(self.data[:8], "little")
        self.header_obj = json.loads(self.data[8 : 8 + self.header_len])
        with open_container(path) as c:
            self.tensors = {n: RawTensor(t.dtype, t.shape, bytes(c.raw(n))) for n, t in c.header.tensors.items()
                            if not n.startswith(C.SECTION_PREFIX)}
            self.sections = {n[len(C.SECTION_PREFIX):]: bytes(c.raw(n)) for n in c.header.tensors
                             if n.startswith(C.SECTION_PREFIX)}
            self.metadata = dict(c.metadata)
        with mcq_format.read(path) as b:
            self.objects = b.sections


def assemble(tensors: dict[str, RawTensor], sections: dict[str, bytes], metadata: dict[str, str],
             resign: bool = True) -> bytes:
    """A container laid out as writers do (no validation), section hashes re-signed."""
    meta = dict(metadata)
    items = dict(tensors)
    for name, data in sections.items():
        if resign:
            meta[C.META_SHA256_PREFIX + name] = hashlib.sha256(data).hexdigest()
        items[C.SECTION_PREFIX + name] = RawTensor("U8", (len(data),), data)
    ordered = sorted(items.items(), key=lambda p: (-C.DTYPES[p[1].dtype].itemsize, p[0]))
    header, _ = build_header(ordered, meta)
    return header + b"".join(bytes(t.data) for _, t in ordered)


# ------------------------------------------------------------------ mutators
def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, 2**64, 2**64 - 1, -(2**63), 10**40])
    if choice == 3:
        return rng.choice([0.5, -0.0, 1e308, 4.0])
    if choice == 4:
        return rng.choice(["", "F32", "U8", "BF16", "F64", "mcq", "1.0", "2.0", "\u0000", "\ud800", "x" * 300])
    if choice == 5 and depth < 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 6 and depth < 4:
        return {rng.choice(["dtype", "shape", "data_offsets", "x", ""]): _random_json(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if choice == 7:
        return [rng.randrange(0, 2**16) for _ in range(rng.randrange(4))]
    if choice == 8:
        return [[[[[]]]]]
    return rng.randrange(-5, 100_000)


def _walk(obj: Any) -> list[tuple[Any, Any]]:
    """(container, key) pairs for every slot of a JSON/msgpack tree, iteratively."""
    slots, stack = [], [obj]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            slots.append((node, k))
            if isinstance(node[k], (dict, list)):
                stack.append(node[k])
    return slots


def _mutate_tree(obj: Any, rng: random.Random, value: Any) -> None:
    slots = _walk(obj)
    if not slots:
        return
    node, key = rng.choice(slots)
    op = rng.randrange(6)
    if op == 0 and isinstance(node, dict):
        del node[key]
    elif op == 0 and isinstance(node, list):
        del node[key]
    elif op == 1 and isinstance(node, list):
        node.insert(key, node[key])
    elif op == 2 and isinstance(node, dict):
        node[rng.choice(["x", "__metadata__", "name", "op", "args", "ref"])] = value
    elif op == 3:
        other_node, other_key = rng.choice(slots)
        node[key] = _copy(other_node[other_key])  # a copy: the tree stays acyclic
    else:
        node[key] = value


def _section_value(rng: random.Random, seed: Seed) -> Any:
    choice = rng.randrange(10)
    names = list(seed.tensors)
    if choice == 0:
        return ["ref", rng.choice(["x", "input_ids", "", "nonexistent"])]
    if choice == 1:
        return ["tensor", rng.choice(names + ["nope", C.SECTION_PREFIX + "manifest"])]
    if choice == 2:
        return rng.choice(["builtins.eval", "os.system", "__import__", "aten.linear.default", "mcq.kv_point"])
    if choice == 3:
        return rng.randbytes(rng.randrange(40))
    if choice == 4:
        return [rng.choice(["dtype", "list", "str", "device", "layout", "memory_format", "code"]),
                rng.choice(["float32", "cpu", [], None, "strided", 7])]
    return _random_json(rng)


def mutate(seed: Seed, rng: random.Random) -> tuple[str, bytes]:
    """One fuzz input: (mutator name, file bytes)."""
    data = seed.data
    kind = rng.choices(
        ["bitflip", "bitflip-header", "byte", "insert", "delete", "truncate", "header-json", "header-text",
         "section-tree", "section-bytes", "tensor-data", "random"],
        weights=[10, 10, 6, 6, 6, 5, 14, 8, 20, 8, 3, 4])[0]
    buf = bytearray(data)
    end = 8 + seed.header_len
    if kind in ("bitflip", "bitflip-header"):
        top = end if kind == "bitflip-header" else len(buf)
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            bit = rng.randrange(top * 8)
            buf[bit // 8] ^= 1 << (bit % 8)
        return kind, bytes(buf)
    if kind == "byte":
        for _ in range(rng.choice([1, 2, 4])):
            buf[rng.randrange(end if rng.random() < 0.6 else len(buf))] = rng.randrange(256)
        return kind, bytes(buf)
    if kind == "insert":
        pos = rng.randrange(end + 1 if rng.random() < 0.5 else len(buf) + 1)
        buf[pos:pos] = rng.choice([b" ", b"\n", b"{", b'"', b"0", rng.randbytes(rng.randrange(1, 17))])
        return kind, bytes(buf)
    if kind == "delete":
        pos = rng.randrange(end if rng.random() < 0.5 else len(buf))
        del buf[pos : pos + rng.choice([1, 1, 2, 8, 64])]
        return kind, bytes(buf)
    if kind == "truncate":
        return kind, bytes(buf[: rng.randrange(len(buf))])
    if kind == "header-json":
        obj = json.loads(json.dumps(seed.header_obj))
        for _ in range(rng.choice([1, 1, 2, 3])):
            _mutate_tree(obj, rng, _random_json(rng))
        text = json.dumps(obj, sort_keys=rng.random() < 0.8, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 64)
        length = len(text) if rng.random() < 0.9 else rng.choice([len(text) + 1, len(text) - 1, 2**63])
        return kind, struct.pack("<Q", length) + text + data[end:]
    if kind == "header-text":
        text = bytearray(data[8:end])
        for _ in range(rng.choice([1, 2])):
            pos = rng.randrange(len(text))
            text[pos : pos + rng.randrange(0, 4)] = rng.choice(
                [b"", b",", b":", b"[", b"]", b"{}", b'"', b"\\", b"\\u0000", b"-", b"1e999", b"NaN", b"\xc3", b"\xf0\x9f"])
        return kind, struct.pack("<Q", len(text)) + bytes(text) + data[end:]
    if kind in ("section-tree", "section-bytes"):
        sections = dict(seed.sections)
        name = rng.choice(sorted(sections))
        if kind == "section-tree":
            obj = _copy(seed.objects[name])
            for _ in range(rng.choice([1, 1, 2, 4])):
                _mutate_tree(obj, rng, _section_value(rng, seed))
            try:
                sections[name] = encode_section(obj, name)
            except (mcq_format.McqFormatError, RecursionError, ValueError):
                return kind, data
        else:
            raw = bytearray(sections[name])
            op = rng.randrange(4)
            pos = rng.randrange(len(raw))
            if op == 0:
                raw[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                raw[pos:pos] = rng.choice([b"\xc1", b"\xd4\x00\x00", b"\xdd\xff\xff\xff\xff", b"\x91" * 200,
                                           b"\xdb\x7f\xff\xff\xff", rng.randbytes(4)])
            elif op == 2:
                del raw[pos : pos + rng.randrange(1, 9)]
            else:
                raw[pos] = rng.choice([0xC0, 0xC3, 0xDC, 0xDE, 0xC4, 0xD9, 0xCF, 0xCB])
            sections[name] = bytes(raw)
        return kind, assemble(seed.tensors, sections, seed.metadata, resign=rng.random() < 0.95)
    if kind == "tensor-data":
        pos = end + rng.randrange(len(buf) - end)
        buf[pos] ^= 1 << rng.randrange(8)
        return kind, bytes(buf)
    size = rng.choice([0, 1, 7, 8, 9, 64, 1000, 5000])
    prefix = struct.pack("<Q", rng.choice([2, size, max(0, size - 8), 2**20])) if rng.random() < 0.5 else b""
    return kind, prefix + rng.randbytes(size)


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


# ------------------------------------------------------------------ running
class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


_SEEDS: list[Seed] = []


def _init() -> None:
    # a safety net for the shared machine: an input that allocates without bound fails with
    # MemoryError (reported as unexpected) instead of swapping
    limit = MEMORY_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    _SEEDS.extend(Seed(p) for p in SEEDS)
    signal.signal(signal.SIGALRM, _alarm)


def check_one(path: str, data: bytes, timeout: float, trace: bool) -> tuple[str, float, int, str]:
    """(outcome, seconds, peak traced bytes, traceback or '') for one input."""
    with open(path, "wb") as f:
        f.write(data)
    if trace:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    tb = ""
    try:
        mcq_format.validate(path, verify=True)
        outcome = "accepted"
    except mcq_format.McqFormatError as exc:
        outcome = type(exc).__name__
    except _Hang:
        outcome, tb = "HANG", f"no answer within {timeout} s"
    except BaseException as exc:  # noqa: BLE001  (what the fuzzer is looking for)
        outcome, tb = f"UNEXPECTED:{type(exc).__name__}", traceback.format_exc()
    finally:
        seconds = time.perf_counter() - start
        signal.setitimer(signal.ITIMER_REAL, 0)
    peak = tracemalloc.get_traced_memory()[1] - base if trace else 0
    return outcome, seconds, peak, tb


def run_chunk(args: tuple[int, int, int, float, bool, str]) -> dict[str, Any]:
    chunk, count, seed, timeout, trace, crash_dir = args
    if not _SEEDS:
        _init()
    if trace and not tracemalloc.is_tracing():
        tracemalloc.start()
    stats: dict[str, Any] = {"chunk": chunk, "outcomes": Counter(), "by_mutator": {}, "max_seconds": 0.0, "slowest": "",
                             "max_peak": 0, "max_peak_input": "", "seconds": 0.0, "crashes": []}
    fd, path = tempfile.mkstemp(suffix=".mcq", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        for i in range(chunk * CHUNK, min((chunk + 1) * CHUNK, count)):
            rng = random.Random(f"{seed}:{i}")
            base = rng.randrange(len(_SEEDS))
            mutator, data = mutate(_SEEDS[base], rng)
            outcome, seconds, peak, tb = check_one(path, data, timeout, trace)
            label = f"#{i} {mutator} on {SEEDS[base].name} ({len(data)} bytes)"
            stats["outcomes"][outcome] += 1
            stats["by_mutator"].setdefault(mutator, Counter())[outcome] += 1
            stats["seconds"] += seconds
            if seconds > stats["max_seconds"]:
                stats["max_seconds"], stats["slowest"] = seconds, label
            if peak > stats["max_peak"]:
                stats["max_peak"], stats["max_peak_input"] = peak, label
            if tb:
                crash = Path(crash_dir) / f"input-{i}.mcq"
                crash.parent.mkdir(parents=True, exist_ok=True)
                crash.write_bytes(data)
                stats["crashes"].append({"input": i, "outcome": outcome, "file": str(crash), "traceback": tb})
    finally:
        os.unlink(path)
    stats["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return stats


def merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    total.setdefault("outcomes", Counter()).update(part["outcomes"])
    by = total.setdefault("by_mutator", {})
    for k, v in part["by_mutator"].items():
        by.setdefault(k, Counter()).update(v)
    for key, label in (("max_seconds", "slowest"), ("max_peak", "max_peak_input")):
        if part[key] > total.get(key, -1):
            total[key], total[label] = part[key], part[label]
    total["seconds"] = total.get("seconds", 0.0) + part["seconds"]
    total["maxrss_kib"] = max(total.get("maxrss_kib", 0), part["maxrss_kib"])
    total.setdefault("crashes", []).extend(part["crashes"])


def bitflip_campaign(n: int, seed: int) -> list[tuple[str, int, Counter]]:
    """n random single-bit flips anywhere in each seed bundle: (bundle, rejected, codes)."""
    rows = []
    fd, path = tempfile.mkstemp(suffix=".mcq", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        for p in SEEDS:
            data = p.read_bytes()
            rng = random.Random(f"flips:{seed}:{p.name}")
            codes: Counter = Counter()
            for bit in rng.sample(range(len(data) * 8), n):
                buf = bytearray(data)
                buf[bit // 8] ^= 1 << (bit % 8)
                Path(path).write_bytes(buf)
                try:
                    mcq_format.validate(path, verify=True)
                    codes["ACCEPTED"] += 1
                except mcq_format.McqFormatError as exc:
                    codes[exc.code] += 1
            rows.append((p.name, n - codes["ACCEPTED"], codes))
    finally:
        os.unlink(path)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    parser.add_argument("--state", type=Path, default=ROOT / "out" / "fuzz" / "state.json")
    parser.add_argument("--flips", type=int, default=1000, help="single-bit flips per seed bundle (0: skip)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="faster, no per-input peak allocation")
    args = parser.parse_args(argv)
    trace = not args.no_tracemalloc
    key = {"inputs": args.inputs, "seed": args.seed, "chunk": CHUNK, "tracemalloc": trace,
           "seeds": [hashlib.sha256(p.read_bytes()).hexdigest() for p in SEEDS]}
    state: dict[str, Any] = {"key": key, "done": [], "total": {}}
    if args.state.is_file():
        loaded = json.loads(args.state.read_text())
        if loaded.get("key") == key:
            state = loaded
            state["total"]["outcomes"] = Counter(state["total"].get("outcomes", {}))
            state["total"]["by_mutator"] = {k: Counter(v) for k, v in state["total"].get("by_mutator", {}).items()}
            print(f"resuming: {len(state['done'])} chunks of {CHUNK} already done")
    args.state.parent.mkdir(parents=True, exist_ok=True)
    todo = [c for c in range(math.ceil(args.inputs / CHUNK)) if c not in set(state["done"])]
    jobs = [(c, args.inputs, args.seed, args.timeout, trace, str(args.state.parent / "crashes")) for c in todo]
    wall = time.perf_counter()
    pool = multiprocessing.Pool(args.workers, initializer=_init) if args.workers > 1 else None
    results = pool.imap_unordered(run_chunk, jobs) if pool else map(run_chunk, jobs)
    try:
        for part in results:
            merge(state["total"], part)
            state["done"].append(part["chunk"])
            args.state.write_text(json.dumps(state, indent=1, default=dict))
            done = sum(state["total"]["outcomes"].values())
            print(f"\r{done:>8,d} inputs  {time.perf_counter() - wall:7.1f} s", end="", flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    print()
    total = state["total"]
    count = sum(total["outcomes"].values())
    print(f"\n{count:,d} inputs (seed {args.seed}), {total['seconds']:.1f} s inside validate(), "
          f"this run's wall time {time.perf_counter() - wall:.1f} s, {args.workers} worker(s)")
    print(f"\n{'outcome':34s} {'count':>8s}")
    for outcome, n in sorted(total["outcomes"].items(), key=lambda kv: -kv[1]):
        print(f"{outcome:34s} {n:>8,d}")
    print(f"\n{'mutator':16s} {'inputs':>8s} {'accepted':>9s}  top outcomes")
    for mutator, counter in sorted(total["by_mutator"].items()):
        top = ", ".join(f"{k} {v}" for k, v in counter.most_common(3))
        print(f"{mutator:16s} {sum(counter.values()):>8,d} {counter.get('accepted', 0):>9,d}  {top}")
    print(f"\nslowest input: {total['max_seconds'] * 1e3:.1f} ms ({total['slowest']})")
    print(f"largest peak allocation: {total['max_peak'] / 2**20:.2f} MiB ({total['max_peak_input']})"
          if trace else "peak allocation: not measured (--no-tracemalloc)")
    print(f"max RSS of a fuzz process: {total['maxrss_kib'] / 1024:.1f} MiB")
    failures = total["crashes"]
    print(f"failures (unexpected exceptions or hangs): {len(failures)}")
    for c in failures[:10]:
        print(f"  input {c['input']}: {c['outcome']} -> {c['file']}\n{c['traceback']}")
    flips_ok = True
    if args.flips:
        print(f"\n{'bit flips':34s} {'rejected':>9s}  codes")
        for name, rejected, codes in bitflip_campaign(args.flips, args.seed):
            flips_ok &= rejected == args.flips
            top = ", ".join(f"{k} {v}" for k, v in codes.most_common(4))
            print(f"{name:34s} {rejected:>4d}/{args.flips}  {top}")
    return 0 if not failures and flips_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
