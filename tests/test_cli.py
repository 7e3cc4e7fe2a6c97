"""CLI: bad input gets one clear line and exit code 1, never a traceback; happy paths work."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mcq.cli import main


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    for n in needles:
        assert n in text, text


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("weight_calib_method: AMAX_SYM\nact_bits: 8\n")
    assert_one_line_error(run("quantize", "--example", "gptj-tiny", "--config", cfg, "-o", tmp_path / "o.mcq"),
                          "act_bits", "known keys")


def test_invalid_method_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("act_calib_method: MINMAXX\n")
    assert_one_line_error(run("quantize", "--example", "gptj-tiny", "--config", cfg, "-o", tmp_path / "o.mcq"),
                          "act_calib_method", "MINMAX_ASYM")


def test_invalid_preset(tmp_path):
    assert_one_line_error(run("quantize", "--example", "gptj-tiny", "--preset", "W3A3", "-o", tmp_path / "o.mcq"),
                          "W3A3", "W8A8KV8")


def test_missing_model_path(tmp_path):
    assert_one_line_error(run("quantize", tmp_path / "nope", "-o", tmp_path / "o.mcq"), "nope", "does not exist")
    assert not (tmp_path / "o.mcq").exists()


def test_truncated_mcq(quantized, tmp_path):
    _, _, path = quantized("gptj-tiny", "W8A8KV8")
    bad = tmp_path / "cut.mcq"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for cmd in ("generate", "inspect", "validate"):
        extra = ["--prompt", "hi"] if cmd == "generate" else []
        assert_one_line_error(run(cmd, bad, *extra), "cut.mcq")


def test_validate_json_reports_the_error_code(tmp_path):
    bad = tmp_path / "x.mcq"
    bad.write_bytes(b"\x00" * 4)
    r = run("validate", bad, "--json")
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["valid"] is False and out["code"].startswith("E1") and "x.mcq" in out["error"]


def test_non_mcq_file(tmp_path):
    bad = tmp_path / "notes.mcq"
    bad.write_text("this is not a model, just some text that is long enough to have a header")
    assert_one_line_error(run("inspect", bad), "notes.mcq")
    assert_one_line_error(run("generate", bad, "--prompt", "hi"), "notes.mcq")


def test_missing_bundle_file(tmp_path):
    assert_one_line_error(run("generate", tmp_path / "none.mcq", "--prompt", "x"), "none.mcq")


def test_quantize_inspect_validate_roundtrip(tmp_path):
    out = tmp_path / "tiny.mcq"
    r = run("quantize", "--example", "gptj-tiny", "--preset", "W8A8KV8", "--samples", "4", "-o", out)
    assert r.exit_code == 0, r.output
    assert out.is_file()
    r = run("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["quantized_nodes"]["linear:int8"] == 13  # 2 layers x 6 linears + lm_head
    assert report["quantized_nodes"]["kv_cache:int8"] == 4
    assert report["tensor_bytes_by_dtype"]["I8"] > 0
    r = run("validate", out, "--verify")
    assert r.exit_code == 0 and "valid" in r.output
    r = run("validate", out, "--verify", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["valid"] is True and json.loads(r.output)["verified"]
    assert report["qformat"]["lm_head/linear0"]["weight"] == "int8 channel(axis 0) AMAX_SYM"
    r = run("inspect", out)
    assert "transformer.h.0.attn/bmm0" not in r.output and len(r.output.splitlines()) < 25  # a summary
    assert max(map(len, r.output.splitlines()[1:])) < 160 and "smoothquant=True" in r.output, r.output
    r = run("inspect", out, "--nodes")
    assert "transformer.h.0.attn/bmm0" in r.output and "from k_cache" in r.output
    r = run("generate", out, "--ids", "--prompt", "5 6 7", "--max-new-tokens", "4")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("5 6 7 -> ") and len(r.output.split("->")[1].split()) == 4
    r = run("generate", out, "--prompt", "The capital of France is", "--max-new-tokens", "5")
    assert r.exit_code == 0 and r.output.startswith("The capital of France is"), r.output


def test_generate_text_needs_a_tokenizer(quantized):
    _, _, path = quantized("gptj-tiny", "W8A8KV8")  # built by the API without a tokenizer
    assert_one_line_error(run("generate", path, "--prompt", "hello"), "no tokenizer", "--ids")


def test_help_teaches():
    r = run("--help")
    assert r.exit_code == 0 and "mcq quantize --example smollm2" in r.output
    r = run("quantize", "--help")
    assert "--preset" in r.output and "calibration" in r.output.lower()


def test_quantize_a_model_folder(tiny_models, tmp_path):
    model = tiny_models("gpt2-tiny")
    model.save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "g.mcq"
    r = run("quantize", tmp_path / "gpt2", "--preset", "W8A16", "--samples", "2", "-o", out)
    assert r.exit_code == 0, r.output
    r = run("inspect", out, "--json")
    report = json.loads(r.output)
    assert report["family"] == "gpt2" and report["quant"]["act_dtype"] == "float32"
    # 2 x (c_attn, c_proj, c_fc, c_proj) + lm_head; token and position tables
    assert report["quantized_nodes"] == {"linear:int8": 9, "embedding:int8": 2}


def test_export_reference_schema(quantized, tmp_path):
    import numpy as np
    import yaml

    _, _, path = quantized("llama-tiny", "W8A8KV8")
    r = run("export-reference", path, "-o", tmp_path / "ref")
    assert r.exit_code == 0, r.output
    qformat = yaml.safe_load((tmp_path / "ref" / "qformat.yaml").read_text())
    node = qformat["model.layers.0.mlp.down_proj/linear0"]
    assert node["quant_desc_weight"] == {"do_quant": True, "dtype": "int8", "nbits": 8, "axis": 0, "per_ch": True,
                                         "granularity": "channel", "asymmetric": False, "calibrator": "AMAX_SYM",
                                         "rounding": "gptq"}
    assert node["quant_desc_input_x"]["asymmetric"] and not node["quant_desc_input_x"]["per_ch"]
    with np.load(tmp_path / "ref" / "qparams.npz", allow_pickle=False) as z:
        key = "model.layers.0.mlp.down_proj/linear0.input_x"
        scale, lo, hi = z[f"{key}.scale"], z[f"{key}.min"], z[f"{key}.max"]
        assert np.isclose((hi - lo) / 255, scale, rtol=1e-5)
        assert f"{key}.smoothing_scale" in z.files
        assert z["lm_head/linear0.weight.amax"].shape == (512,)


def test_report_names_worst_nodes_and_suggests_overrides(tmp_path):
    r = run("report", "--example", "llama-tiny", "--samples", "4", "--report-samples", "1", "--top", "3",
            "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["nodes"]) == 22  # the token table + 2 x (7 linears + 2 kv + 1 bmm) + lm_head
    first = report["nodes"][0]
    assert first["local_sqnr_db"] == pytest.approx(first["cumulative_sqnr_db"])  # nothing quantized before it
    assert all(0 < n["local_sqnr_db"] < 80 for n in report["nodes"])
    worst = sorted(report["nodes"], key=lambda n: n["local_sqnr_db"])[0]["qkey"]
    assert report["suggested_overrides"][0]["match"] == worst
    assert "suggested overrides:" in r.output and worst in r.output


def test_report_trials_suggest_the_set_that_measured_lowest(tmp_path):
    """Random weights: the trials' perplexities differ; the suggestion follows them (mcq.search.lowest)."""
    from mcq.search import MIN_GAIN

    r = run("report", "--example", "llama-tiny", "--samples", "4", "--report-samples", "1", "--top", "2",
            "--trials", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    trials = report["trials"]
    assert [t["raised"] for t in trials] == [0, 1, 2]
    assert len({t["perplexity"] for t in trials}) == 3  # each trial is a different model
    best = min(trials, key=lambda t: (t["perplexity"], t["raised"]))
    best = best["raised"] if best["perplexity"] <= trials[0]["perplexity"] * (1 - MIN_GAIN) else 0
    worst = [n["qkey"] for n in sorted(report["nodes"], key=lambda n: n["local_sqnr_db"])]
    assert [o["match"] for o in report["suggested_overrides"]] == worst[:best]
    assert f"worst 2 raised: perplexity {trials[2]['perplexity']:.4f}" in r.output


def test_report_on_a_weight_only_bundle_suggests_wider_weights(tmp_path):
    """W4A16: the linears' inputs are float already; the suggestion raises their int4 weights.
    (The report once failed on int4 weights: it dequantized their packed bytes.)"""
    r = run("report", "--example", "llama-tiny", "--preset", "W4A16", "--samples", "4", "--report-samples", "1",
            "--top", "3", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    suggested = report["suggested_overrides"]
    # int4 g128 weights, unpacked and dequantized per group: the local error of a 4-bit weight
    linears = [n["local_sqnr_db"] for n in report["nodes"] if n["kind"] == "linear" and "lm_head" not in n["qkey"]]
    assert linears and all(10 < db < 30 for db in linears), linears
    assert len(suggested) == 3
    assert all(o["weight_dtype"] == "int8" and "act_dtype" not in o for o in suggested if o["kind"] == "linear")
    assert any(o["kind"] == "linear" for o in suggested)


def test_report_trials_need_the_float_model(tmp_path, quantized):
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    r = run("report", str(path), "--trials")
    assert r.exit_code == 2 and "--trials quantizes the float model again" in r.output


def test_report_local_sqnr_of_a_table_tied_to_a_rotated_lm_head(tmp_path):
    """GPT-2 ties its token table to lm_head, whose input the W8A8KV8 preset rotates: the stored
    rows are rotated and the graph turns them back after the lookup. The local measure must do the
    same (it once compared rotated rows with float ones: -15 dB on SmolLM2, the report's "worst")."""
    r = run("report", "--example", "gpt2-tiny", "--samples", "4", "--report-samples", "1", "--top", "3",
            "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    nodes = json.loads((tmp_path / "r.json").read_text())["nodes"]
    table = next(n for n in nodes if n["kind"] == "embedding")
    assert table["local_sqnr_db"] > 30
    assert table["local_sqnr_db"] == pytest.approx(table["cumulative_sqnr_db"])  # nothing quantized before it


def test_usage_errors_keep_clicks_exit_code():
    r = run("quantize", "-o", "x.mcq")  # neither MODEL_DIR nor --example
    assert r.exit_code == 2 and "give either MODEL_DIR or --example" in r.output


def test_imported_qparams_replace_the_calibrated_ones(tmp_path, quantized):
    """Export a bundle's parameters, scale one activation range, import: the new bundle carries it."""
    import numpy as np
    import torch

    import mcq
    from mcq.interop import QParamsImportError, export_reference

    model, q, path = quantized("llama-tiny", "W8A8KV8")
    _, npz = export_reference(path, tmp_path / "ref")
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = "model.layers.1.mlp.down_proj/linear0"
    arrays[f"{key}.input_x.scale"] = arrays[f"{key}.input_x.scale"] * 2
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    again = mcq.quantize(model, mcq.preset("W8A8KV8"), progress=False, qparams=edited)
    for name, t in q.tensors.items():
        if name == f"{key}/x.scale":
            assert torch.equal(again.tensors[name], t * 2)
        else:
            assert torch.equal(again.tensors[name], t), name
    arrays["not.a.node.input_x.scale"] = np.float32(1.0)
    np.savez(edited, **arrays)
    with pytest.raises(QParamsImportError, match="1 keys match no quant point.*not.a.node"):
        mcq.quantize(model, mcq.preset("W8A8KV8"), progress=False, qparams=edited)


@pytest.fixture(scope="module")
def report_bundles(tmp_path_factory):
    """A tiny Llama W8A8KV8 bundle with its tokenizer, and a copy whose layer-1 down_proj input
    scale is 8x coarser (imported qparams): the reports must see that node get worse."""
    import numpy as np

    import mcq
    from mcq.examples import load_example
    from mcq.interop import export_reference

    folder = tmp_path_factory.mktemp("report")
    model, tok = load_example("llama-tiny")
    captured = mcq.capture_model(model)
    q = mcq.quantize(captured, mcq.preset("W8A8KV8"), tokenizer=tok, max_samples=4, seq_len=32, progress=False)
    q.save(folder / "base.mcq")
    _, npz = export_reference(folder / "base.mcq", folder / "ref")
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"{COARSE}.input_x.scale"] = arrays[f"{COARSE}.input_x.scale"] * 8
    np.savez(folder / "coarse.npz", **arrays)
    mcq.quantize(captured, mcq.preset("W8A8KV8"), tokenizer=tok, max_samples=4, seq_len=32, progress=False,
                 qparams=folder / "coarse.npz").save(folder / "coarse.mcq")
    return folder / "base.mcq", folder / "coarse.mcq"


COARSE = "model.layers.1.mlp.down_proj/linear0"


def _input_report(path, out):
    r = run("report", path, "--report-samples", "2", "--seq-len", "32", "--top", "3", "--json", out)
    assert r.exit_code == 0, r.output
    return r, json.loads(out.read_text())


def test_report_from_a_bundle_alone_measures_every_quantized_input(report_bundles, tmp_path):
    base, coarse = report_bundles
    r, rep = _input_report(base, tmp_path / "base.json")
    assert rep["measure"] == "input"
    # 2 layers x (7 linear inputs + k, v cache + Q.K^T's query) + lm_head's input
    assert len(rep["nodes"]) == 2 * (7 + 2 + 1) + 1
    assert all(8 < n["input_sqnr_db"] < 60 for n in rep["nodes"])
    worst = min(rep["nodes"], key=lambda n: n["input_sqnr_db"])["qkey"]
    assert rep["suggested_overrides"][0]["match"] == worst and worst in r.output
    # 8x coarser steps: about 18 dB less signal-to-noise at that input (20 log10 8), others unchanged
    _, worse = _input_report(coarse, tmp_path / "coarse.json")
    by_key = lambda rep: {n["qkey"]: n["input_sqnr_db"] for n in rep["nodes"]}  # noqa: E731
    b, c = by_key(rep), by_key(worse)
    assert 12 < b[COARSE] - c[COARSE] < 24
    assert all(abs(b[k] - c[k]) < 0.5 for k in b if k.startswith("model.layers.0."))  # layer 0 comes before


def test_report_with_a_model_and_bundle_uses_the_files_own_parameters(report_bundles, tmp_path):
    base, coarse = report_bundles
    local = {}
    for path in (base, coarse):
        out = tmp_path / f"{path.stem}.json"
        r = run("report", "--example", "llama-tiny", "--bundle", path, "--report-samples", "1", "--json", out)
        assert r.exit_code == 0, r.output
        local[path.stem] = {n["qkey"]: n["local_sqnr_db"] for n in json.loads(out.read_text())["nodes"]}
    # the output error adds the weight's (this node: 24 dB local) to the coarser input's: 3 dB worse
    assert local["base"][COARSE] - local["coarse"][COARSE] > 2
    assert local["base"]["model.layers.0.mlp.down_proj/linear0"] == \
        pytest.approx(local["coarse"]["model.layers.0.mlp.down_proj/linear0"])


def test_report_on_a_weight_only_bundle_alone_says_what_it_needs(tmp_path):
    import mcq
    from mcq.examples import load_example

    model, tok = load_example("gpt2-tiny")
    mcq.quantize(model, mcq.preset("W8A16"), tokenizer=tok, max_samples=2, seq_len=16,
                 progress=False).save(tmp_path / "w8a16.mcq")
    assert_one_line_error(run("report", tmp_path / "w8a16.mcq"), "weight-only bundle", "--bundle")


def test_generate_on_the_native_engine_equals_the_reference_and_refuses_what_it_cannot_run():
    from runtime import native

    if not native.available():
        pytest.skip(f"native core not built: {native.load_error()}")
    from pathlib import Path

    vectors = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0" / "valid"
    args = ["generate", vectors / "llama-tiny-w8a8kv8.mcq", "--ids", "--prompt", "3 17 5", "--max-new-tokens", 6]
    native_run, reference_run = run(*args, "--engine", "native"), run(*args)
    assert native_run.exit_code == 0 and native_run.output == reference_run.output
    assert len(native_run.output.split("->")[1].split()) == 6
    # qlevel 3 of a weight-only bundle is the exact float32 product: the reference's, not the engine's
    refused = run("generate", vectors / "gpt2-tiny-w8a16.mcq", "--ids", "--prompt", "3", "--qlevel", "3",
                  "--engine", "native")
    assert refused.exit_code != 0 and "weight-only" in refused.output


def test_inspect_engine_says_where_each_entry_point_runs_and_no_nodes_hides_the_table():
    from pathlib import Path

    from runtime import native

    vectors = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0" / "valid"
    plain = run("inspect", vectors / "llama-tiny-w8a8kv8.mcq", "--no-nodes")
    assert plain.exit_code == 0 and "qkey" not in plain.output and "native engine" not in plain.output
    assert "qkey" not in run("inspect", vectors / "llama-tiny-w8a8kv8.mcq").output  # the summary by default
    assert "qkey" in run("inspect", vectors / "llama-tiny-w8a8kv8.mcq", "--nodes").output
    if not native.available():
        pytest.skip(f"native core not built: {native.load_error()}")
    r = run("inspect", vectors / "llama-tiny-w8a8kv8.mcq", "--engine", "--json")
    assert r.exit_code == 0, r.output
    placement = json.loads(r.output)["engine"]
    assert set(placement) == {"prefill", "decode"}
    for where in placement.values():
        assert where["runs_on"] == "native" and where["engine_ops"]["mcq.attention"] == 2  # one per layer
        assert where["op_calls"] >= sum(where["engine_ops"].values())
    text = run("inspect", vectors / "llama-tiny-w8a8kv8.mcq", "--engine", "--no-nodes").output
    assert "native engine, decode:" in text and "mcq.attention x2" in text


CONFORMANCE = __import__("pathlib").Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0"


@pytest.mark.parametrize("args", [
    ("--max-new-tokens", 0), ("--max-new-tokens", -1), ("--top-p", 2), ("--top-p", 0), ("--top-k", -5),
    ("--temperature", 0), ("--temperature", -1), ("--qlevel", 1), ("--qlevel", 5), ("--qlevel", "four")])
def test_generate_refuses_bad_values_before_loading(args):
    result = run("generate", CONFORMANCE / "valid" / "llama-tiny-w8a8kv8.mcq", "--prompt", "hi", "--sample", *args)
    assert result.exit_code == 2 and "Invalid value" in result.output and args[0] in result.output, result.output


@pytest.mark.parametrize("args", [("--samples", 0), ("--seq-len", 0), ("--batch-size", 0)])
def test_quantize_refuses_bad_values_before_loading(args, tmp_path):
    result = run("quantize", "--example", "gptj-tiny", *args, "-o", tmp_path / "o.mcq")
    assert result.exit_code == 2 and args[0] in result.output, result.output
    assert not (tmp_path / "o.mcq").exists()


@pytest.mark.parametrize("option", ["--data", "--qparams", "--config"])
def test_quantize_refuses_a_missing_or_folder_input_file_before_loading(option, tmp_path):
    for path, says in ((tmp_path / "missing.txt", "does not exist"), (tmp_path, "is a directory")):
        result = run("quantize", "--example", "gptj-tiny", option, path, "-o", tmp_path / "o.mcq")
        assert result.exit_code == 2 and option in result.output and says in result.output, result.output


def test_quantize_into_a_missing_folder_fails_before_any_work(tmp_path):
    import time

    t = time.time()
    assert_one_line_error(run("quantize", "--example", "gptj-tiny", "-o", tmp_path / "no" / "o.mcq"),
                          "does not exist", str(tmp_path / "no"))
    assert time.time() - t < 5  # nothing was loaded or captured
    assert_one_line_error(run("quantize", "--example", "gptj-tiny", "-o", tmp_path), "is a directory")


def test_a_folder_given_as_a_bundle_says_so(tmp_path):
    for cmd in ("validate", "inspect"):
        assert_one_line_error(run(cmd, tmp_path), "is a directory")


def test_a_text_file_given_as_a_bundle_says_it_is_not_an_mcq_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("These are notes, not a model.\n" * 10)
    assert_one_line_error(run("inspect", text), "E102_HEADER_TOO_LARGE", "not a .mcq file")


def test_validate_refuses_each_quantization_error_vector_with_its_code():
    manifest = json.loads((CONFORMANCE / "manifest.json").read_text())
    semantic = [e for e in manifest["invalid"] if e["expected_code"].startswith("E4")]
    assert len(semantic) >= 20
    for entry in semantic:
        result = run("validate", "--json", CONFORMANCE / entry["file"])
        assert result.exit_code == 1 and json.loads(result.output)["code"] == entry["expected_code"], entry


def test_validate_and_inspect_import_neither_torch_nor_the_toolkit():
    import subprocess
    import sys

    bundle = CONFORMANCE / "valid" / "llama-tiny-w8a8kv8.mcq"
    for cmd in ("validate", "inspect"):
        code = ("import sys\nfrom mcq.cli import main\nsys.argv = ['mcq', %r, %r]\ntry:\n    main()\n"
                "except SystemExit as e:\n    assert not e.code, e.code\n"
                "heavy = sorted(m for m in ('torch', 'transformers', 'runtime', 'mcq.calibrate') if m in sys.modules)\n"
                "print('HEAVY', heavy)\n") % (cmd, str(bundle))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in out.stdout, (cmd, out.stdout[-500:], out.stderr[-2000:])


def test_inspect_into_a_closed_pipe_stops_quietly():
    import subprocess
    import sys

    bundle = CONFORMANCE / "valid" / "llama-tiny-w8a8kv8.mcq"
    proc = subprocess.Popen([sys.executable, "-m", "mcq.cli", "inspect", str(bundle)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Broken pipe" not in err and "error" not in err, err


def test_the_api_and_the_cli_default_to_the_same_recipe(tmp_path):
    import mcq
    from mcq.config import DEFAULT_PRESET
    from mcq.examples import load_example

    cli_path, api_path = tmp_path / "cli.mcq", tmp_path / "api.mcq"
    result = run("quantize", "--example", "gptj-tiny", "--samples", 2, "--seq-len", 32, "-o", cli_path)
    assert result.exit_code == 0, result.output
    model, tok = load_example("gptj-tiny")
    q = mcq.quantize(model, tokenizer=tok, max_samples=2, seq_len=32, progress=False)
    assert q.config == mcq.preset(DEFAULT_PRESET) == mcq.preset("W8A8KV8")
    q.save(api_path)
    assert api_path.read_bytes() == cli_path.read_bytes()
