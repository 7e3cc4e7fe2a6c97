"""Constants of the ``.mcq`` container format (see ``spec/mcq-format.md``).

Everything a reader or writer needs to agree on lives here: names, versions,
the dtype table, limits and alignment.  Other modules import from this one and
never repeat these values.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import numpy as np

# --------------------------------------------------------------------- identity
FORMAT_NAME: Final = "mcq"
FORMAT_VERSION: Final = (1, 0)  # (major, minor) written by this library
OPSET_VERSION: Final = 1

# ----------------------------------------------------------------- metadata keys
META_FORMAT: Final = "format"
META_FORMAT_VERSION: Final = "mcq.format_version"
META_OPSET_VERSION: Final = "mcq.opset_version"
META_SHA256_PREFIX: Final = "mcq.sha256."
RESERVED_META_PREFIX: Final = "mcq."
METADATA_KEY: Final = "__metadata__"  # the safetensors header key

# ---------------------------------------------------------------------- sections
SECTION_PREFIX: Final = "__mcq__/"
SECTION_MANIFEST: Final = "manifest"
SECTION_GRAPH_PREFIX: Final = "graph/"
SECTION_GRAPH_PREFILL: Final = "graph/prefill"
SECTION_GRAPH_DECODE: Final = "graph/decode"
SECTION_QFORMAT: Final = "qformat"
SECTION_TOKENIZER: Final = "tokenizer"
SECTION_TENSOR_SHA256: Final = "tensor_sha256"
REQUIRED_SECTIONS: Final = (SECTION_MANIFEST,)
# A section name: a lowercase word, optionally "/" and an entry name.
SECTION_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*(?:/[A-Za-z0-9_.\-]+)?")

# Versions of the section objects themselves.
GRAPH_SCHEMA_VERSION: Final = 1
QFORMAT_SCHEMA_VERSION: Final = 1
TOKENIZER_KIND_HF: Final = "hf-tokenizers-json"
# the same document zlib-compressed (a tokenizer.json is mostly repetitive text: ~4x smaller)
TOKENIZER_KIND_HF_ZLIB: Final = "hf-tokenizers-json-zlib"
TOKENIZER_MAX_JSON_BYTES: Final = 64 * 1024 * 1024  # decompression limit (no zlib bombs)
# the tokenizer section's optional chat template (spec 5.6.1): the one rendering contract of
# format 1.x, and size limits generous for real templates (a few KiB) and bounded for hostile ones
CHAT_TEMPLATE_SYNTAX: Final = "hf-jinja2/1"
CHAT_TEMPLATE_MAX_BYTES: Final = 256 * 1024
CHAT_SPECIAL_TOKENS_MAX: Final = 64  # entries of chat_template.special_tokens
CHAT_SPECIAL_TOKEN_MAX_BYTES: Final = 1024  # one special token's text
CHAT_SPECIAL_TOKEN_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*")
# variables a renderer passes itself: a special token may not take their names
CHAT_RENDER_VARIABLES: Final = frozenset({"messages", "tools", "documents", "add_generation_prompt"})

# ------------------------------------------------------------------------ dtypes


class DtypeInfo(NamedTuple):
    """One row of the dtype table.

    ``numpy`` is the little-endian numpy dtype a tensor is viewed as.  For
    dtypes numpy lacks (BF16, F8_E4M3) it is the same-size unsigned integer
    and ``exact`` is False: the bits are exposed, the true dtype is the name.
    """

    name: str
    itemsize: int
    numpy: np.dtype
    exact: bool


def _row(name: str, itemsize: int, np_dtype: str, exact: bool = True) -> tuple[str, DtypeInfo]:
    return name, DtypeInfo(name, itemsize, np.dtype(np_dtype), exact)


DTYPES: Final[dict[str, DtypeInfo]] = dict(
    [
        _row("F32", 4, "<f4"),
        _row("F16", 2, "<f2"),
        _row("BF16", 2, "<u2", exact=False),
        _row("I8", 1, "i1"),
        _row("U8", 1, "u1"),
        _row("I16", 2, "<i2"),
        _row("I32", 4, "<i4"),
        _row("I64", 8, "<i8"),
        _row("BOOL", 1, "?"),
        _row("F8_E4M3", 1, "u1", exact=False),
    ]
)
# numpy dtype (native or either byte order) -> safetensors dtype string, for
# the dtypes numpy represents exactly.
NUMPY_TO_DTYPE: Final[dict[tuple[str, int], str]] = {
    (info.numpy.kind, info.itemsize): info.name for info in DTYPES.values() if info.exact
}

# Graph-level (torch style) dtype names allowed in graph sections.
GRAPH_DTYPES: Final = frozenset(
    {
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "float8_e4m3fn",
    }
)
GRAPH_LAYOUTS: Final = frozenset({"strided"})
GRAPH_MEMORY_FORMATS: Final = frozenset({"contiguous_format", "preserve_format", "channels_last"})

# qlevels a bundle may name as its default (manifest.quant.qlevel; spec Q.1): 0 float only
QLEVELS: Final = (0, 2, 3, 4)

# ------------------------------------------------------------------------ limits
MIB: Final = 1 << 20
MIN_HEADER_BYTES: Final = 2  # "{}"
MAX_HEADER_BYTES: Final = 100 * MIB
MAX_SECTION_BYTES: Final = 256 * MIB
MAX_TENSOR_RANK: Final = 32
MSGPACK_MAX_DEPTH: Final = 64
MSGPACK_MAX_STR_LEN: Final = 64 * MIB
MSGPACK_MAX_BIN_LEN: Final = 64 * MIB
MSGPACK_MAX_ARRAY_LEN: Final = 4 * MIB
MSGPACK_MAX_MAP_LEN: Final = 4 * MIB
# maps and arrays in all sections of one file together: bounds the work and memory of decoding
# a file (a 70B-parameter LLM's graphs hold ~300k)
MAX_FILE_CONTAINERS: Final = 2 * MIB
MAX_TOKEN_ID: Final = 2**31 - 1  # token ids (manifest.tokenizer) fit an int32

# ----------------------------------------------------------------------- layout
HEADER_LENGTH_BYTES: Final = 8  # little-endian u64
# The header is padded with spaces so that the data buffer starts at a
# multiple of DATA_ALIGNMENT.  Inside the buffer tensors are contiguous (the
# safetensors rule), ordered by decreasing item size then name, so that every
# tensor starts at a multiple of its item size.
DATA_ALIGNMENT: Final = 64
SHA256_BYTES: Final = 32
