"""What packager asks of a model family: the `Family` base class.

A family is what kind of model a bundle holds (a text encoder, a tensor model, a decoder LLM, an
encoder-decoder): which inputs it takes and how its samples are made, how verify judges it against the fp32
reference, which eval cases it takes, and what the device does with it. The stages ask the family of the
model's io (`packager.families.family_for(ctx.io["kind"])`) and never test the kind's name; a new family is
a class here and an entry in FAMILIES (and its record in targets/runtime/families.py, for the device side).

The family's `name` is the manifest's `runtime.io.kind`, which the device side reads: it never changes for
a family once bundles carry it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from packager.paths import targets_dir

if TYPE_CHECKING:
    from types import ModuleType

    from packager.context import Context
    from packager.profile_types import Accuracy


def step(entry: str) -> Callable[..., Any]:
    """The function a "module:function" entry names, imported when the step runs. A family's facts sit below
    the profiles, which ask them; its steps (samples, verification) sit above the Context they take: naming
    them keeps the families free of that cycle, as packager/recipes/registry.py names each recipe's code."""
    module, _, function = entry.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


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

    def texts(self) -> list[str]:
        """The family's sample sentences or prompts (targets/families/<files>/<texts_file>)."""
        if self.texts_file is None:
            return []
        path = targets_dir() / "families" / self.files / self.texts_file
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def requirements_file(self) -> Path:
        """The family's extra pinned requirements (need not exist)."""
        return targets_dir() / "families" / self.files / "requirements.txt"

    def make_samples(self, ctx: Context, rt: ModuleType) -> None:
        """ctx.sample_inputs (and ctx.texts) for verify, fit and the smoke test; `rt` is targets/run.py. The
        samples stage saves them; a family that writes sample files of its own writes them into samples/."""
        model_inputs = step("packager.sample_inputs:model_inputs")
        assert ctx.reference_model is not None
        ctx.sample_inputs = model_inputs(ctx.reference_model, ctx.io["inputs"], ctx.input_spec,
                                         budget_bytes=ctx.profile.budget.memory_bytes)

    def verify(self, ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
        """The packaged model against the fp32 reference on the samples: ctx.accuracy and ctx.expected_outputs,
        exit 4 below the profile's thresholds (packager/families/verification.py)."""
        step("packager.families.verification:verify_outputs")(ctx, rt, reference, packaged)

    def smoke_limits(self, limits: Accuracy) -> dict[str, Any]:
        """The thresholds the device's smoke test holds the bundle to (the manifest's smoke section)."""
        if self.generates:
            return {"min_token_agreement": limits.min_token_agreement, "min_logits_cosine": limits.min_logits_cosine,
                    "expected": "fp32 reference greedy generations"}
        return {"min_cosine": limits.min_cosine, "expected": "fp32 reference outputs"}

    def run_arguments(self, io: dict[str, Any], samples: str) -> str:
        """run.py's arguments for a first run of a model with this io (manifest runtime.io)."""
        return "--inputs feeds.npz --output out.npz"

    def sample_note(self, texts: list[str]) -> str:
        """What the phone app examples' first input is."""
        return "the smoke test's first input (large tensors as zeros)"
