"""Small modules that lowering inserts at quant points; each wraps one function of numerics."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from runtime import numerics, prepared as prepared_forms, weight_only
from runtime.numerics import QuantParams


class TensorQuantOp(nn.Module):
    """One per-tensor numerics function (quantize, dequantize or fake_quantize) with its params."""

    FUNCTIONS = {
        "quantize": numerics.quantize,
        "dequantize": numerics.dequantize,
        "fake_quantize": numerics.fake_quantize,
    }

    def __init__(self, function: str, qp: QuantParams) -> None:
        super().__init__()
        self.function, self.qp = function, qp
        # the same values with parameters made once (runtime.prepared), where it covers the spec
        prepared = prepared_forms.Quantizer(qp) if function != "fake_quantize" and prepared_forms.supported(qp) \
            else None
        self._run: Callable[[torch.Tensor], torch.Tensor] = getattr(prepared, function) if prepared is not None \
            else functools.partial(self.FUNCTIONS[function], qp=qp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


def Quantize(qp: QuantParams) -> TensorQuantOp:  # noqa: N802 - reads like the module it builds
    return TensorQuantOp("quantize", qp)


def Dequantize(qp: QuantParams) -> TensorQuantOp:  # noqa: N802
    return TensorQuantOp("dequantize", qp)


def FakeQuantize(qp: QuantParams) -> TensorQuantOp:  # noqa: N802
    return TensorQuantOp("fake_quantize", qp)


class QLinear(nn.Module):
    """Integer linear: int32 kernels (qlevel 4) or exact float64 emulation (qlevel 3)."""

    def __init__(self, weight_q: torch.Tensor, weight_qp: QuantParams, input_qp: QuantParams,
                 outlier_weight: torch.Tensor | None = None, emulate: bool = False) -> None:
        super().__init__()
        self.weight_q, self.weight_qp, self.input_qp = weight_q, weight_qp, input_qp
        self.outlier_weight, self.emulate = outlier_weight, emulate
        self.prepared = numerics.prepare_qlinear(weight_q, weight_qp, input_qp)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                xq: torch.Tensor | None = None) -> torch.Tensor:
        return numerics.qlinear(x, self.weight_q, self.weight_qp, bias, self.input_qp, self.outlier_weight,
                                self.emulate, self.prepared, xq)


class QuantizeInput(nn.Module):
    """One quantization of an input read by several linears through equal quantizers (q/k/v,
    gate/up): they take its integers (`QLinear(..., xq=)`) instead of quantizing it each."""

    def __init__(self, prepared: numerics.PreparedLinear) -> None:
        super().__init__()
        self.prepared = prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return numerics.quantize_input(x, self.prepared)


class WeightOnlyLinear(nn.Module):
    """Weight-only linear on aten's packed bf16 kernels (qlevel 4, spec Q.4a)."""

    def __init__(self, kernel: weight_only.WeightOnlyKernel) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return weight_only.weight_only_linear(x, self.kernel, bias)


class LastPosition(nn.Module):
    """x[..., -1:, :]: the last sequence position of [batch, seq, features] (generation's logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., -1:, :]


class QEmbedding(nn.Module):
    """Embedding lookup in a stored int8 table: gathers rows, then dequantizes only those."""

    def __init__(self, table_q: torch.Tensor, qp: QuantParams, smooth: torch.Tensor | None) -> None:
        super().__init__()
        self.table_q, self.qp, self.smooth = table_q, qp, smooth

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return numerics.embedding_rows(self.table_q, self.qp, ids, self.smooth)


class OutlierProduct(nn.Module):
    """Float side product of a linear's outlier input channels (qlevels 2 and 3)."""

    def __init__(self, input_qp: QuantParams, outlier_weight: torch.Tensor) -> None:
        super().__init__()
        self.input_qp, self.outlier_weight = input_qp, outlier_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return numerics.outlier_product(x, self.input_qp, self.outlier_weight).to(x.dtype)


class QBmm(nn.Module):
    """Integer batched matmul: int32 (qlevel 4) or exact float64 emulation (qlevel 3)."""

    def __init__(self, a_qp: QuantParams, b_qp: QuantParams, emulate: bool = False) -> None:
        super().__init__()
        self.a_qp, self.b_qp, self.emulate = a_qp, b_qp, emulate
        # the operands' integer span, fixed by the specs: computed once, not per call
        self.span = numerics.centered_span(a_qp, b_qp) if a_qp.kind == numerics.INT else None
        self._prepared = prepared_forms.IntBmm(a_qp, b_qp, self.span) if self.span is not None and not emulate \
            and prepared_forms.supported(a_qp) and prepared_forms.supported(b_qp) else None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._prepared is not None:
            return self._prepared(a, b)
        return numerics.qbmm(a, self.a_qp, b, self.b_qp, self.emulate, self.span)


Observer = Callable[[str, str, torch.Tensor], None]


class Observe(nn.Module):
    """Calibration hook: reports the tensor to the toolkit's observer, returns it unchanged. A
    float64 tensor (calibration computes in float64, `lower.widen`) is reported rounded to
    float32: the values the float32 model has, correctly rounded whatever the CPU."""

    def __init__(self, qkey: str, role: str, observer: Observer) -> None:
        super().__init__()
        self.qkey, self.role, self.observer = qkey, role, observer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach()
        self.observer(self.qkey, self.role, seen.to(torch.float32) if seen.dtype == torch.float64 else seen)
        return x
