"""High level API: write, read and validate complete ``.mcq`` bundles."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import constants as C
from .container import (
    Closing,
    Container,
    FileRegion,
    RawTensor,
    TensorData,
    check_tensor_name,
    open_container,
    to_raw,
    write_container,
)
from .errors import (
    MetadataError,
    MissingSectionError,
    NotMcqError,
    SectionHashError,
    SectionLayoutError,
    TensorHashError,
    TensorNameError,
    TensorNotFoundError,
    TensorReferenceError,
    UnsupportedVersionError,
    VersionStringError,
)
from .opset import OPSETS
from .quant import TensorView
from .schema import Context, check_sections
from .sections import check_section_name, decode_section, encode_section, hash_key, sha256_bulk, sha256_hex, tensor_name

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_INT_RE = re.compile(r"0|[1-9][0-9]{0,8}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


class TensorSpec(NamedTuple):
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * C.DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class ValidationReport:
    path: str
    format_version: tuple[int, int]
    opset_version: int
    tensor_count: int
    data_bytes: int
    sections: tuple[str, ...]
    verified: bool


# ------------------------------------------------------------------ reading
def _check_versions(meta: Mapping[str, str]) -> tuple[tuple[int, int], int]:
    fmt = meta.get(C.META_FORMAT)
    if fmt != C.FORMAT_NAME:
        raise NotMcqError(f"metadata 'format' is {fmt!r}, not {C.FORMAT_NAME!r}: not an mcq file")
    for key in (C.META_FORMAT_VERSION, C.META_OPSET_VERSION):
        if key not in meta:
            raise MetadataError(f"metadata key {key!r} is missing")
    match = _VERSION_RE.fullmatch(meta[C.META_FORMAT_VERSION])
    if not match:
        raise VersionStringError(f"{C.META_FORMAT_VERSION} {meta[C.META_FORMAT_VERSION]!r} is not MAJOR.MINOR")
    version = (int(match[1]), int(match[2]))
    if version[0] != C.FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"format version {version[0]}.{version[1]}: major {version[0]} is not supported "
            f"(this reader supports {C.FORMAT_VERSION[0]}.x)"
        )
    opset_text = meta[C.META_OPSET_VERSION]
    if not _INT_RE.fullmatch(opset_text):
        raise VersionStringError(f"{C.META_OPSET_VERSION} {opset_text!r} is not a decimal integer")
    opset = int(opset_text)
    if opset not in OPSETS:
        raise UnsupportedVersionError(f"opset version {opset} is not supported (known: {sorted(OPSETS)})")
    return version, opset


def _section_names(container: Container) -> list[str]:
    names = []
    for tname, info in container.header.tensors.items():
        if not tname.startswith(C.SECTION_PREFIX):
            continue
        name = check_section_name(tname[len(C.SECTION_PREFIX) :])
        if info.dtype != "U8" or len(info.shape) != 1:
            raise SectionLayoutError(f"section {name!r} is {info.dtype}{list(info.shape)}, not 1-D U8")
        if info.nbytes > C.MAX_SECTION_BYTES:
            raise SectionLayoutError(f"section {name!r}: {info.nbytes} bytes exceeds {C.MAX_SECTION_BYTES}")
        names.append(name)
    return sorted(names)


def _load_sections(container: Container) -> dict[str, Any]:
    meta = container.metadata
    names = _section_names(container)
    for key in meta:
        if key.startswith(C.META_SHA256_PREFIX) and key[len(C.META_SHA256_PREFIX) :] not in names:
            raise MissingSectionError(f"metadata {key!r} names a section that is not in the file")
    for required in C.REQUIRED_SECTIONS:
        if required not in names:
            raise MissingSectionError(f"required section {required!r} is missing")
    raw = {}
    for name in names:
        digest = meta.get(hash_key(name))
        if digest is None or not _HEX_RE.fullmatch(digest):
            raise SectionHashError(f"section {name!r}: metadata {hash_key(name)!r} missing or not lowercase hex")
        data = container.raw(tensor_name(name))
        if sha256_hex(data) != digest:
            raise SectionHashError(f"section {name!r}: SHA-256 does not match {hash_key(name)!r}")
        raw[name] = data
    budget = [C.MAX_FILE_CONTAINERS]
    return {name: decode_section(name, data, budget) for name, data in raw.items()}


class Bundle(Closing):
    """A validated ``.mcq`` file: decoded sections and zero-copy tensor views."""

    def __init__(self, container: Container) -> None:
        self._container = container
        self.path = container.path
        self.metadata: dict[str, str] = dict(container.metadata)
        self.format_version, self.opset_version = _check_versions(self.metadata)
        self.sections: dict[str, Any] = _load_sections(container)
        self._names = sorted(n for n in container.header.tensors if not n.startswith(C.SECTION_PREFIX))
        check_sections(
            Context(frozenset(self._names), self.sections, self.format_version, self.opset_version,
                    TensorView(self._spec, self._container.tensor))
        )

    def _spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        if name not in self._container.header.tensors or name.startswith(C.SECTION_PREFIX):
            raise TensorReferenceError(f"qformat: no tensor {name!r} in the file")
        info = self._container.info(name)
        return info.dtype, tuple(info.shape)

    def tensor_names(self) -> list[str]:
        """Names of the model tensors (sections excluded), sorted."""
        return list(self._names)

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or name.startswith(C.SECTION_PREFIX):
            raise TensorNotFoundError(f"{self.path}: {name!r} is not a tensor name (sections are in .sections)")

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy read-only view; BF16 / F8_E4M3 are returned as uint16 / uint8 bits."""
        self._check_name(name)
        return self._container.tensor(name)

    def release_pages(self, name: str) -> None:
        """The tensor's bytes will not be read again: drop its pages from resident memory
        (``Container.release_pages``; views stay valid and read the same bytes if touched)."""
        self._check_name(name)
        self._container.release_pages(name)

    def tensor_info(self, name: str) -> TensorSpec:
        self._check_name(name)
        info = self._container.info(name)
        return TensorSpec(info.dtype, info.shape)

    def verify(self) -> None:
        """Check every tensor against the ``tensor_sha256`` section."""
        digests = self.sections.get(C.SECTION_TENSOR_SHA256)
        if digests is None:
            raise MissingSectionError(f"section {C.SECTION_TENSOR_SHA256!r} is missing: cannot verify")
        for name in self._names:
            if sha256_bulk(self._container.raw(name).data).digest() != digests[name]:
                raise TensorHashError(f"tensor {name!r}: SHA-256 does not match {C.SECTION_TENSOR_SHA256}")

    def report(self, verified: bool = False) -> ValidationReport:
        header = self._container.header
        return ValidationReport(
            path=self.path,
            format_version=self.format_version,
            opset_version=self.opset_version,
            tensor_count=len(self._names),
            data_bytes=header.file_size - header.data_start,
            sections=tuple(sorted(self.sections)),
            verified=verified,
        )

    def close(self) -> None:
        self._container.close()


def read(path: str | os.PathLike[str]) -> Bundle:
    """Open and validate ``path`` (header, section hashes and schemas)."""
    container = open_container(path)
    try:
        return Bundle(container)
    except BaseException:
        container.close()
        raise


def validate(path: str | os.PathLike[str], verify: bool = False) -> ValidationReport:
    """Validate ``path``; raise the first error found.  ``verify`` also hashes every tensor."""
    with read(path) as bundle:
        if verify:
            bundle.verify()
        return bundle.report(verified=verify)


# ------------------------------------------------------------------ writing
def _user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key, text in (metadata or {}).items():
        if key == C.META_FORMAT or str(key).startswith(C.RESERVED_META_PREFIX):
            raise MetadataError(f"metadata key {key!r} is reserved")
        meta[key] = text
    return meta


def _model_tensor(name: str, value: TensorData) -> tuple[RawTensor, bytes]:
    """A model tensor as the container writes it, and the SHA-256 of its bytes."""
    if check_tensor_name(name).startswith(C.SECTION_PREFIX):
        raise TensorNameError(f"tensor name {name!r} uses the reserved prefix {C.SECTION_PREFIX!r}")
    raw = to_raw(name, value)
    return raw, sha256_bulk(np.asarray(raw.data).data).digest()


def _write_bundle(path: str | os.PathLike[str], raw: dict[str, RawTensor], digests: dict[str, bytes],
                  sections: Mapping[str, object], meta: dict[str, str]) -> None:
    if C.SECTION_TENSOR_SHA256 in sections:
        raise SectionLayoutError(f"section {C.SECTION_TENSOR_SHA256!r} is written by write() itself")
    encoded = {check_section_name(n): encode_section(obj, n) for n, obj in sections.items()}
    encoded[C.SECTION_TENSOR_SHA256] = encode_section(digests, C.SECTION_TENSOR_SHA256)
    meta[C.META_FORMAT] = C.FORMAT_NAME
    meta[C.META_FORMAT_VERSION] = "{}.{}".format(*C.FORMAT_VERSION)
    meta[C.META_OPSET_VERSION] = str(C.OPSET_VERSION)
    all_tensors: dict[str, TensorData] = dict(raw)
    for name, data in encoded.items():
        meta[hash_key(name)] = sha256_hex(data)
        all_tensors[tensor_name(name)] = np.frombuffer(data, dtype=np.uint8)
    write_container(path, all_tensors, meta, check=lambda tmp: read(tmp).close())


def write(
    path: str | os.PathLike[str],
    tensors: Mapping[str, TensorData],
    sections: Mapping[str, object],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a complete bundle atomically and deterministically.

    Adds the version metadata, the ``tensor_sha256`` section and the section
    hashes, and validates the result with :func:`read` before it replaces
    ``path``.
    """
    meta = _user_metadata(metadata)
    raw: dict[str, RawTensor] = {}
    digests: dict[str, bytes] = {}
    for name, value in tensors.items():
        raw[name], digests[name] = _model_tensor(name, value)
    _write_bundle(path, raw, digests, sections, meta)


class StreamWriter(Closing):
    """Write a bundle whose tensors arrive one at a time, never holding them all in memory.

    :meth:`add` appends a tensor's bytes to a spool file beside ``path`` and hashes them;
    :meth:`finish` writes the bundle exactly as :func:`write` would for the same tensors and
    sections (same layout, same bytes: atomic, deterministic), copying the spooled bytes in
    chunks. The spool is removed by :meth:`close` (a ``with`` block), finished or not.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self._spool_path = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                                suffix=".spool", dir=directory)
        self._spool: Any = os.fdopen(fd, "wb")
        self._raw: dict[str, RawTensor] = {}
        self._digests: dict[str, bytes] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def add(self, name: str, value: TensorData) -> None:
        """Spool one model tensor (numpy array, RawTensor or (dtype, shape, bytes))."""
        if self._spool is None:
            raise ValueError(f"{self.path}: writer is closed")
        if name in self._raw:
            raise TensorNameError(f"tensor {name!r} was already added")
        raw, digest = _model_tensor(name, value)
        data = np.asarray(raw.data)
        offset = self._spool.tell()
        self._spool.write(data.data)
        self._raw[name] = RawTensor(raw.dtype, raw.shape, FileRegion(self._spool_path, offset, data.nbytes))
        self._digests[name] = digest

    def finish(self, sections: Mapping[str, object], metadata: Mapping[str, str] | None = None) -> None:
        """Write the bundle (the added tensors and ``sections``) and remove the spool."""
        if self._spool is None:
            raise ValueError(f"{self.path}: writer is closed")
        meta = _user_metadata(metadata)
        self._spool.flush()
        try:
            _write_bundle(self.path, self._raw, self._digests, sections, meta)
        finally:
            self.close()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
            try:
                os.unlink(self._spool_path)
            except OSError:
                pass
