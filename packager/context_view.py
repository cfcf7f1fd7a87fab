"""What the families and the runtimes see of the run's Context: Protocols of only the fields they use.

The families and runtimes sit below the Context (the profiles ask them; packager/context.py holds a Profile):
naming `packager.context.Context`, even for a type checker alone, would close a cycle through the profiles.
packager.context.Context answers these Protocols as it is; mypy checks that where the stages hand it over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from packager.profile_types import Profile
    from packager.recipes.records import RecipeResult
    from packager.records import Io, Memory


class SourceView(Protocol):
    """The model's source (packager.context.Source)."""

    @property
    def kind(self) -> str: ...            # "huggingface" | "onnx"

    @property
    def adapter(self) -> object | None: ...   # a LoRA adapter merged before the export

    @property
    def architecture(self) -> str: ...    # config.json's architectures[0] ("" for an .onnx file)


class ComponentView(Protocol):
    """One graph of a multi-component model (packager.context.Component)."""

    name: str
    recipe_name: str
    packaged: Path | None
    file: str


class FamilyContext(Protocol):
    """What a family's steps read and fill in: the io, the samples and the sentences behind them."""

    io: Io
    texts: list[str]
    reference_model: Path | None
    sample_inputs: list[dict[str, np.ndarray]]

    @property
    def profile(self) -> Profile: ...

    @property
    def input_spec(self) -> object: ...   # packager.options.InputSpec, handed on to sample_inputs.make_inputs

    @property
    def stage_dir(self) -> Path: ...


class RuntimeContext(FamilyContext, Protocol):
    """What a runtime's steps read and fill in: the packaged model, the file the device loads, the memory
    verdict and the phone records."""

    work_dir: Path
    recipe_name: str
    packaged_model: Path | None
    recipe: RecipeResult | None
    model_file: str
    mobile: dict[str, Any]
    mapped_files: dict[str, int]   # files of memory-mapped lookup tables -> bytes (set before the conversion)
    context: int | None   # decoders: tokens of KV cache (the phone examples of a genai bundle size theirs to it)
    memory: Memory | None
    eval_cases: list[dict[str, Any]]

    @property
    def source(self) -> SourceView | None: ...

    @property
    def components(self) -> Sequence[ComponentView]: ...

    @property
    def bundle_name(self) -> str: ...
