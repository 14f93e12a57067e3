"""Embedding tensor codec: numpy/torch float32 arrays <-> `promptopt.common.v1.Tensor`."""

from __future__ import annotations

import numpy as np
from promptopt.common.v1 import common_pb2


def encode_tensor(array) -> common_pb2.Tensor:
    """Pack an array-like (numpy or torch) as little-endian float32."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    return common_pb2.Tensor(shape=list(arr.shape), data=arr.tobytes())


def decode_tensor(tensor: common_pb2.Tensor, field: str = "tensor", ndim: int | None = None) -> np.ndarray:
    """Unpack a Tensor, raising ValueError naming `field` when shape and data disagree."""
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{field}.shape has a negative dimension: {list(shape)}")
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{field}.shape must have {ndim} dimensions, got {list(shape)}")
    expected = 4 * int(np.prod(shape)) if shape else 0
    if len(tensor.data) != expected:
        raise ValueError(f"{field}.data has {len(tensor.data)} bytes, shape {list(shape)} needs {expected}")
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape).copy()
