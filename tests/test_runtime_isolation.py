"""The runtime loads and generates from a bundle where `transformers` and `mcq` cannot be imported."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('transformers', 'mcq'):
                raise ImportError('blocked by test: ' + name)
            return None
    sys.meta_path.insert(0, Block())
    """
)


def test_runtime_generates_without_transformers_or_mcq(tiny_models, tmp_path):
    import mcq
    from mcq.examples import tiny_tokenizer

    q = mcq.quantize(tiny_models("llama-tiny"), mcq.preset("W8A8KV8"), tokenizer=tiny_tokenizer(), progress=False)
    path = tmp_path / "tiny-text.mcq"
    q.save(path)
    expected = (q.model(4).generate([5, 6, 7, 8], max_new_tokens=8, stop_at_eos=False),
                q.model(4).generate("The capital of France is", max_new_tokens=8, stop_at_eos=False))
    script = BLOCKER + textwrap.dedent(
        f"""
        try:
            import transformers
        except ImportError:
            pass
        else:
            raise SystemExit('transformers imported')
        try:
            import mcq
        except ImportError:
            pass
        else:
            raise SystemExit('mcq imported')
        import runtime
        m = runtime.load({str(path)!r}, qlevel=4)
        print((m.generate([5, 6, 7, 8], max_new_tokens=8, stop_at_eos=False),
               m.generate("The capital of France is", max_new_tokens=8, stop_at_eos=False)))
        assert not any(k.split('.')[0] in ('transformers', 'mcq') for k in sys.modules)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env=_child_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(expected)


def _child_env() -> dict[str, str]:
    """A bare environment, except the variables that pick torch's kernels: the child must run the
    float glue the parent's expected values came from (tests/test_kernel_paths.py lowers them)."""
    kernels = {k: v for k, v in os.environ.items()
               if k.startswith(("ATEN_CPU_CAPABILITY", "MKL_", "ONEDNN_", "OMP_"))}
    return {**kernels, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def test_runtime_embeds_without_transformers_or_mcq(tmp_path):
    import mcq
    from mcq.examples import load_example

    model, tok = load_example("bert-tiny")
    q = mcq.quantize(model, mcq.preset("W8A8"), tokenizer=tok, progress=False)
    path = tmp_path / "bert-tiny.mcq"
    q.save(path)
    texts = ["The river delta is productive.", "Mountains shape the weather."]
    expected = q.model(4).embed(texts)
    script = BLOCKER + textwrap.dedent(
        f"""
        import runtime
        print(runtime.load({str(path)!r}, qlevel=4, engine="reference").embed({texts!r}).tolist())
        assert not any(k.split('.')[0] in ('transformers', 'mcq') for k in sys.modules)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env=_child_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(expected.tolist())  # float32 values print exactly
