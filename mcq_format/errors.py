"""Errors of the ``.mcq`` format: one class per failure, each with a stable code.

Every error raised by :mod:`mcq_format` for bad input (a bad file, a bad
section, bad arguments to a writer) is a subclass of :class:`McqFormatError`.
The ``code`` class attribute is stable across releases; the message names the
offending tensor, section and field path.  :data:`ERROR_CODES` maps each code
to its class and is mirrored by the table in ``spec/mcq-format.md``.
"""

from __future__ import annotations

from typing import ClassVar


class McqFormatError(Exception):
    """Base class of every format error."""

    code: ClassVar[str] = "E000_FORMAT"
    summary: ClassVar[str] = "format error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


# ------------------------------------------------------------ E1xx: container
class FileUnreadableError(McqFormatError):
    code = "E100_FILE_UNREADABLE"
    summary = "path does not exist, is not a regular file, or cannot be read"


class FileTooShortError(McqFormatError):
    code = "E101_FILE_TOO_SHORT"
    summary = "file is shorter than the 8-byte header length"


class HeaderTooLargeError(McqFormatError):
    code = "E102_HEADER_TOO_LARGE"
    summary = "header length exceeds `MAX_HEADER_BYTES`"


class HeaderLengthError(McqFormatError):
    code = "E103_HEADER_LENGTH"
    summary = "header length is below the minimum"


class TruncatedFileError(McqFormatError):
    code = "E104_TRUNCATED"
    summary = "file is shorter than its header says"


class HeaderEncodingError(McqFormatError):
    code = "E110_HEADER_ENCODING"
    summary = "header is not valid UTF-8"


class HeaderJSONError(McqFormatError):
    code = "E111_HEADER_JSON"
    summary = "header is not valid JSON"


class DuplicateKeyError(McqFormatError):
    code = "E112_DUPLICATE_KEY"
    summary = "a JSON object in the header has a duplicate key"


class HeaderNotObjectError(McqFormatError):
    code = "E113_HEADER_NOT_OBJECT"
    summary = "header is not a JSON object"


class TensorEntryError(McqFormatError):
    code = "E114_TENSOR_ENTRY"
    summary = "a tensor entry is not an object with exactly `dtype`, `shape`, `data_offsets`"


class TensorNameError(McqFormatError):
    code = "E115_TENSOR_NAME"
    summary = "a tensor name is empty, not encodable, or reserved"


class MetadataError(McqFormatError):
    code = "E120_METADATA"
    summary = "`__metadata__` missing or not str to str, or a required key missing / reserved key set"


class NotMcqError(McqFormatError):
    code = "E121_NOT_MCQ"
    summary = "metadata 'format' is not 'mcq': not an mcq file"


class VersionStringError(McqFormatError):
    code = "E122_VERSION_STRING"
    summary = "a version string in the metadata is malformed"


class UnsupportedVersionError(McqFormatError):
    code = "E123_UNSUPPORTED_VERSION"
    summary = "format major version or opset version not supported by this reader"


class UnknownDtypeError(McqFormatError):
    code = "E130_UNKNOWN_DTYPE"
    summary = "tensor dtype is not in the dtype table"


class ShapeError(McqFormatError):
    code = "E131_BAD_SHAPE"
    summary = "shape is not a list of non-negative ints, or its size overflows"


class OffsetsError(McqFormatError):
    code = "E132_BAD_OFFSETS"
    summary = "`data_offsets` malformed, overlapping, leaving holes or trailing bytes, or size mismatch"


class TensorNotFoundError(McqFormatError, KeyError):
    code = "E133_TENSOR_NOT_FOUND"
    summary = "no tensor of that name in the file"

    def __str__(self) -> str:  # KeyError would repr() the message
        return McqFormatError.__str__(self)


class TensorDataError(McqFormatError):
    code = "E134_TENSOR_DATA"
    summary = "tensor data given to a writer is not an array or a valid raw tensor"


# ------------------------------------------------------------- E2xx: sections
class MissingSectionError(McqFormatError):
    code = "E200_SECTION_MISSING"
    summary = "a required or referenced section is absent"


class SectionLayoutError(McqFormatError):
    code = "E201_SECTION_LAYOUT"
    summary = "a section tensor is not 1-D U8, too large, or badly named"


class SectionHashError(McqFormatError):
    code = "E202_SECTION_HASH"
    summary = "a section's SHA-256 is missing, malformed, or does not match"


class SectionDecodeError(McqFormatError):
    code = "E203_SECTION_MSGPACK"
    summary = "a section is not valid msgpack of the allowed types"


class MsgpackLimitError(McqFormatError):
    code = "E204_MSGPACK_LIMIT"
    summary = "a section exceeds the msgpack depth or length limits"


class SectionSchemaError(McqFormatError):
    code = "E205_SECTION_SCHEMA"
    summary = "a section object does not follow its schema (message names the field path)"


class SectionEncodeError(McqFormatError):
    code = "E206_SECTION_ENCODE"
    summary = "a section object given to a writer cannot be encoded"


class TensorHashError(McqFormatError):
    code = "E210_TENSOR_HASH"
    summary = "a tensor's SHA-256 does not match `tensor_sha256` (verify only)"


# ---------------------------------------------------------------- E3xx: graph
class OpNotAllowedError(McqFormatError):
    code = "E300_OP_NOT_ALLOWED"
    summary = "a graph node's op is not in the opset"


class GraphReferenceError(McqFormatError):
    code = "E301_GRAPH_REFERENCE"
    summary = "a graph 'ref' names a value defined nowhere in the graph (dangling)"


class TensorReferenceError(McqFormatError):
    code = "E302_TENSOR_REFERENCE"
    summary = "a section names a tensor that is not in the file"


class GraphOrderError(McqFormatError):
    code = "E303_GRAPH_ORDER"
    summary = "a graph 'ref' names its own node or a later one (use before definition / cycle)"


class DuplicateNameError(McqFormatError):
    code = "E304_DUPLICATE_NAME"
    summary = "two graph inputs/nodes/outputs share a name"


class GraphSignatureError(McqFormatError):
    code = "E305_GRAPH_SIGNATURE"
    summary = ("a node's arguments do not bind to its op's signature (arity, names, kinds), "
               "or a graph output is not a tensor")


class GraphShapeError(McqFormatError):
    code = "E306_GRAPH_SHAPE"
    summary = "a node's dtypes or shapes do not fit its op at the check sizes, or a tensor exceeds the size limit"


class EntryPointError(McqFormatError):
    code = "E310_ENTRY_POINT"
    summary = "an entry point's inputs do not match its graph's inputs"


class EntryConventionError(McqFormatError):
    code = "E311_ENTRY_CONVENTION"
    summary = "the prefill / decode entry points do not follow the causal-LM convention"


# --------------------------------------------------------- E4xx: quantization
class QuantSpecError(McqFormatError):
    code = "E400_QUANT_SPEC"
    summary = ("a qformat entry or quant spec is malformed: unknown kind, format id or granularity, "
               "bad axis or group size")


class QuantParamsError(McqFormatError):
    code = "E401_QUANT_PARAMS"
    summary = "quantization parameters out of their domain: a scale not finite and > 0, a zero point off its grid"


class QuantTensorError(McqFormatError):
    code = "E402_QUANT_TENSOR"
    summary = "a quantized tensor's storage dtype or shape is not the one its spec implies"


class QuantNodeError(McqFormatError):
    code = "E403_QUANT_NODE"
    summary = "a quant point's graph node is not the op its kind names or does not read its own weight"


class KvCacheError(McqFormatError):
    code = "E404_KV_CACHE"
    summary = "manifest.kv_cache or a KV point disagrees with the cache it describes"


def _all_subclasses(cls: type[McqFormatError]) -> list[type[McqFormatError]]:
    out: list[type[McqFormatError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: Stable code -> error class, for every concrete error.
ERROR_CODES: dict[str, type[McqFormatError]] = {
    cls.code: cls for cls in sorted(_all_subclasses(McqFormatError), key=lambda c: c.code)
}

__all__ = ["ERROR_CODES", "McqFormatError"] + [cls.__name__ for cls in ERROR_CODES.values()]
