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
from packager.profiles import Profile
from packager.recipes.common import RecipeResult


def silent(detail: str) -> None:
    """Context.progress when no stage is running, or no one is watching."""


@dataclass(frozen=True)
class InputSpec:
    """How to make sample inputs for a tensor model whose signature leaves them open."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)   # --shape NAME=D1,D2
    values: dict[str, float] = field(default_factory=dict)             # --value NAME=V (fills the tensor)
    count: int = 4                                                     # how many samples


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
    input_spec: InputSpec = field(default_factory=InputSpec)
    name: str | None = None        # --name: overrides the bundle name taken from the model
    context: int | None = None     # tokens of KV cache to plan for (decoders; export fills in the default)
    recipe_explicit: bool = True   # False: the profile's default, which export picks by model kind
    measure: bool = True           # fit: measure in a child process, not only estimate
    enforce_budget: bool = True    # fit: a model over budget stops the pipeline (check reports instead)
    sign_key: Path | None = None   # --sign: Ed25519 private key that signs the bundle's manifest
    allow_pickle: bool = False     # --allow-pickle: accept pickled weights, loaded weights-only
    calibration: Path | None = None  # --calibration: inputs for the int8-static recipe
    stage_cache: StageCache | None = None   # where cached stages' outputs live (None: no cache)
    adapter: str | None = None     # --adapter: a PEFT LoRA adapter folder (or sample:NAME) to merge first
    eval_file: Path | None = None  # --eval: the user's cases (JSONL), a gate in verify
    eval_cases: list[dict[str, Any]] = field(default_factory=list)   # eval_file's cases, read and checked
    eval_reference: dict[str, Any] | None = None   # the fp32 reference's eval results (once per run)
    member_dir: Path | None = None  # one model of several (packager/suite.py): its finished folder goes here
    cache: dict[str, str] = field(default_factory=dict)  # stage -> "hit", "miss", "corrupt" (rebuilt) or "off"
    cache_notes: list[str] = field(default_factory=list)  # what the cache could not do, for the human watching
    # The running stage's progress, a short line for the human watching (the pipeline points it at
    # the reporter's step while a stage runs): "12/113 weights", "loading the weights".
    progress: Callable[[str], None] = field(default=silent, repr=False)

    # source
    source: Source | None = None

    # export
    reference_model: Path | None = None      # fp32 ONNX: what the packaged model is measured against
    tokenizer_files: list[Path] = field(default_factory=list)
    io: dict[str, Any] = field(default_factory=dict)   # manifest runtime.io: kind, outputs checked ...
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
    model_file: str = "model/model.onnx"     # what the device loads, inside the bundle (manifest runtime.model)
    # verify
    texts: list[str] = field(default_factory=list)
    sample_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    expected_outputs: list[dict[str, np.ndarray]] = field(default_factory=list)   # the fp32 reference's
    accuracy: dict[str, Any] = field(default_factory=dict)
    # fit
    memory: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # --fit auto: recipes tried, the one chosen and why
    # bundle
    archive: Path | None = None
    bundle_files: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bundle_name(self) -> str:
        assert self.source is not None, "the source stage names the bundle"
        return f"{self.source.name}-{self.profile.name}"

    @property
    def stage_dir(self) -> Path:
        """The bundle folder as it is assembled, inside the work dir."""
        return self.work_dir / self.bundle_name
