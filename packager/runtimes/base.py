"""What packager asks of a device runtime: the `Runtime` protocol and the records it answers with.

A runtime is the library that loads and runs the bundle's model on the device (ONNX Runtime today). Every
decision that depends on it goes through this protocol, so the stages never test a package or a provider
name: they ask the profile's runtime (packager.runtimes.runtime_for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from packager.decoder_config import prefill_chunk

if TYPE_CHECKING:
    from packager.compat import Compatibility, ModelFacts
    from packager.context_view import RuntimeContext
    from packager.profile_types import Profile
    from packager.records import Memory


@dataclass(frozen=True)
class MemoryShare:
    """The runtime's own part of a model's peak resident memory on a target (packager/estimate.py adds the
    model's: weights, packed copies, activations, KV cache)."""

    base_bytes: int                # resident before any model: interpreter, runtime, an empty session, its threads
    shared_bytes: int              # of that (and the GPU context), what models in one process hold only once
    node_bytes: int = 0            # per graph node: kernels, node and arena bookkeeping
    conv_node_bytes: int = 0       # per convolution node, beyond node_bytes and its weight: the kernel's own state
    token_bytes: int = 0           # the tokenizer library, per token of tokenizer.json
    merge_bytes: int = 0           # and per merge
    gpu_context_bytes: int = 0     # resident from load on, beside the model (GPU providers' context)
    # A converted file the device loads instead of the .onnx (phones: model.ort), read whole and held while the
    # session is created: a fraction of the file's bytes (low, high), and the estimate's name for it. (0, 0): the
    # runtime converts nothing for this profile.
    converted_buffer: tuple[float, float] = (0.0, 0.0)
    converted_buffer_name: str = "converted_buffer"
    # A second run at the same input shapes allocates the session's memory pattern (one block, planned from the
    # first run) while the arena keeps the chunks the first run grew: this fraction of the activations more
    # (low, high). (0, 0): the profile's session plans no pattern, or has no arena to keep the first run's chunks.
    repeat_activations: tuple[float, float] = (0.0, 0.0)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecoderMemory:
    """How the runtime holds a decoder LLM at a context, for `packager plan` (packager/plan.py applies the numbers;
    the model's own facts, its layers and parameters, come from its config)."""

    kv_bits: int                     # the KV cache's element size
    windowed_kv: bool                # sliding-window layers hold min(context, window) positions, not the context
    kv_copies: tuple[float, float]   # copies of the cache a step holds (low, high); (1, 1): past and present share
    prefill_tokens: int              # prompt tokens per pass (the runtime's chunk)
    logits_positions: int            # positions of a pass whose logits are allocated (0: every one of them)
    runnable_kv_bits: tuple[int, ...]   # the KV element sizes the runtime can run (others: planning only)
    # the chunk shrinks at a longer context (decoder_config.prefill_chunk: run.py's loop on an exported graph)
    chunk_by_context: bool = False
    score_heads: int = 0             # attention heads whose scores a pass holds at once (0: all the model's heads)
    score_copies: float = 1.0        # buffers of one layer's scores a pass holds at once (scores, masked, softmax)
    # The load peak as a fraction of the resident weights' bytes, beyond the runtime base (low, high); (0, 0): plan's
    # per-tensor model of an exported graph (the embedding's proto copy, prepacked MatMuls, an ORT-format buffer).
    load_weights: tuple[float, float] = (0.0, 0.0)
    run_weights: tuple[float, float] = (0.0, 0.0)   # resident once loaded, the same way; (0, 0): plan's model
    # The copies at each KV element size the runtime runs, where they differ from kv_copies (plan --kv-bits).
    kv_copies_by_bits: dict[int, tuple[float, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def measured_weights(self) -> bool:
        """The runtime gives its load peak and resident weights as fractions of the weights (packager/decoder_peak.py);
        otherwise plan models an exported graph per tensor, as the graph estimate does."""
        return self.load_weights != (0.0, 0.0)

    def chunk(self, context: int) -> int:
        """The prompt tokens of the largest pass at `context`."""
        return min(context, prefill_chunk(context) if self.chunk_by_context else self.prefill_tokens)

    def copies(self, kv_bits: int) -> tuple[float, float]:
        """The copies of a cache of `kv_bits` a step holds (low, high)."""
        return self.kv_copies_by_bits.get(kv_bits, self.kv_copies)


class Runtime(Protocol):
    """A device runtime. One instance per runtime, registered in packager.runtimes.RUNTIMES by `name`, the
    value of a profile's [runtime] name."""

    name: str
    # Whether its own builder makes the packaged model from the source (onnxruntime-genai), so that a bundle of it is
    # judged as it was built (packager/bundle_check.py), not packaged again from its graph.
    builds_model: bool

    def check_profile(self, profile: Profile, where: str) -> None:
        """Raise PackagerError (exit 6, naming `where` and the key) for a profile value this runtime cannot take."""
        ...

    def takes(self, architecture: str) -> bool:
        """Whether this runtime packages a model of this Hugging Face architecture ("" for an .onnx file)."""
        ...

    def check_source(self, profile: Profile, architecture: str) -> None:
        """Raise PackagerError (exit 5, one sentence) for a model this runtime cannot package, known from its source
        alone (its architecture, "" for an .onnx file): refused before the export, which takes seconds to minutes."""
        ...

    def requirements(self, profile: Profile) -> list[str]:
        """The runtime's lines of the bundle's requirements.txt: an extra index, the runtime pin, numpy's."""
        ...

    def check_model(self, path: Path, profile: Profile, what: str) -> tuple[Compatibility, dict[str, Any]]:
        """The packaged model at `path` against the pinned runtime (fixing what needs no change to the graph,
        such as a newer IR stamp, in place): the verdict, and the manifest's compatibility record."""
        ...

    def check_facts(self, facts: ModelFacts, profile: Profile) -> Compatibility:
        """The same verdict from a model's facts alone (`packager inspect`); never raises for a model."""
        ...

    def memory(self, profile: Profile, kind: str) -> MemoryShare:
        """The runtime's part of the memory estimate for a model of io kind `kind` on this profile."""
        ...

    def decoder_memory(self, profile: Profile, precision: str) -> DecoderMemory:
        """How this runtime holds a decoder LLM packaged at `precision` on this profile (packager plan)."""
        ...

    def smaller_kv_cache(self, profile: Profile) -> tuple[Profile, str] | None:
        """--fit auto's lever between the recipes and the context for a decoder: the profile with the smallest KV cache
        this runtime runs, and that cache's name for the record ("int8"); None where it offers none smaller."""
        ...

    def with_kv_bits(self, profile: Profile, bits: int) -> Profile | None:
        """The profile with a decoder's KV cache of `bits`-bit elements (package and check --kv-bits): a USAGE error
        naming the sizes it runs where it runs others; None where this runtime's cache has no such setting."""
        ...

    def unmeasured_bytes(self, profile: Profile, measured: dict[str, Any] | None) -> int:
        """What a measurement on the build host (run.py --measure's record) could not see that the device holds."""
        ...

    def build(self, ctx: RuntimeContext, model_dir: Path) -> bool:
        """Make the packaged model into `model_dir` from the source itself (onnxruntime-genai: its model builder),
        setting ctx.packaged_model and ctx.recipe; False: the recipe quantizes the fp32 export instead."""
        ...

    def host_python(self, profile: Profile) -> str:
        """The interpreter that runs the bundle's device code on the build host (the fit stage's measurement)."""
        ...

    def host_runner(self, ctx: RuntimeContext) -> Any:
        """The packaged model as run.py loads it, on this host's CPU (verify's packaged side)."""
        ...

    def host_reference(self, ctx: RuntimeContext) -> Any:
        """verify's reference side: an onnxruntime session of the fp32 export (ctx.reference_model), or a decoder
        (generate, score, and `label`, what the accuracy record names) that runs the original model itself."""
        ...

    def convert(self, ctx: RuntimeContext) -> None:
        """Conversions the device loads instead of the packaged .onnx (phones: model.ort): write them into the
        staged bundle, set ctx.model_file (and each component's file) to them, record them in ctx.mobile."""
        ...

    def session_spec(self, profile: Profile, memory: Memory | None) -> dict[str, Any]:
        """The manifest's runtime section but the model and io: what the device code needs to make the session."""
        ...

    def device_files(self, profile: Profile) -> dict[str, Path]:
        """The device-side code that loads and runs the model, copied into every bundle (and the staged folder
        the fit stage measures): each file's path in the bundle -> its source."""
        ...

    def write_bundle_files(self, ctx: RuntimeContext, stage: Path) -> None:
        """The runtime's own files in the finished bundle (phones: app examples) and its records in ctx."""
        ...

    def readme(self, ctx: RuntimeContext) -> str:
        """The bundle README's sections about this runtime on the device ("" for none)."""
        ...
