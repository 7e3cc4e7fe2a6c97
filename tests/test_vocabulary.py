"""The format's vocabularies and the runtime's tables are one: every op, graph dtype, layout,
memory format and quant format id a valid file may name is one the runtime executes (a file
that validates is a file that runs), and the runtime knows nothing the format would refuse."""
from __future__ import annotations

import mcq_format
from mcq_format import constants as C
from mcq_format import quant
from runtime import lower, ops


def test_the_runtime_implements_every_op_of_the_opset():
    assert set(mcq_format.OPSET_V1) == set(ops.OPS)


def test_the_runtime_maps_every_graph_dtype_layout_and_memory_format():
    assert set(C.GRAPH_DTYPES) == set(ops.DTYPES)
    assert set(C.GRAPH_LAYOUTS) == set(ops.LAYOUTS)
    assert set(C.GRAPH_MEMORY_FORMATS) == set(ops.MEMORY_FORMATS)


def test_the_runtime_implements_every_quant_format_and_granularity():
    assert set(quant.FORMATS) == set(lower.FORMATS)
    for fid, fmt in quant.FORMATS.items():
        assert lower.FORMATS[fid][1] == fmt.bits
    assert set(quant.GRANULARITIES) == set(lower.SUPPORTED_GRANULARITIES)
