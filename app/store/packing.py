"""Packs per-token arrays of stored examples into compact bytes (int32 ids, float16 values, little-endian) and
back; knows nothing of databases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_ids(ids: Sequence[int] | bytes) -> bytes:
    """Bytes are taken as already packed (the dashboard builder packs whole batches at once)."""
    return ids if isinstance(ids, bytes) else np.asarray(ids, dtype="<i4").tobytes()


def unpack_ids(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i4").tolist()


def pack_values(values: Sequence[float] | bytes) -> bytes:
    return values if isinstance(values, bytes) else np.asarray(values, dtype="<f2").tobytes()


def unpack_values(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f2").astype(np.float32).tolist()
