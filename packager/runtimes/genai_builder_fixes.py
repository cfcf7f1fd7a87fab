"""onnxruntime-genai 0.18.0's model builder, with two of its bugs fixed (run in the `genai` exporter environment as
`python -m genai_builder_fixes ARGS`, a copy of this file beside it: packager is not installed there).

- Gemma 3 (text): transformers 5.x gives Gemma3TextConfig a rope_parameters per layer type ({"full_attention":
  {...}, "sliding_attention": {...}}), which the builder reads as one flat dict (KeyError: 'rope_type', on
  Gemma-3-1B's published config too). The global layers' parameters become the flat ones, the sliding layers'
  theta the rope_local_base_freq the builder reads for them (as its Gemma 4 code does).
- SmolLM3: its no-RoPE layers (every fourth) turn the fused rotary off and then ask for a separate rotary on
  position_ids, an input the graph no longer has (KeyError: 'position_ids'). They get no rotary at all.

Verify judges the result against the model in PyTorch, so a wrong fix fails the gate rather than shipping.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import onnxruntime_genai.models  # type: ignore[import-not-found]

# builder.py imports its model classes as the top-level package `builders` (its own folder on sys.path), a second
# copy of onnxruntime_genai.models.builders: the one to patch.
sys.path.insert(0, str(Path(onnxruntime_genai.models.__file__).parent))
from builders import gemma, smollm  # type: ignore[import-not-found]  # noqa: E402


def _flat_rope(config: Any) -> None:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_theta = rope["full_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])


def _patch_gemma3() -> None:
    init = gemma.Gemma3Model.__init__

    def fixed(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        _flat_rope(config)
        init(self, config, *args, **kwargs)

    gemma.Gemma3Model.__init__ = fixed


def _patch_smollm3() -> None:
    make_attention = smollm.SmolLM3Model.make_attention

    def fixed(self: Any, layer_id: int, attention: Any, root_input: Any, **kwargs: Any) -> None:
        if self.no_rope_layers[layer_id]:
            make_attention(self, layer_id, attention, root_input, **kwargs)
            return
        saved = self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"], self.window_size
        self.attention_attrs["rope"] = self.attention_attrs["use_rope_in_attn"] = False
        if self.layer_types[layer_id] == "full_attention":
            self.window_size = -1
        try:   # the base make_attention, past SmolLM3's own (which would turn the rotary back on its way)
            super(smollm.SmolLM3Model, self).make_attention(layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"], self.window_size = saved

    smollm.SmolLM3Model.make_attention = fixed


if __name__ == "__main__":
    _patch_gemma3()
    _patch_smollm3()
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
