"""A reader for dlib's binary serialisation format (``dlib/serialize.h``), enough to load its DNN files.

dlib writes every integer as a control byte (bit 7: sign, low 4 bits: byte count) followed by the
absolute value in little-endian bytes; a float as two such integers, a 64-bit mantissa and a 16-bit
exponent (``float_details``: value = mantissa * 2**exponent, exponents 32000/32001/32002 meaning
+inf/-inf/nan); a string as its length then its bytes; a bool as the ASCII byte '1' or '0'. A
``resizable_tensor`` is an int version, four longs (num_samples, k, nr, nc) and then the values:
raw little-endian float32 in version 2 (``dlib/cuda/tensor.h``), ``float_details`` in version 1.
An ``alias_tensor`` is an int version and its four dimensions, no data.
"""

from __future__ import annotations

import math

import numpy as np

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
    """The bytes do not follow dlib's serialisation format where the reader expected them to."""


class DlibReader:
    """Sequential reader over the bytes of a dlib-serialised object."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def _error(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self._error(f"unexpected end of data reading {n} bytes")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def int(self) -> int:
        """An integer of any C++ integral type (dlib's ``pack_int``)."""
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self._error(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        """A float or double stored as ``float_details`` (mantissa, then exponent)."""
        mantissa, exponent = self.int(), self.int()
        if exponent < _FLOAT_INF:
            return math.ldexp(float(mantissa), exponent)
        return {_FLOAT_INF: math.inf, _FLOAT_NINF: -math.inf}.get(exponent, math.nan)

    def bool(self) -> bool:
        byte = bytes(self._take(1))
        if byte not in (b"0", b"1"):
            raise self._error(f"bad bool byte {byte!r}")
        return byte == b"1"

    def string(self) -> str:
        return bytes(self._take(self.int())).decode("latin-1")

    def expect_string(self, *allowed: str) -> str:
        start = self.pos
        try:
            value = self.string()
        except DlibFormatError:
            value = None
        if value not in allowed:
            self.pos = start
            raise self._error(f"expected one of {', '.join(allowed)}, found {value!r}")
        return value

    def expect_int(self, expected: int, what: str) -> None:
        value = self.int()
        if value != expected:
            raise self._error(f"expected {what} {expected}, found {value}")

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor`` as a float32 array of shape (num_samples, k, nr, nc)."""
        version = self.int()
        shape = tuple(self.int() for _ in range(4))
        size = math.prod(shape)
        if version == 2:
            values = np.frombuffer(self._take(4 * size), dtype="<f4").astype(np.float32)
        elif version == 1:
            values = np.array([self.float() for _ in range(size)], dtype=np.float32)
        else:
            raise self._error(f"unknown tensor version {version}")
        return values.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """An ``alias_tensor``: only its shape (num_samples, k, nr, nc) is stored."""
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))
