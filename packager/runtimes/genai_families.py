"""Which decoder families onnxruntime-genai's model builder makes, as packager packages them (issue 19, item 7).

One table, keyed by the Hugging Face architecture (config.json `architectures[0]`, what the builder dispatches
on: onnxruntime_genai/models/builder.py create_model). Each entry is covered by a tiny random model in
tests/test_genai_families.py, packaged for rpi5-genai and verified against PyTorch. Architectures the builder
0.18.0 lacks or cannot build are named in REFUSED with the reason, and refused in one sentence: they keep the
onnxruntime path (a profile such as rpi5) where optimum-onnx exports them.
"""

from __future__ import annotations

from packager.errors import ExitCode, PackagerError

# architecture -> the family's name in messages and docs/llms.md
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "Llama",
    "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3",
    "GemmaForCausalLM": "Gemma",
    "Gemma2ForCausalLM": "Gemma 2",
    "Gemma3ForCausalLM": "Gemma 3 (text)",
    "Phi3ForCausalLM": "Phi-3",
    "MistralForCausalLM": "Mistral",
    "GraniteForCausalLM": "Granite",
    "SmolLM3ForCausalLM": "SmolLM3",
}

# Measured with builder 0.18.0 on the tiny models of tests/tiny_decoders.py (Gemma 3 and SmolLM3 build with the
# fixes in genai_builder_fixes.py).
REFUSED: dict[str, str] = {
    "Olmo2ForCausalLM": "the builder has no OLMo 2 (only OLMo 1)",
    "GPT2LMHeadModel": "the builder has no GPT-2",
}


def genai_supports(architecture: str) -> bool:
    """Whether onnxruntime-genai's builder makes a model of this architecture (config.json architectures[0])."""
    return architecture in SUPPORTED


def check_family(architecture: str, profile_name: str) -> None:
    """Exit 5, in one sentence naming the supported families, for an architecture the builder does not make."""
    if genai_supports(architecture):
        return
    why = f" ({REFUSED[architecture]})" if architecture in REFUSED else ""
    raise PackagerError(f"{profile_name} (onnxruntime-genai) cannot build {architecture}{why}; it builds "
                        f"{', '.join(SUPPORTED.values())}: package this model for a target on the onnxruntime "
                        "runtime (such as rpi5).", ExitCode.BAD_INPUT)
