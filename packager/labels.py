"""The words users read for packager's internal names: execution providers as ONNX Runtime's own
documentation spells them, and the parts of a memory estimate. JSON keeps the internal names."""

from __future__ import annotations

from typing import Any

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
    "table_rows": "lookup-table rows a pass reads (per-layer embeddings)",
    "gpu_context": "CUDA context (GPU)",
}


def provider_name(provider: str) -> str:
    """'TensorRT' for TensorrtExecutionProvider; an unknown id without its suffix."""
    return PROVIDER_NAMES.get(provider, provider.removesuffix("ExecutionProvider"))


def memory_label(key: str) -> str:
    """'KV cache' for kv_cache; an unknown part's key with spaces."""
    return MEMORY_LABELS.get(key, key.replace("_", " "))


# The float precisions packager/coverage.py names, and the recipes that keep float weights by design.
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16", "fp64")
FLOAT_RECIPES = ("fp32", "fp16")


def quantized_nothing(recipe: str, coverage: dict[str, Any] | None) -> bool:
    """Whether a quantizing recipe left every weight at float: it did nothing."""
    if not coverage or recipe in FLOAT_RECIPES or not coverage.get("bytes"):
        return False
    return all(p in FLOAT_PRECISIONS for p in coverage["bytes"])


def recipe_label(recipe: str, coverage: dict[str, Any] | None) -> str:
    """The recipe as the summary and the reports name it: what it did, not only what it was asked to do."""
    if not coverage or not coverage.get("bytes") or recipe in FLOAT_RECIPES:
        return recipe
    if quantized_nothing(recipe, coverage):
        return f"{next(iter(coverage['bytes']))} ({recipe} found nothing to quantize)"
    shares = ", ".join(f"{p} {coverage['share'][p]:.0%}" for p in coverage["bytes"])
    left = coverage.get("float_in") or {}
    kept = f"; {', '.join(sorted(left))} weights left float" if left else ""
    return f"{recipe} ({shares} of weight bytes{kept})"


def human_count(count: int) -> str:
    """1.2B, 22.7M, 124M: a parameter count as model cards write it (one decimal below 100 of the unit)."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size * 0.9995:   # 999.9M would read "1000M": 1B, as model cards write it
            x = count / size
            return (f"{x:.0f}" if x >= 99.95 else f"{x:.1f}".removesuffix(".0")) + unit
    return str(count)


def human_context(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)
