"""Low-level container: the safetensors-compatible byte layout.

Layout (all integers little-endian)::

    u64 N | N bytes of UTF-8 JSON header (space padded) | data buffer

:func:`parse_header` checks everything that does not need the tensor data
(cheap to expensive); :func:`open_container` adds a read-only memory map and
zero-copy tensor views; :func:`write_container` writes atomically and
deterministically.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, TypeVar, Union

import numpy as np

from . import constants as C
from .errors import (
    DuplicateKeyError,
    FileTooShortError,
    FileUnreadableError,
    HeaderEncodingError,
    HeaderJSONError,
    HeaderLengthError,
    HeaderNotObjectError,
    HeaderTooLargeError,
    MetadataError,
    OffsetsError,
    ShapeError,
    TensorDataError,
    TensorEntryError,
    TensorNameError,
    TensorNotFoundError,
    TruncatedFileError,
    UnknownDtypeError,
)

_U64_MAX = (1 << 64) - 1
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class RawTensor(NamedTuple):
    """Tensor given as raw little-endian bytes, for dtypes numpy lacks (BF16, F8_E4M3)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview | np.ndarray | FileRegion  # np.ndarray: 1-D uint8


TensorData = Union[np.ndarray, RawTensor, "tuple[str, Iterable[int], bytes]"]


@dataclass(frozen=True)
class FileRegion:
    """Tensor bytes already written to a file (a writer's spool): the container copies them in
    chunks, so a bundle larger than memory is written without loading its tensors."""

    path: str
    offset: int
    nbytes: int

    CHUNK = 16 << 20

    def __len__(self) -> int:
        return self.nbytes

    def copy_to(self, out: BinaryIO) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.nbytes
            while left:
                chunk = f.read(min(left, self.CHUNK))
                if not chunk:
                    raise TruncatedFileError(f"{self.path}: ends before byte {self.offset + self.nbytes}")
                out.write(chunk)
                left -= len(chunk)


class TensorInfo(NamedTuple):
    """One header entry; ``begin``/``end`` are offsets into the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A parsed, validated header."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]  # in data-buffer order
    data_start: int  # absolute file offset of the data buffer
    file_size: int


# ------------------------------------------------------------------ helpers
def check_str(value: object, what: str, error: type[Exception]) -> str:
    """Return ``value`` if it is a str encodable as UTF-8, else raise ``error``."""
    if not isinstance(value, str):
        raise error(f"{what}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what}: {value!r} is not encodable as UTF-8") from None
    return value


def check_tensor_name(name: object) -> str:
    name = check_str(name, "tensor name", TensorNameError)
    if not name or name == C.METADATA_KEY:
        raise TensorNameError(f"tensor name {name!r} is empty or reserved")
    return name


def check_shape(shape: object, where: str) -> tuple[int, ...]:
    """Validate a shape: a list of non-negative ints whose product fits in u64."""
    if not isinstance(shape, (list, tuple)):
        raise ShapeError(f"{where}: shape must be a list, got {type(shape).__name__}")
    if len(shape) > C.MAX_TENSOR_RANK:
        raise ShapeError(f"{where}: rank {len(shape)} exceeds {C.MAX_TENSOR_RANK}")
    dims: list[int] = []
    for i, dim in enumerate(shape):
        if isinstance(dim, np.integer):
            dim = int(dim)
        if type(dim) is not int:
            raise ShapeError(f"{where}: shape[{i}] = {dim!r} is not an integer")
        if dim < 0:
            raise ShapeError(f"{where}: shape[{i}] = {dim} is negative")
        dims.append(dim)
    if math.prod(dims) > _U64_MAX:
        raise ShapeError(f"{where}: shape {dims} has a size that overflows u64")
    return tuple(dims)


def dtype_info(name: object, where: str) -> C.DtypeInfo:
    info = C.DTYPES.get(name) if isinstance(name, str) else None
    if info is None:
        raise UnknownDtypeError(f"{where}: unknown dtype {name!r} (known: {sorted(C.DTYPES)})")
    return info


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"header: duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise HeaderJSONError(f"header: non-standard JSON constant {name}")


# ------------------------------------------------------------------ reading
def _read_header_bytes(f: BinaryIO, file_size: int, path: str) -> bytes:
    if file_size < C.HEADER_LENGTH_BYTES:
        raise FileTooShortError(f"{path}: {file_size} bytes, need at least {C.HEADER_LENGTH_BYTES}")
    head = f.read(C.HEADER_LENGTH_BYTES)
    (n,) = struct.unpack("<Q", head)
    # a text file (or anything else) read as a length: say what probably happened
    hint = " (the file starts with text: not a .mcq file)" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else ""
    if n > C.MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"{path}: header length {n} exceeds {C.MAX_HEADER_BYTES}{hint}")
    if n < C.MIN_HEADER_BYTES:
        raise HeaderLengthError(f"{path}: header length {n} is below {C.MIN_HEADER_BYTES}{hint}")
    if C.HEADER_LENGTH_BYTES + n > file_size:
        raise TruncatedFileError(
            f"{path}: header length {n} runs past the end of the {file_size}-byte file{hint}"
        )
    data = f.read(n)
    if len(data) != n:
        raise TruncatedFileError(f"{path}: file shrank while reading the header")
    return data


def _decode_header_json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderEncodingError(f"{path}: header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.startswith("{"):
        raise HeaderNotObjectError(f"{path}: header does not start with '{{'")
    if text.rstrip(" ")[-1:] in ("\t", "\n", "\r"):
        # Padding after the JSON value must be spaces only, so that any corrupted padding byte
        # is an error (JSON itself would accept tab, LF and CR there).
        raise HeaderJSONError(f"{path}: header padding after the JSON object must be spaces (0x20) only")
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HeaderJSONError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise HeaderNotObjectError(f"{path}: header is a JSON {type(obj).__name__}, not an object")
    return obj


def _parse_metadata(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.pop(C.METADATA_KEY, None)
    if meta is None:
        raise MetadataError("header has no __metadata__ object")
    if not isinstance(meta, dict):
        raise MetadataError(f"__metadata__ is a {type(meta).__name__}, not an object")
    for key, value in meta.items():
        check_str(key, "__metadata__ key", MetadataError)
        check_str(value, f"__metadata__[{key!r}]", MetadataError)
    return meta


def _parse_entry(name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise TensorEntryError(f"{where}: entry is a {type(entry).__name__}, not an object")
    if set(entry) != _ENTRY_KEYS:
        raise TensorEntryError(
            f"{where}: entry keys {sorted(entry)} must be exactly {sorted(_ENTRY_KEYS)}"
        )
    info = dtype_info(entry["dtype"], where)
    shape = check_shape(entry["shape"], where)
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or any(type(o) is not int or o < 0 or o > _U64_MAX for o in offsets)
    ):
        raise OffsetsError(f"{where}: data_offsets {offsets!r} must be two non-negative u64 ints")
    begin, end = offsets
    if begin > end:
        raise OffsetsError(f"{where}: data_offsets begin {begin} > end {end}")
    expected = math.prod(shape) * info.itemsize
    if end - begin != expected:
        raise OffsetsError(
            f"{where}: data_offsets span {end - begin} bytes but {info.name}{list(shape)} needs {expected}"
        )
    return info.name, shape, begin, end


def _check_coverage(infos: list[TensorInfo], buffer_size: int, path: str) -> None:
    """Offsets, sorted by begin, must tile [0, buffer_size) without holes or overlaps."""
    position = 0
    for info in infos:
        if info.begin < position:
            raise OffsetsError(f"tensor {info.name!r}: data_offsets overlap the previous tensor")
        if info.begin > position:
            raise OffsetsError(
                f"tensor {info.name!r}: hole of {info.begin - position} bytes before it in the data buffer"
            )
        position = info.end
    if position > buffer_size:
        raise TruncatedFileError(
            f"{path}: data buffer is {buffer_size} bytes but tensors need {position}"
        )
    if position < buffer_size:
        raise OffsetsError(f"{path}: {buffer_size - position} trailing bytes not covered by any tensor")


def parse_header(path: str | os.PathLike[str]) -> Header:
    """Read and fully validate the header of ``path`` without touching tensor data."""
    spath = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(spath).st_mode):  # before open(): a FIFO would block
            raise FileUnreadableError(f"{spath}: not a regular file")
        with open(spath, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise FileUnreadableError(f"{spath}: not a regular file")
            raw = _read_header_bytes(f, st.st_size, spath)
    except OSError as exc:
        raise FileUnreadableError(f"{spath}: cannot read ({exc.strerror or exc})") from None
    return _parse_header_bytes(raw, st.st_size, spath)


def _parse_header_bytes(raw: bytes, file_size: int, path: str) -> Header:
    obj = _decode_header_json(raw, path)
    metadata = _parse_metadata(obj)
    infos = []
    for name, entry in obj.items():
        check_tensor_name(name)
        dtype, shape, begin, end = _parse_entry(name, entry)
        infos.append(TensorInfo(name, dtype, shape, begin, end))
    infos.sort(key=lambda t: (t.begin, t.end, t.name))
    data_start = C.HEADER_LENGTH_BYTES + len(raw)
    _check_coverage(infos, file_size - data_start, path)
    return Header(metadata, {t.name: t for t in infos}, data_start, file_size)


class Closing:
    """Context-manager support for objects with a ``close()`` method."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_Self = TypeVar("_Self", bound=Closing)


class Container(Closing):
    """An open container: validated header plus a read-only memory map."""

    def __init__(self, path: str, header: Header) -> None:
        self.path = path
        self.header = header
        self._mmap: np.memmap | None = np.memmap(path, dtype=np.uint8, mode="r")
        if self._mmap.shape[0] != header.file_size:
            raise TruncatedFileError(f"{path}: file changed size while opening")

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def info(self, name: str) -> TensorInfo:
        try:
            return self.header.tensors[name]
        except KeyError:
            raise TensorNotFoundError(f"{self.path}: no tensor {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only 1-D uint8 view (zero-copy)."""
        if self._mmap is None:
            raise ValueError("container is closed")
        info = self.info(name)
        start = self.header.data_start + info.begin
        return self._mmap[start : start + info.nbytes]

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy read-only view; BF16/F8_E4M3 come as uint16/uint8 bits."""
        info = self.info(name)
        np_dtype = C.DTYPES[info.dtype].numpy
        return self.raw(name).view(np_dtype).reshape(info.shape)

    def release_pages(self, name: str) -> None:
        """Tell the OS this tensor's bytes will not be read again (a reader that made its own copy,
        e.g. a repacked weight): its pages leave this process's resident memory (they stay in the
        page cache; a later read maps them again, same bytes). Whole pages inside the tensor only;
        a no-op where the platform has no madvise."""
        mapping = getattr(self._mmap, "_mmap", None)  # np.memmap's own mmap.mmap
        if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.info(name)
        start = self.header.data_start + info.begin
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # pages shared with neighbours stay
        end = (start + info.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > first:
            mapping.madvise(mmap.MADV_DONTNEED, first, end - first)

    def close(self) -> None:
        # Views handed out keep the mapping alive; this only drops our reference.
        self._mmap = None


def open_container(path: str | os.PathLike[str]) -> Container:
    """Validate the header of ``path`` and memory-map it read-only."""
    spath = os.fspath(path)
    header = parse_header(spath)
    try:
        return Container(spath, header)
    except OSError as exc:
        raise FileUnreadableError(f"{spath}: cannot map ({exc.strerror or exc})") from None


# ------------------------------------------------------------------ writing
def to_raw(name: str, value: object) -> RawTensor:
    """Convert writer input to a RawTensor whose ``data`` is a 1-D uint8 array of little-endian bytes."""
    check_tensor_name(name)
    where = f"tensor {name!r}"
    if isinstance(value, RawTensor) and isinstance(value.data, FileRegion):
        info = dtype_info(value.dtype, where)
        shape = check_shape(value.shape, where)
        if value.data.nbytes != math.prod(shape) * info.itemsize:
            raise TensorDataError(f"{where}: {value.data.nbytes} spooled bytes but {info.name}{list(shape)} "
                                  f"needs {math.prod(shape) * info.itemsize}")
        return RawTensor(info.name, shape, value.data)
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        dtype = C.NUMPY_TO_DTYPE.get((value.dtype.kind, value.dtype.itemsize))
        if dtype is None:
            raise UnknownDtypeError(f"{where}: numpy dtype {value.dtype} has no mcq dtype")
        shape = check_shape(value.shape, where)
        little = np.ascontiguousarray(value, dtype=C.DTYPES[dtype].numpy)
        return RawTensor(dtype, shape, little.reshape(-1).view(np.uint8))
    if isinstance(value, tuple) and len(value) == 3:
        dtype, shape_in, data = value
        info = dtype_info(dtype, where)
        shape = check_shape(list(shape_in) if isinstance(shape_in, (list, tuple)) else shape_in, where)
        try:
            buf = np.frombuffer(data, dtype=np.uint8)
        except TypeError:
            raise TensorDataError(f"{where}: raw data must be bytes-like, got {type(data).__name__}") from None
        expected = math.prod(shape) * info.itemsize
        if buf.size != expected:
            raise TensorDataError(f"{where}: {buf.size} raw bytes but {dtype}{list(shape)} needs {expected}")
        return RawTensor(info.name, shape, buf)
    raise TensorDataError(
        f"{where}: expected a numpy array or (dtype, shape, bytes), got {type(value).__name__}"
    )


def _layout(prepared: dict[str, RawTensor]) -> list[tuple[str, RawTensor]]:
    """Deterministic buffer order: larger item size first, then by name."""
    return sorted(prepared.items(), key=lambda p: (-C.DTYPES[p[1].dtype].itemsize, p[0]))


def build_header(
    tensors: list[tuple[str, RawTensor]], metadata: Mapping[str, str]
) -> tuple[bytes, dict[str, Any]]:
    """Return the padded header bytes (including the u64 length) and the header object."""
    obj: dict[str, Any] = {C.METADATA_KEY: dict(metadata)}
    offset = 0
    for name, t in tensors:
        end = offset + len(t.data)
        obj[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    pad = -(C.HEADER_LENGTH_BYTES + len(text)) % C.DATA_ALIGNMENT
    text += b" " * pad
    if len(text) > C.MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {len(text)} bytes exceeds {C.MAX_HEADER_BYTES}")
    return struct.pack("<Q", len(text)) + text, obj


def _new_file_mode(dest: str) -> int:
    try:
        return stat.S_IMODE(os.stat(dest).st_mode)
    except OSError:
        return 0o644


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_chunks(f: BinaryIO, header: bytes, tensors: list[tuple[str, RawTensor]]) -> None:
    f.write(header)
    for _, t in tensors:
        if isinstance(t.data, FileRegion):
            t.data.copy_to(f)
        else:
            f.write(np.asarray(t.data).data)


def write_container(
    path: str | os.PathLike[str],
    tensors: Mapping[str, TensorData],
    metadata: Mapping[str, str],
    *,
    check: Callable[[str], None] | None = None,
) -> None:
    """Write a container atomically and deterministically.

    The file is written to a temporary file in the destination directory,
    fsynced, re-read and validated (its header, then ``check(temp_path)`` if
    given), and only then renamed onto ``path``.  On any failure the temporary
    file is removed and ``path`` is left as it was.
    """
    dest = os.fspath(path)
    for key, value in metadata.items():
        check_str(key, "metadata key", MetadataError)
        check_str(value, f"metadata[{key!r}]", MetadataError)
    prepared = _layout({name: to_raw(name, value) for name, value in tensors.items()})
    header, obj = build_header(prepared, metadata)
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _new_file_mode(dest))
            _write_chunks(f, header, prepared)
            f.flush()
            os.fsync(f.fileno())
        reread = parse_header(tmp)
        if reread.data_start != len(header) or {n: list(t.shape) for n, t in reread.tensors.items()} != {
            n: e["shape"] for n, e in obj.items() if n != C.METADATA_KEY
        }:
            raise TruncatedFileError(f"{dest}: re-read header differs from the one written")
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
