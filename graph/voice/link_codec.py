"""The stage link's wire format: msgpack data, never code.

A stage link's secret reaches any local process that can call the replica through Ray, so what the
link accepts must be harmless even from such a process: at worst it can send audio. Pickle would let it
run code (unpickling calls any importable callable), so frames are msgpack, and the only values that
decode are msgpack's own (None, bool, int, float, str, bytes, arrays as tuples, maps) plus three
extension types:

    ext 1  numpy array     msgpack (dtype, shape, offset, size) of its raw C-order bytes
    ext 2  dataclass       msgpack (tag, field values in declaration order), tag from ALLOWED_DATACLASSES
    ext 3  StageError      msgpack (stage, backend, message)

A frame is [u32 body length][msgpack body][the arrays' raw bytes, back to back]: arrays travel out of
band, so nesting (a VCResult holding an AudioChunk holding samples) never copies their bytes again.

Decoding builds only the classes in ALLOWED_DATACLASSES, through their normal constructors (so their own
validation runs), and numpy arrays only of plain numeric dtypes; anything else (an unknown extension or
tag, an object dtype, a shape that does not match the bytes, a pickle) raises `WireError` without running
anything. msgpack arrays decode as tuples (the graph's dataclasses hold tuples: LLMRequest.history, stop).

Arrays travel as their raw buffer: one copy each way, no per-sample work. Nothing here imports Ray.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
import struct
from functools import cache, lru_cache
from typing import Any

import msgpack
import numpy as np

from graph.voice.types import AudioChunk, LLMRequest, StageError, TTSOptions, VCOptions, VCResult

EXT_NDARRAY = 1
EXT_DATACLASS = 2
EXT_STAGE_ERROR = 3

# every dataclass that crosses a link, by a stable tag (renaming a class must not change the wire). A
# backend's class is named "module:Class" and imported on first use, so the link does not load every
# backend (pyworld, soxr) into every process; the names are this fixed list, never taken from a frame.
ALLOWED_DATACLASSES: dict[str, type | str] = {
    "llm.request": LLMRequest,
    "tts.options": TTSOptions,
    "vc.options": VCOptions,
    "audio.chunk": AudioChunk,
    "vc.result": VCResult,
    "vc.rvc_context": "graph.backends.vc.rvc_onnx:RVCContext",  # the RVC backend's cross-chunk state
}
_TAG_OF = {cls if isinstance(cls, type) else cls.replace(":", "."): tag for tag, cls in ALLOWED_DATACLASSES.items()}


@cache
def _allowed_class(tag: str) -> type:
    entry = ALLOWED_DATACLASSES[tag]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


@cache
def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@lru_cache(maxsize=64)  # bounded: a frame may name any string
def _allowed_dtype(dtype_str: str) -> np.dtype | None:
    return np.dtype(dtype_str) if _DTYPE.match(dtype_str) else None


def _tag_of(cls: type) -> str | None:
    return _TAG_OF.get(cls) or _TAG_OF.get(f"{cls.__module__}.{cls.__qualname__}")
# byte order, kind (bool, signed, unsigned, float, complex), item size: no objects, no structured dtypes
_DTYPE = re.compile(r"^[<>|][biufc][1-9][0-9]?$")
_BODY_LENGTH = struct.Struct("<I")


class WireError(ValueError):
    """A frame that is not a valid, allowed link message (refused before anything is built from it)."""


class _Encoder:
    """One frame's encoding: arrays are set aside as out-of-band buffers, appended after the body."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.size = 0

    def default(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if not _DTYPE.match(value.dtype.str):
                raise TypeError(f"the stage link carries numeric arrays only, not dtype {value.dtype}")
            array = np.require(value, requirements="C")  # keeps 0-d arrays 0-d, copies only a strided view
            view = memoryview(array.reshape(-1).view(np.uint8))
            self.buffers.append(view)
            self.size += view.nbytes
            return msgpack.ExtType(EXT_NDARRAY, msgpack.packb((array.dtype.str, array.shape, self.size - view.nbytes, view.nbytes)))
        tag = _tag_of(type(value))
        if tag is not None and _allowed_class(tag) is type(value):
            fields = tuple(getattr(value, name) for name in _fields(type(value)))
            return msgpack.ExtType(EXT_DATACLASS, msgpack.packb((tag, fields), default=self.default))
        if isinstance(value, StageError):
            return msgpack.ExtType(EXT_STAGE_ERROR, msgpack.packb((value.stage, value.backend, value.message)))
        if isinstance(value, np.generic):
            return value.item()  # a numpy scalar travels as the plain number it is
        raise TypeError(f"the stage link cannot carry a {type(value).__qualname__} (not in its allowed types)")


class _Decoder:
    """One frame's decoding; arrays are views into the frame's (writable) copy of its buffers."""

    def __init__(self, buffers: memoryview) -> None:
        self.buffers = buffers

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_NDARRAY:
            return self._array(data)
        if code == EXT_DATACLASS:
            return self._dataclass(data)
        if code == EXT_STAGE_ERROR:
            fields = msgpack.unpackb(data, use_list=False)
            if not (isinstance(fields, tuple) and len(fields) == 3 and all(isinstance(f, str) for f in fields)):
                raise WireError("a stage error is three strings")
            return StageError(*fields)
        raise WireError(f"extension type {code} is not allowed on the stage link")

    def _array(self, data: bytes) -> np.ndarray:
        header = msgpack.unpackb(data, use_list=False)
        if not (isinstance(header, tuple) and len(header) == 4):
            raise WireError("an array header is (dtype, shape, offset, size)")
        dtype_str, shape, offset, nbytes = header
        dtype = _allowed_dtype(dtype_str) if isinstance(dtype_str, str) else None
        if dtype is None:
            raise WireError(f"array dtype {dtype_str!r} is not allowed")
        if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
            raise WireError(f"array shape {shape!r} is not a tuple of sizes")
        if type(offset) is not int or type(nbytes) is not int or not 0 <= offset <= offset + nbytes <= len(self.buffers):
            raise WireError("array bytes outside the frame")
        if math.prod(shape) * dtype.itemsize != nbytes:
            raise WireError(f"array of shape {shape} and dtype {dtype_str} does not match its {nbytes} bytes")
        return np.frombuffer(self.buffers[offset:offset + nbytes], dtype=dtype).reshape(shape)

    def _dataclass(self, data: bytes) -> Any:
        tag, values = msgpack.unpackb(data, use_list=False, ext_hook=self.ext_hook)
        if not isinstance(tag, str) or tag not in ALLOWED_DATACLASSES:
            raise WireError(f"type tag {tag!r} is not allowed on the stage link")
        cls = _allowed_class(tag)
        names = _fields(cls)
        if not isinstance(values, tuple) or len(values) != len(names):
            raise WireError(f"{tag}: expected {len(names)} fields")
        return cls(**dict(zip(names, values)))


def dumps(message: tuple) -> bytes:
    """Encode one link message (a tuple of allowed values); TypeError for a value the link cannot carry."""
    encoder = _Encoder()
    body = msgpack.packb(message, default=encoder.default)
    return b"".join((_BODY_LENGTH.pack(len(body)), body, *encoder.buffers))


def loads(frame: bytes) -> tuple:
    """Decode one link message; WireError for anything that is not an allowed, well-formed message."""
    try:
        (length,) = _BODY_LENGTH.unpack_from(frame)
        body_end = _BODY_LENGTH.size + length
        if body_end > len(frame):
            raise WireError("the frame is shorter than its body")
        # one copy of the array bytes, so the arrays built on it are writable (as pickle's were)
        buffers = memoryview(bytearray(memoryview(frame)[body_end:])) if body_end < len(frame) else memoryview(b"")
        decoder = _Decoder(buffers)
        message = msgpack.unpackb(memoryview(frame)[_BODY_LENGTH.size:body_end], use_list=False,
                                  ext_hook=decoder.ext_hook, strict_map_key=True)
    except WireError:
        raise
    except Exception as error:  # malformed msgpack, trailing bytes, a constructor refusing its fields
        raise WireError(f"not a stage link message: {type(error).__name__}: {error}") from None
    if not isinstance(message, tuple) or len(message) < 2 or not isinstance(message[0], str):
        raise WireError("a stage link message is a tuple (kind, call id, ...)")
    return message
