"""mcq_format: read, write and validate ``.mcq`` files.

A ``.mcq`` file is a valid safetensors file whose ``__metadata__`` carries the
format version and section hashes, and whose ``__mcq__/<name>`` U8 tensors
hold msgpack-encoded sections (manifest, graphs, qformat, tokenizer).  See
``spec/mcq-format.md``.

Verbs: :func:`write`, :func:`read`, :func:`validate`; :class:`StreamWriter` writes a
bundle tensor by tensor.
"""

from __future__ import annotations

from .bundle import Bundle, StreamWriter, TensorSpec, ValidationReport, read, validate, write
from .constants import FORMAT_NAME, FORMAT_VERSION, OPSET_VERSION
from .container import RawTensor
from .errors import *  # noqa: F403  (every error class, re-exported)
from .errors import __all__ as _error_names
from .opset import OPSET_V1, is_allowed
from .sections import decode_section, encode_section

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "OPSET_VERSION",
    "OPSET_V1",
    "Bundle",
    "RawTensor",
    "StreamWriter",
    "TensorSpec",
    "ValidationReport",
    "decode_section",
    "encode_section",
    "is_allowed",
    "read",
    "validate",
    "write",
    *_error_names,
]
