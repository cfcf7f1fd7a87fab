"""The one object handed from stage to stage.

Each stage reads what earlier stages left and fills in its own part. Everything a stage
writes goes under `work_dir` (a private temporary folder) until the bundle stage moves the
finished archive into the output folder in one rename.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.adapter import Adapter
from packager.cache import StageCache
from packager.options import InputSpec as InputSpec  # its home was here: `from packager.context import InputSpec`
from packager.options import PackageOptions
from packager.profiles import Profile
from packager.recipes.records import RecipeResult
from packager.records import Accuracy, Fit, Io, Memory


def silent(detail: str) -> None:
    """Context.progress when no stage is running, or no one is watching."""


@dataclass(frozen=True)
class Source:
    kind: str                      # "huggingface" | "onnx"
    path: Path                     # the folder, or the .onnx file
    name: str                      # bundle name: "minilm", "silero_vad"
    files: tuple[Path, ...]        # every input file that the hash covers
    sha256: str                    # hash over the files' names and contents
    task: str = ""                 # export task for Hugging Face folders
    architecture: str = ""
    pickled: bool = False          # weights only as pickles (--allow-pickle): loaded weights-only
    adapter: Adapter | None = None  # --adapter: a LoRA adapter merged into the weights before export
    merge_method: str = ""         # with an adapter: "peft" or "arithmetic" (packager/adapter.py)


@dataclass
class Component:
    """One graph of a multi-component model (an encoder-decoder's encoder, its decoder): what it was
    exported as, the recipe it gets and what it ships as. Single-graph models have none."""

    name: str                      # "encoder", "decoder": the key in io["components"] and --recipe NAME=R
    reference: Path                # its fp32 export
    recipe_name: str = ""          # its recipe (RECIPES)
    packaged: Path | None = None   # its model.onnx-like file in the bundle's model/ folder
    recipe: RecipeResult | None = None
    file: str = ""                 # what the runner loads, inside the bundle (model/x.onnx, or .ort on phones)
    parts: tuple[Path, ...] = ()   # a merged decoder's unmerged graphs (first step, cached steps), in the export


@dataclass
class Context:
    model_spec: str                # MODEL as the user gave it
    profile: Profile
    recipe_name: str
    work_dir: Path
    out_dir: Path
    options: PackageOptions = field(default_factory=PackageOptions)   # what the user asked (packager/options.py)
    # Filled from `options` when the Context is made; the stages change them: the source stage gives a
    # sample its own input shapes, export a decoder its default context, --fit auto halves that.
    input_spec: InputSpec = field(init=False)
    context: int | None = field(init=False)   # tokens of KV cache to plan for (decoders)
    recipe_explicit: bool = True   # False: the profile's default, which export picks by model kind
    enforce_budget: bool = True    # fit: a model over budget stops the pipeline (check reports instead)
    recipe_fallback: bool = False  # quantize: a recipe that cannot apply gives way to fp32, said so (check)
    stage_cache: StageCache | None = None   # where cached stages' outputs live (None: no cache)
    eval_file: Path | None = None  # --eval, resolved (sample:NAME is a built-in adapter's file): a gate in verify
    eval_cases: list[dict[str, Any]] = field(default_factory=list)   # eval_file's cases, read and checked
    eval_reference: dict[str, Any] | None = None   # the fp32 reference's eval results (once per run)
    member_dir: Path | None = None  # one model of several (packager/suite.py): its finished folder goes here
    cache: dict[str, str] = field(default_factory=dict)  # stage -> "hit", "miss", "corrupt" (rebuilt) or "off"
    cache_notes: list[str] = field(default_factory=list)  # what the cache (or the runtime) could not do, for the human
    # The running stage's progress, a short line for the human watching (the pipeline points it at
    # the reporter's step while a stage runs): "12/113 weights", "loading the weights".
    progress: Callable[[str], None] = field(default=silent, repr=False)

    # source
    source: Source | None = None

    # export
    reference_model: Path | None = None      # fp32 ONNX: what the packaged model is measured against
    tokenizer_files: list[Path] = field(default_factory=list)
    described_io: Io | None = None           # the manifest's runtime.io (read as ctx.io, once export has set it)
    # What reference_model reads: ctx.io, until a runtime that builds its own model (onnxruntime-genai) describes that
    reference_io: Io | None = None
    components: list[Component] = field(default_factory=list)   # multi-component models (io kind "seq2seq")
    # quantize
    packaged_model: Path | None = None
    recipe: RecipeResult | None = None
    keep_8bit: tuple[str, ...] = ()         # int4-mixed: the layers at 8 bits in this attempt
    mixed_search: dict[str, Any] = field(default_factory=dict)   # int4-mixed: sensitivity, tries, the choice
    # compat
    compatibility: dict[str, Any] = field(default_factory=dict)   # the packaged model against the pinned runtime
    # mobile (phone profiles): the ORT-format model the app loads, its checks and the usability verdict
    mobile: dict[str, Any] = field(default_factory=dict)
    # the packaged model's external data files of memory-mapped lookup tables (estimate.mapped_tables) -> their
    # tables' bytes: the mobile stage reads them for the runtime's conversion (packager/mobile.py loads_onnx)
    mapped_files: dict[str, int] = field(default_factory=dict)
    model_file: str = "model/model.onnx"     # what the device loads, inside the bundle (manifest runtime.model)
    # verify
    texts: list[str] = field(default_factory=list)
    sample_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    expected_outputs: list[dict[str, np.ndarray]] = field(default_factory=list)   # the fp32 reference's
    accuracy: Accuracy | None = None         # verify's figures against the fp32 reference
    # fit
    memory: Memory | None = None             # the verdict against the budget (None before the fit stage)
    fit: Fit | None = None   # --fit auto: recipes tried, the one chosen and why
    # bundle
    archive: Path | None = None
    bundle_files: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_spec = self.options.input_spec
        self.context = self.options.context

    @property
    def io(self) -> Io:
        """What the model reads and answers (the manifest's runtime.io): the export stage describes it."""
        assert self.described_io is not None, "the export stage describes the io"
        return self.described_io

    @io.setter
    def io(self, io: Io) -> None:
        self.described_io = io

    # The options the stages read as they are given (read-only: they live in `options`).
    @property
    def name(self) -> str | None:
        return self.options.name

    @property
    def measure(self) -> bool:
        return self.options.measure

    @property
    def sign_key(self) -> Path | None:
        return self.options.sign

    @property
    def allow_pickle(self) -> bool:
        return self.options.allow_pickle

    @property
    def calibration(self) -> Path | None:
        return self.options.calibration

    @property
    def adapter(self) -> str | None:
        return self.options.adapter

    @property
    def bundle_name(self) -> str:
        assert self.source is not None, "the source stage names the bundle"
        return f"{self.source.name}-{self.profile.name}"

    @property
    def stage_dir(self) -> Path:
        """The bundle folder as it is assembled, inside the work dir."""
        return self.work_dir / self.bundle_name
