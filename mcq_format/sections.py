"""Sections: msgpack objects stored as 1-D U8 tensors named ``__mcq__/<name>``.

Encoding is deterministic (map keys sorted recursively, binary type for
bytes).  Decoding enforces the limits of :mod:`mcq_format.constants` and only
ever raises :class:`~mcq_format.errors.McqFormatError` subclasses.  Decoded
objects contain only ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes``, ``list`` and ``dict`` with ``str`` keys: nothing executable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np

from . import constants as C
from .errors import (
    MsgpackLimitError,
    SectionDecodeError,
    SectionEncodeError,
    SectionLayoutError,
)

_SCALARS = (type(None), bool, int, float)


def check_section_name(name: object) -> str:
    if not isinstance(name, str) or not C.SECTION_NAME_RE.fullmatch(name):
        raise SectionLayoutError(
            f"section name {name!r} must match {C.SECTION_NAME_RE.pattern!r}"
        )
    return name


def tensor_name(section: str) -> str:
    """The tensor name that stores ``section``."""
    return C.SECTION_PREFIX + section


def hash_key(section: str) -> str:
    """The ``__metadata__`` key holding the SHA-256 of ``section``."""
    return C.META_SHA256_PREFIX + section


def sha256(data: Any = b"") -> Any:
    """A SHA-256 hash object. Python's built-in implementation where it exists: reading a bundle
    hashes only its sections (a few MB), and hashlib's OpenSSL backend would add ~3.5 MiB to the
    resident memory of every process that opens one (a server); bulk hashing (`verify`, `write`)
    takes hashlib's faster one instead (`sha256_bulk`)."""
    try:
        from _sha2 import sha256 as builtin  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as builtin  # Python 3.11
        except ImportError:
            from hashlib import sha256 as builtin
    return builtin(memoryview(data))


def sha256_bulk(data: Any) -> Any:
    import hashlib

    return hashlib.sha256(memoryview(data))


def sha256_hex(data: Any) -> str:
    digest: str = sha256(data).hexdigest()
    return digest


# ------------------------------------------------------------------ encoding
def _normalize(obj: Any, where: str, depth: int) -> Any:
    if isinstance(obj, np.generic) and not isinstance(obj, np.void):
        obj = obj.item()
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, str):
        if len(obj.encode("utf-8", "surrogatepass")) > C.MSGPACK_MAX_STR_LEN:
            raise SectionEncodeError(f"{where}: string longer than {C.MSGPACK_MAX_STR_LEN} bytes")
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        if len(data) > C.MSGPACK_MAX_BIN_LEN:
            raise SectionEncodeError(f"{where}: bytes longer than {C.MSGPACK_MAX_BIN_LEN}")
        return data
    if depth >= C.MSGPACK_MAX_DEPTH:
        raise SectionEncodeError(f"{where}: nesting deeper than {C.MSGPACK_MAX_DEPTH}")
    if isinstance(obj, (list, tuple)):
        if len(obj) > C.MSGPACK_MAX_ARRAY_LEN:
            raise SectionEncodeError(f"{where}: list longer than {C.MSGPACK_MAX_ARRAY_LEN}")
        return [_normalize(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if len(obj) > C.MSGPACK_MAX_MAP_LEN:
            raise SectionEncodeError(f"{where}: map longer than {C.MSGPACK_MAX_MAP_LEN}")
        for key in obj:
            if not isinstance(key, str):
                raise SectionEncodeError(f"{where}: map key {key!r} is not a str")
        return {k: _normalize(obj[k], f"{where}.{k}", depth + 1) for k in sorted(obj)}
    raise SectionEncodeError(f"{where}: cannot encode a {type(obj).__name__}")


def encode_section(obj: object, name: str = "section") -> bytes:
    """Encode ``obj`` deterministically as msgpack (map keys sorted recursively)."""
    normal = _normalize(obj, name, 0)
    try:
        data: bytes = msgpack.packb(normal, use_bin_type=True)
    except (OverflowError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SectionEncodeError(f"{name}: {exc}") from None
    if len(data) > C.MAX_SECTION_BYTES:
        raise SectionEncodeError(f"{name}: {len(data)} bytes exceeds {C.MAX_SECTION_BYTES}")
    return data


# ------------------------------------------------------------------ decoding
def _check_tree(name: str, root: Any) -> None:
    """Check depth and types iteratively (no recursion on untrusted input)."""
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (list, dict)):
            if depth >= C.MSGPACK_MAX_DEPTH:
                raise MsgpackLimitError(f"{name}: nesting deeper than {C.MSGPACK_MAX_DEPTH}")
            children: Iterable[Any]
            if isinstance(obj, dict):
                for key in obj:
                    if not isinstance(key, str):
                        raise SectionDecodeError(f"{name}: map key {key!r} is not a str")
                children = obj.values()
            else:
                children = obj
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
            for child in children:
                if not isinstance(child, (list, dict, str, bytes, *_SCALARS)):
                    raise SectionDecodeError(f"{name}: value of type {type(child).__name__} not allowed")
        elif not isinstance(obj, (str, bytes, *_SCALARS)):
            raise SectionDecodeError(f"{name}: value of type {type(obj).__name__} not allowed")


def decode_section(name: str, data: Any, budget: list[int] | None = None) -> Any:
    """Decode a section's bytes, enforcing the msgpack limits. ``budget``: the maps and arrays the
    file's sections may still hold, shared by all of them (a per-file bound on decoding work)."""
    view = memoryview(data)
    hooks: dict[str, Any] = {}
    if budget is not None:
        def spend(obj: Any) -> Any:
            budget[0] -= 1
            if budget[0] < 0:
                raise MsgpackLimitError(f"section {name!r}: the file's sections hold more than "
                                        f"{C.MAX_FILE_CONTAINERS} maps and arrays")
            return obj
        hooks = {"list_hook": spend, "object_hook": spend}
    if view.nbytes > C.MAX_SECTION_BYTES:
        raise SectionLayoutError(f"section {name!r}: {view.nbytes} bytes exceeds {C.MAX_SECTION_BYTES}")
    try:
        obj = msgpack.unpackb(
            view,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=C.MSGPACK_MAX_STR_LEN,
            max_bin_len=C.MSGPACK_MAX_BIN_LEN,
            max_array_len=C.MSGPACK_MAX_ARRAY_LEN,
            max_map_len=C.MSGPACK_MAX_MAP_LEN,
            max_ext_len=0,
            **hooks,
        )
    except MsgpackLimitError:
        raise
    except msgpack.StackError:
        raise MsgpackLimitError(f"section {name!r}: msgpack nesting too deep") from None
    except Exception as exc:  # msgpack signals everything through plain exceptions
        text = str(exc)
        if "max_ext_len" in text:
            raise SectionDecodeError(f"section {name!r}: msgpack ext types are not allowed") from None
        if isinstance(exc, ValueError) and "exceeds max_" in text:
            raise MsgpackLimitError(f"section {name!r}: {text}") from None
        raise SectionDecodeError(f"section {name!r}: invalid msgpack ({type(exc).__name__}: {exc})") from None
    _check_tree(f"section {name!r}", obj)
    return obj
