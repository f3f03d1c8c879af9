"""Read a TensorFlow 1 checkpoint (a "tensor bundle") with the standard
library and NumPy: no TensorFlow.

A bundle ``<prefix>`` is two files:

- ``<prefix>.index``: a table in LevelDB's SSTable format. Its keys are the
  tensor names (and the empty key, for the header); each value is a
  ``BundleEntryProto`` protocol buffer: the tensor's dtype, shape, shard,
  offset and size in bytes, and its CRC32C.
- ``<prefix>.data-00000-of-00001``: the raw tensors one after another,
  little-endian, at those offsets.

The SSTable: a 48-byte footer at the end of the file (the handles, offset
and size, of the meta-index and index blocks, then the magic number
``0xdb4775248b80fb57``); the index block maps the last key of each data block
to that block's handle; a block is a sequence of prefix-compressed entries
(``shared``, ``non_shared`` and ``value`` lengths as varints, then the key's new
bytes and the value), then its restart offsets; every block is followed by a
one-byte compression type (bundles are written uncompressed) and a CRC.

Only what checkpoints of plain models hold is read: whole (unsliced) tensors
of numeric dtypes in one shard. Anything else raises :class:`CheckpointError`.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["CheckpointError", "TensorInfo", "read_index", "read_tensors"]

MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48

#: TensorFlow's DataType enum -> NumPy dtype (little-endian), for the numeric types.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2",
          22: "<u4", 23: "<u8"}


class CheckpointError(ValueError):
    """The files are not a TensorFlow checkpoint this reader understands."""


class TensorInfo(dict):
    """One entry of the index: ``dtype`` (NumPy), ``shape``, ``shard``, ``offset``, ``size``."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """The ``(field number, wire type, value)`` of a protocol buffer message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protocol buffer wire type {wire}")
        yield number, wire, value


def _shape(buf: bytes) -> tuple[int, ...]:
    """A ``TensorShapeProto``: repeated ``dim`` (field 2), each with ``size`` (field 1)."""
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:
            dims.append(next((int(v) for n, _, v in _fields(value) if n == 1), 0))
        elif number == 3 and value:
            raise CheckpointError("a tensor of unknown rank")
    return tuple(dims)


def _block(data: bytes, offset: int, size: int) -> bytes:
    if offset + size + 5 > len(data):
        raise CheckpointError("a block handle points past the end of the index file")
    if data[offset + size] != 0:
        raise CheckpointError(f"block compressed with type {data[offset + size]}: only uncompressed tables are read")
    return data[offset:offset + size]


def _entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The ``(key, value)`` pairs of one SSTable block, in order."""
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        own, pos = _varint(block, pos)
        n_value, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + own]
        pos += own
        yield key, block[pos:pos + n_value]
        pos += n_value


def read_index(prefix: str | Path) -> dict[str, TensorInfo]:
    """The tensors of the bundle ``prefix`` (``<prefix>.index``): name -> :class:`TensorInfo`.
    ``prefix`` is a string: musicnn's bundles are ``<folder>/`` (files ``.index`` and ``.data-...``), which a
    ``Path`` would lose."""
    path = Path(f"{prefix}.index")
    data = path.read_bytes()
    if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (no SSTable footer)")
    footer = data[-FOOTER_BYTES:]
    _, pos = _varint(footer, 0)                        # the meta-index handle (not needed)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    tensors: dict[str, TensorInfo] = {}
    for _, handle in _entries(_block(data, index_offset, index_size)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _entries(_block(data, offset, size)):
            if not key:                                # the BundleHeaderProto
                header = {n: v for n, _, v in _fields(value)}
                if header.get(2, 0) != 0:
                    raise CheckpointError(f"{path}: a big-endian checkpoint")
                continue
            entry = {n: v for n, _, v in _fields(value)}
            if 7 in entry:
                raise CheckpointError(f"{path}: tensor {key.decode()!r} is stored in slices")
            dtype = entry.get(1, 0)
            if dtype not in DTYPES:
                raise CheckpointError(f"{path}: tensor {key.decode()!r} has TensorFlow dtype {dtype}, not a number")
            tensors[key.decode()] = TensorInfo(dtype=np.dtype(DTYPES[dtype]), shape=_shape(entry.get(2, b"")),
                                               shard=entry.get(3, 0), offset=entry.get(4, 0), size=entry.get(5, 0))
    return tensors


def read_tensors(prefix: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of the bundle ``prefix`` (all, or those in ``names``) as
    NumPy arrays of their dtype and shape, read from
    ``<prefix>.data-00000-of-00001``."""
    index = read_index(prefix)
    missing = sorted(set(names or ()) - set(index))
    if missing:
        raise CheckpointError(f"{prefix}: no tensor named {', '.join(missing)}")
    shards = {info["shard"] for info in index.values()}
    if shards - {0}:
        raise CheckpointError(f"{prefix}: a checkpoint in several shards")
    data = Path(f"{prefix}.data-00000-of-00001").read_bytes()
    out = {}
    for name in names or sorted(index):
        info = index[name]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if info["size"] != count * info["dtype"].itemsize or info["offset"] + info["size"] > len(data):
            raise CheckpointError(f"{prefix}: tensor {name!r} of shape {info['shape']} does not fit its bytes")
        out[name] = np.frombuffer(data, info["dtype"], count, info["offset"]).reshape(info["shape"]).copy()
    return out
