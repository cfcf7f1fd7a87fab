"""The memory-bandwidth bound on decode speed (issue 19): generating one token reads every weight the token
passes through once, and the KV cache at that length, so a decoder cannot generate faster than

    tokens/s <= memory bandwidth / (weight bytes read per token + KV bytes at that length)

whatever its kernels. `packager plan` prints it per precision from the profile's device.memory_bandwidth_gbs;
`packager bench` prints it beside the measured decode speed, for the device and, on the host, for the host's
own bandwidth (measured here: a copy of a large array), with the share of it the bundle achieved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.estimate import tensor_bytes

GB = 1e9   # bandwidths are in decimal GB/s, as datasheets give them
# Ops whose table input is looked up a row per token (an embedding), not read whole: such a table counts
# only when another op reads it too (a tied lm_head, as genai's builder shares the int4 table).
LOOKUPS = {"Gather", "GatherBlockQuantized"}
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}
# The host's copy: arrays far above any cache (best of a few, numpy's memcpy on one thread).
COPY_BYTES = 512 * 2**20
COPY_REPEATS = 3


@dataclass(frozen=True)
class Bound:
    """A decode-speed ceiling: `bandwidth_gbs` over the bytes one generated token reads."""

    bandwidth_gbs: float
    weight_bytes: int          # weights read once per token
    kv_bytes: int              # the KV cache read at the length the bound is for
    source: str                # where the bandwidth comes from

    @property
    def tokens_per_s(self) -> float:
        return decode_bound(self.bandwidth_gbs, self.weight_bytes, self.kv_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth_gbs": self.bandwidth_gbs, "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes,
                "tokens_per_s": self.tokens_per_s, "source": self.source}


def decode_bound(bandwidth_gbs: float, weight_bytes: int, kv_bytes: int) -> float:
    """Tokens/s a decoder cannot exceed: the bandwidth over the bytes a token reads (0: bandwidth unknown)."""
    return bandwidth_gbs * GB / max(1, weight_bytes + kv_bytes)


def kv_bytes_per_position(layers: int, kv_heads: int, head_dim: int, dtype_bytes: float) -> int:
    """Keys and values of every layer for one position."""
    return int(2 * layers * kv_heads * head_dim * dtype_bytes)


def kv_bytes_of(kv: dict[str, Any], element_bytes: int | None = None) -> int:
    """kv_bytes_per_position of a bundle's runtime record (io.kv: layers, heads, head_dim, dtype), its elements of
    `element_bytes` where the packaged graph says so."""
    return kv_bytes_per_position(int(kv["layers"]), int(kv["heads"]), int(kv["head_dim"]),
                                 element_bytes or DTYPE_BYTES.get(str(kv.get("dtype", "float32")), 4))


def weights_read_per_token(model: Path) -> int:
    """Bytes of the initializers of an ONNX model that a token reads whole (its external data included, not
    loaded): every weight but a table that is only looked up."""
    return model_reads(model)[0]


def model_reads(model: Path) -> tuple[int, int | None]:
    """weights_read_per_token, and the bytes of one element of the model's KV cache as its graph declares it
    (past_key_values.0.key; None where it has none): what a token reads. runtime.io says the same of a bundle made
    now; genai bundles made before it described the builder's graph recorded the fp32 export's cache there."""
    import onnx
    from onnx import helper


    graph = onnx.load(str(model), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    weights = sum(tensor_bytes(t) for t in graph.initializer if consumers.get(t.name, set()) - LOOKUPS)
    kv = next((i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values.")), None)
    return weights, None if kv is None else helper.tensor_dtype_to_np_dtype(kv).itemsize


def host_bandwidth_gbs(size: int = COPY_BYTES, repeats: int = COPY_REPEATS) -> float:
    """This host's memory bandwidth: the best of `repeats` copies of a `size`-byte array, counting what a copy
    moves (read and written: STREAM's convention for its Copy kernel). Timed in the thread's CPU time: on a host
    shared with other jobs the copy is preempted, and wall time would measure the queue, not the memory."""
    import numpy as np

    src = np.ones(size, dtype=np.uint8)   # written: pages that are only mapped would copy from the zero page
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        np.copyto(dst, src)
        best = min(best, time.thread_time() - start)
    return 2 * size / max(best, 1e-9) / GB
