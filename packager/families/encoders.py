"""The encoder families: text encoders (sentence embedders and the like: text in, tensors out) and tensor
models (any graph: tensors in, tensors out). Both are judged by the cosine of each output against the fp32
reference's."""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from packager.families.base import Export, Family, max_length

if TYPE_CHECKING:
    from packager.context_view import FamilyContext
    from packager.records import Io

# The inputs a tokenizer makes: a graph that takes only these (and ships a tokenizer) is a text encoder.
TOKENIZER_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


class TensorModel(Family):
    """Tensors in, tensors out: samples made from the signature (and --shape/--value)."""

    name: ClassVar[str] = "tensor"
    title: ClassVar[str] = "a tensor model"


class TextEncoder(Family):
    """Text in through the bundle's tokenizer (run.py's own code), tensors out."""

    name: ClassVar[str] = "text"
    title: ClassVar[str] = "a text encoder"
    needs_tokenizer: ClassVar[bool] = True
    calibrates_on_text: ClassVar[bool] = True
    files: ClassVar[str] = "text"
    texts_file: ClassVar[str | None] = "samples.txt"
    eval_cases: ClassVar[str | None] = "encoder"
    eval_fix: ClassVar[str] = "anchor/positive cases"

    def claims(self, export: Export) -> bool:
        return export.has_tokenizer and {i["name"] for i in export.signature[0]} <= TOKENIZER_INPUTS

    def describe_io(self, export: Export) -> dict[str, Any]:
        return super().describe_io(export) | {"tokenizer": "model/tokenizer.json",
                                              "max_length": max_length(export.source)}

    def make_samples(self, ctx: FamilyContext, rt: ModuleType) -> None:
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io.to_dict())
        names = [i["name"] for i in ctx.io.inputs]
        ctx.texts = self.texts()
        ctx.sample_inputs = [rt.encode(tokenizer, t, names) for t in ctx.texts]

    def run_arguments(self, io: Io, samples: str) -> str:
        return '"some sentence"'

    def sample_note(self, texts: list[str]) -> str:
        return f"{json.dumps(texts[0])} as the bundle's tokenizer encodes it"
