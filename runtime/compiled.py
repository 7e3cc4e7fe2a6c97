"""The compiled execution path: an entry point's GraphModule under `torch.compile` (Inductor),
with the interpreted GraphModule as the fallback.

Why: a decode step interpreted op by op is a few thousand small ATen calls whose dispatch costs
more than the int8 matmuls themselves; Inductor fuses the float glue (norms, rotary, softmax,
quantize) into a few kernels. The integer matmuls stay opaque custom ops (`mcq::int8_mm`), so the
integer arithmetic is the reference's; fused float glue may differ from the interpreter in the
last float bits (spec Q.4 tolerance), never in the formats.

Compiling happens at the first call of each entry point (so `runtime.load` stays as fast as the
interpreted path). Inductor caches its compiled kernels on disk (`TORCHINDUCTOR_CACHE_DIR`, by
default under the system temp dir): a later process re-traces the graph but does not recompile
the C++. If compiling fails (no C++ compiler, an unsupported op), the entry point warns once and
runs interpreted from then on.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import fx


def _guard_options() -> dict[str, Any]:
    """Skip dynamo's guards on module attributes: a rebuilt graph's modules and weights never
    change after load, and checking a few hundred of them cost ~4 ms per decode step."""
    skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)  # torch >= 2.8
    return {"options": {"guard_filter_fn": skip}} if skip is not None else {}


class CompiledEntryPoint:
    """Calls the compiled module; on a compile error falls back to the interpreted one for good."""

    def __init__(self, name: str, module: fx.GraphModule) -> None:
        self.name, self.interpreted = name, module
        self._compiled: Callable[..., Any] | None = torch.compile(module, dynamic=True, **_guard_options())
        self.error: str | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure leaves the interpreter
                self._compiled, self.error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(f"entry point {self.name!r}: torch.compile failed ({self.error}); running the "
                              "interpreted graph", RuntimeWarning, stacklevel=2)
        return self.interpreted(*args)
