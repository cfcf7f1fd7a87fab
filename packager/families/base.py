"""What packager asks of a model family: the `Family` base class.

A family is what kind of model a bundle holds (a text encoder, a tensor model, a decoder LLM, an
encoder-decoder): which inputs it takes and how its samples are made, how verify judges it against the fp32
reference, which eval cases it takes, and what the device does with it. The stages ask the family of the
model's io (`packager.families.family_for(ctx.io.kind)`) and never test the kind's name; a new family is
a class here and an entry in FAMILIES (and its record in targets/runtime/families.py, for the device side).

The family's `name` is the manifest's `runtime.io.kind`, which the device side reads: it never changes for
a family once bundles carry it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from packager.decoder_config import text_keys
from packager.paths import targets_dir

if TYPE_CHECKING:
    from types import ModuleType

    from packager.context_view import FamilyContext
    from packager.profile_types import Accuracy
    from packager.records import Io


def step(entry: str) -> Callable[..., Any]:
    """The function a "module:function" entry names, imported when the step runs. A family's facts sit below
    the profiles, which ask them; its steps (samples, verification) sit above the Context they take: naming
    them keeps the families free of that cycle, as packager/recipes/registry.py names each recipe's code."""
    module, _, function = entry.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


@dataclass
class Export:
    """An fp32 export the families are asked to describe (the export stage's): where its source and its files
    are, and the task it was exported for."""

    source: Path                   # the source folder (or .onnx file): config.json, tokenizer_config.json ...
    task: str                      # the exporter's task ("" for an .onnx source)
    folder: Path                   # the export's files: model.onnx (or the components'), tokenizer.json ...

    @functools.cached_property
    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """model.onnx's inputs and outputs (packager/model_files.py, which loads onnx: read when asked)."""
        return self.signature_of("model.onnx")

    def signature_of(self, file: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        found: tuple[list[dict[str, Any]], list[dict[str, Any]]] = step("packager.model_files:signature")(
            self.folder / file)
        return found

    @property
    def has_tokenizer(self) -> bool:
        return (self.folder / "tokenizer.json").is_file()


def max_length(folder: Path) -> int:
    """The longest input the model takes, in tokens, from the source's configuration files (512 when none says)."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            # a multimodal config's text decoder: its text_config's positions
            value = int(text_keys(json.loads((folder / name).read_text(encoding="utf-8")))[key])
            if 0 < value < 1_000_000:
                return value
    return 512


def eos_token_ids(folder: Path) -> list[int]:
    """End-of-sequence ids from generation_config.json, else config.json (an int or a list)."""
    for name in ("generation_config.json", "config.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            value = json.loads((folder / name).read_text(encoding="utf-8"))["eos_token_id"]
            ids = value if isinstance(value, list) else [value]
            if ids and all(isinstance(i, int) for i in ids):
                return ids
    return []


class Family:
    """A model family: its facts as class attributes, its kind-specific steps as methods. The defaults are a
    tensor model's (inputs made from the signature, outputs compared by cosine)."""

    name: ClassVar[str]                      # the io kind in manifests: "text", "tensor", "decoder", "seq2seq"
    title: ClassVar[str]                     # how messages name a model of the family: "a text encoder"
    needs_tokenizer: ClassVar[bool] = False  # the export's tokenizer files ship; the device loads the tokenizer
    generates: ClassVar[bool] = False        # a decoder loop: the deployment's context, token-agreement gates
    # The decode step's memory grows with the context: --fit auto halves the context when no recipe fits, and
    # the profile's decoder_recipe / decoder_fit_recipes apply.
    context_sized: ClassVar[bool] = False
    has_components: ClassVar[bool] = False   # several graphs (encoder, decoder) loaded together
    calibrates: ClassVar[bool] = True        # int8-static can calibrate its activations' ranges
    calibrates_on_text: ClassVar[bool] = False  # ... on sentences through the tokenizer (else on tensors)
    files: ClassVar[str] = "tensor"          # targets/families/<files>/: its requirements and sample texts
    texts_file: ClassVar[str | None] = None  # its sample texts there (None: its samples are not text)
    # --eval: the eval-file kind the family takes ("encoder": anchor/positive, "decoder": prompt/expected) and
    # what to give instead; each case of an `eval_cases_alone` family scores on its own (not against the others).
    eval_cases: ClassVar[str | None] = None
    eval_fix: ClassVar[str] = "no --eval (a tensor model has no text to judge)"
    eval_cases_alone: ClassVar[bool] = False
    metric: ClassVar[str] = "cosine"         # the manifest's accuracy.metric
    # The export tasks (packager/stages/source.py TASKS) whose models are of this family whatever their graph: a
    # runtime that builds its own model from the source (onnxruntime-genai) is chosen before any export, by the task.
    tasks: ClassVar[tuple[str, ...]] = ()

    def claims(self, export: Export) -> bool:
        """Whether an export is of this family (packager.families.describe_io asks the most specific first); a
        tensor model is any graph."""
        return True

    def describe_source(self, source: Path) -> dict[str, Any]:
        """The io of a model of one of `tasks` from its source folder alone, before any graph of it exists."""
        raise NotImplementedError(f"{self.title} is described from its graph only")

    def describe_io(self, export: Export) -> dict[str, Any]:
        """The manifest's runtime.io of an export of this family: its kind, inputs and outputs, the outputs
        verify checks, and what the device needs to feed it. A tensor model's: its graph's signature."""
        inputs, outputs = export.signature
        names = [o["name"] for o in outputs]
        # Sentence-transformers exports carry the pooled, normalised embedding: that is the answer.
        primary = ["sentence_embedding"] if "sentence_embedding" in names else names
        return {"kind": self.name, "inputs": inputs, "outputs": outputs, "checked_outputs": primary,
                "primary_outputs": primary}

    def texts(self) -> list[str]:
        """The family's sample sentences or prompts (targets/families/<files>/<texts_file>)."""
        if self.texts_file is None:
            return []
        path = targets_dir() / "families" / self.files / self.texts_file
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def requirements_file(self) -> Path:
        """The family's extra pinned requirements (need not exist)."""
        return targets_dir() / "families" / self.files / "requirements.txt"

    def make_samples(self, ctx: FamilyContext, rt: ModuleType) -> None:
        """ctx.sample_inputs (and ctx.texts) for verify, fit and the smoke test; `rt` is targets/run.py. The
        samples stage saves them; a family that writes sample files of its own writes them into samples/."""
        model_inputs = step("packager.sample_inputs:model_inputs")
        assert ctx.reference_model is not None
        # The trial run of open sizes takes the session options the device will use (the layout transform and
        # the arena change what a graph accepts and how it fails), not the runtime's defaults.
        options = rt.session_options(dataclasses.asdict(ctx.profile.session), log_level=4)
        ctx.sample_inputs = model_inputs(ctx.reference_model, ctx.io.inputs, ctx.input_spec,
                                         budget_bytes=ctx.profile.budget.memory_bytes, session_options=options)

    def verify(self, ctx: FamilyContext, rt: ModuleType, reference: Any, packaged: Any) -> None:
        """The packaged model against the fp32 reference on the samples: ctx.accuracy and ctx.expected_outputs,
        exit 4 below the profile's thresholds (packager/families/verification.py)."""
        step("packager.families.verification:verify_outputs")(ctx, rt, reference, packaged)

    def smoke_limits(self, limits: Accuracy) -> dict[str, Any]:
        """The thresholds the device's smoke test holds the bundle to (the manifest's smoke section)."""
        if self.generates:
            return {"min_token_agreement": limits.min_token_agreement, "min_logits_cosine": limits.min_logits_cosine,
                    "expected": "fp32 reference greedy generations"}
        return {"min_cosine": limits.min_cosine, "expected": "fp32 reference outputs"}

    def run_arguments(self, io: Io, samples: str) -> str:
        """run.py's arguments for a first run of a model with this io (manifest runtime.io)."""
        return "--inputs feeds.npz --output out.npz"

    def sample_note(self, texts: list[str]) -> str:
        """What the phone app examples' first input is."""
        return "the smoke test's first input (large tensors as zeros)"
