"""Where the native core was not built (no C++ compiler at install) or does not load, the runtime
keeps to the reference path: engine="auto" says why once, engine="native" refuses with the
reason, and the default never needs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "spec" / "conformance" / "v1.0" / "valid" / "llama-tiny-w8a8kv8.mcq"

# an import hook that hides the extension, as on a machine where it was never built
WITHOUT_CORE = """
import sys, warnings
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "runtime._native":
            raise ImportError("No module named 'runtime._native'")
sys.meta_path.insert(0, Hide())
import runtime
from runtime import native
print(native.available(), native.load_error())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = runtime.load(sys.argv[1], engine="auto")
    print(type(model).__name__, [str(w.message) for w in caught if "reference path" in str(w.message)])
try:
    runtime.load(sys.argv[1], engine="native")
except ValueError as e:
    print("refused:", e)
print(runtime.load(sys.argv[1]).generate([3, 17, 5], max_new_tokens=3))
"""


def test_without_the_native_core_the_reference_path_runs_and_says_why():
    out = subprocess.run([sys.executable, "-c", WITHOUT_CORE, str(BUNDLE)], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.splitlines()
    assert out[0].startswith("False ImportError")
    assert out[1].startswith("Model [") and "native core is not built" in out[1]
    assert out[2].startswith("refused:") and "native core is not built" in out[2]
    assert len(eval(out[3])) == 3  # noqa: S307 - our own printed list
