"""Decoder LLMs: a prompt in, tokens generated one at a time with the KV cache. Judged on what they generate:
the packaged model must predict the fp32 reference's greedy continuation of each prompt."""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from packager.families.base import Family, step

if TYPE_CHECKING:
    from packager.context import Context


class DecoderLLM(Family):
    """A decoder-only LLM exported with its KV cache (text-generation-with-past)."""

    name: ClassVar[str] = "decoder"
    title: ClassVar[str] = "a decoder LLM"
    needs_tokenizer: ClassVar[bool] = True
    generates: ClassVar[bool] = True
    context_sized: ClassVar[bool] = True
    # Its KV cache inputs have no fixed range to calibrate.
    calibrates: ClassVar[bool] = False
    files: ClassVar[str] = "text"             # shares the text family's tokenizer pin
    texts_file: ClassVar[str | None] = "prompts.txt"
    eval_cases: ClassVar[str | None] = "decoder"
    eval_fix: ClassVar[str] = "prompt/expected cases"
    eval_cases_alone: ClassVar[bool] = True
    metric: ClassVar[str] = "token agreement"

    def make_samples(self, ctx: Context, rt: ModuleType) -> None:
        """The first generation step's inputs of each of the family's prompts (prompt ids, empty KV cache)."""
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io)
        decoder = rt.Decoder(None, ctx.io)
        ctx.texts = self.texts()
        ctx.sample_inputs = [decoder.feeds(tokenizer.encode(t).ids, decoder.empty_past(), 0) for t in ctx.texts]

    def verify(self, ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
        step("packager.families.verification:verify_decoder")(ctx, rt, reference, packaged)

    def run_arguments(self, io: dict[str, Any], samples: str) -> str:
        return '--prompt "Once upon a time" --max-new-tokens 32'

    def sample_note(self, texts: list[str]) -> str:
        return f"the prompt {json.dumps(texts[0])} as token ids, with an empty KV cache"
