"""Decoder LLMs: a prompt in, tokens generated one at a time with the KV cache. Judged on what they generate:
the packaged model must predict the fp32 reference's greedy continuation of each prompt."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from packager import decoder_config
from packager.errors import ExitCode, PackagerError
from packager.families.base import Export, Family, eos_token_ids, max_length, step

if TYPE_CHECKING:
    from packager.context_view import FamilyContext
    from packager.records import Io


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
    tasks: ClassVar[tuple[str, ...]] = ("text-generation-with-past",)

    def claims(self, export: Export) -> bool:
        inputs, outputs = export.signature
        input_names = {i["name"] for i in inputs}
        return export.has_tokenizer and "input_ids" in input_names and "logits" in {o["name"] for o in outputs} \
            and any(n.startswith("past_key_values.") for n in input_names)

    def describe_io(self, export: Export) -> dict[str, Any]:
        """Its KV cache layout too, for the device's generation loop."""
        inputs, outputs = export.signature
        past = [i for i in inputs if i["name"].startswith("past_key_values.")]
        positions, heads_axis = decoder_config.past_axes(past[0]["shape"])
        heads, head_dim = past[0]["shape"][heads_axis], past[0]["shape"][3]
        if not isinstance(head_dim, int):   # onnxruntime-genai's builder leaves it open (kv_cache_dim): the config's
            head_dim = first_head_dim(export.source)
        logits = next(o for o in outputs if o["name"] == "logits")
        # A graph that gives the last position's logits only (the E-class exporter's): the loop scores a token at
        # a time. Others' io stays as it was (their manifests, byte for byte).
        last = {"logits": "last"} if logits["shape"][1:2] == [1] else {}
        # Pasts whose length axis is the exporter's "window" (E-class sliding layers) hold the last window - 1
        # positions only: the estimate sizes them by the config's window, as plan does.
        windowed = any(i["shape"][positions] == decoder_config.WINDOW_AXIS for i in past)
        window = {"window": sliding_window(export.source)} if windowed else {}
        # positions first (the E-class exporter's): the presents are the new tokens', which the loop appends
        appends = {"appends": True} if positions == 1 else {}
        # a multimodal checkpoint's E-class graph takes the encoders' soft tokens (decoder_config.SOFT_INPUTS): the
        # loop needs their width and the pad token it puts at their positions, which the exporter recorded
        soft = {"soft": soft_io(export)} if decoder_config.SOFT_INPUTS[0] in {i["name"] for i in inputs} else {}
        return {
            **self.describe_source(export.source),
            "inputs": inputs,
            "outputs": outputs,
            "kv": {"layers": len(past) // 2, "heads": heads, "head_dim": head_dim, "dtype": past[0]["dtype"],
                   **window, **appends},
            **last,
            **soft,
        }

    def describe_source(self, source: Path) -> dict[str, Any]:
        """What the io says of the model before any graph of it exists, from its source folder: a runtime that builds
        the model itself (onnxruntime-genai) describes its graph once built (describe_io), and the stages before the
        build read only these (the kind, the context, the end-of-sequence ids)."""
        return {
            "kind": self.name,
            "inputs": [],
            "outputs": [],
            "checked_outputs": ["logits"],
            "primary_outputs": ["logits"],
            "tokenizer": "model/tokenizer.json",
            "max_length": max_length(source),
            "eos_token_ids": eos_token_ids(source),
        }

    def make_samples(self, ctx: FamilyContext, rt: ModuleType) -> None:
        """The first generation step's inputs of each of the family's prompts (prompt ids, empty KV cache)."""
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io.to_dict())
        decoder = rt.Decoder(None, ctx.io.to_dict())
        ctx.texts = self.texts()
        ctx.sample_inputs = [decoder.feeds(tokenizer.encode(t).ids, decoder.empty_past(), 0) for t in ctx.texts]

    def verify(self, ctx: FamilyContext, rt: ModuleType, reference: Any, packaged: Any) -> None:
        step("packager.families.verification:verify_decoder")(ctx, rt, reference, packaged)

    def run_arguments(self, io: Io, samples: str) -> str:
        return '--prompt "Once upon a time" --max-new-tokens 32'

    def sample_note(self, texts: list[str]) -> str:
        return f"the prompt {json.dumps(texts[0])} as token ids, with an empty KV cache"


def soft_io(export: Export) -> dict[str, Any]:
    """io.soft of an export whose graph takes soft tokens: the exporter's record of them (packager/eclass.py)."""
    found: dict[str, Any] | None = step("packager.eclass:soft_description")(export.folder / "model.onnx")
    if found is None:
        raise PackagerError(f"{export.folder / 'model.onnx'} takes soft tokens and does not record their pad token "
                            "(packager.soft): export the model with packager", ExitCode.BAD_INPUT)
    return found


def first_head_dim(source: Path) -> int:
    """The first layer's head size in the source's config.json."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    return decoder_config.read(config, str(source / "config.json")).layers[0].head_dim


def sliding_window(source: Path) -> int:
    """The sliding layers' window (positions they attend to) in the source's config.json."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    return max(layer.window for layer in decoder_config.read(config, str(source / "config.json")).layers)
