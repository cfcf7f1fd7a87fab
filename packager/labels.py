"""The words users read for packager's internal names: execution providers as ONNX Runtime's own
documentation spells them, and the parts of a memory estimate. JSON keeps the internal names."""

from __future__ import annotations

# ONNX Runtime's provider ids, and the names its documentation uses for them in prose.
PROVIDER_NAMES = {
    "TensorrtExecutionProvider": "TensorRT",
    "CUDAExecutionProvider": "CUDA",
    "XnnpackExecutionProvider": "XNNPACK",
    "CPUExecutionProvider": "CPU",
    "NnapiExecutionProvider": "NNAPI",
    "CoreMLExecutionProvider": "CoreML",
    "QNNExecutionProvider": "QNN",
}

# The memory estimate's parts (packager/estimate.py's breakdown keys), in words a user knows.
MEMORY_LABELS = {
    "runtime_base": "runtime itself (Python, ONNX Runtime, runner)",
    "graph": "runtime's bookkeeping per operator",
    "tokenizer": "tokenizer",
    "weights_inline": "weights",
    "folded_constants": "constants computed at load",
    "weights_external": "weights (external data file)",
    "prepacked": "weights repacked for fast math",
    "load_transient": "extra copy while loading",
    "ort_format_buffer": "model.ort file read at load",
    "allocator_overhead": "memory allocator overhead",
    "activations": "runtime's working memory (activations)",
    "kv_cache": "KV cache",
    "gpu_context": "CUDA context (GPU)",
}


def provider_name(provider: str) -> str:
    """'TensorRT' for TensorrtExecutionProvider; an unknown id without its suffix."""
    return PROVIDER_NAMES.get(provider, provider.removesuffix("ExecutionProvider"))


def memory_label(key: str) -> str:
    """'KV cache' for kv_cache; an unknown part's key with spaces."""
    return MEMORY_LABELS.get(key, key.replace("_", " "))
