"""The build's typed records: the model's io, memory (the fit verdict and its estimate), accuracy (verify's figures)
and --fit auto's search.

Each serializes to the JSON that schemas/manifest.schema.json (`$defs`: memory, accuracy, fit_auto) and
schemas/report.schema.json describe, and reads it back checked. Reading and writing go through the
device's own typed reader (targets/runtime/manifest.py `read_record`, `record_dict`), loaded as the host
loads all device code (packager/device_code.py): one reader of the manifest, not two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from packager.device_code import runner
from packager.errors import ExitCode, PackagerError


def read(cls: type[Any], data: Any, where: str) -> Any:
    """`cls` from the JSON `data` (at `where`, e.g. "memory"); a PackagerError (exit 5) naming the key
    when it is not of the shape packager writes."""
    rt = runner()
    try:
        return rt.read_record(cls, data, where)
    except rt.ManifestError as e:
        raise PackagerError(str(e), ExitCode.BAD_INPUT) from None


def to_json(record: Any) -> dict[str, Any]:
    result: dict[str, Any] = runner().record_dict(record)
    return result


class JsonRecord:
    """from_dict and to_dict of a record below: its JSON read back checked, a bad key named by its path from WHERE
    (the record's place in the manifest)."""

    WHERE: ClassVar[str]

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Self:
        result: Self = read(cls, data, where or cls.WHERE)
        return result

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class Estimate:
    """The static estimate of a model's peak resident memory on a target (packager/estimate.py makes it)."""

    low_bytes: int
    high_bytes: int
    breakdown: dict[str, int]              # component -> bytes (the expected figure)
    load_high_bytes: int
    run_high_bytes: int
    context: int | None = None
    notes: list[str] = field(default_factory=list)
    run_low_bytes: int = 0
    mapped_bytes: int = 0                  # mapped tables' whole size (an E-class model's PLE): not in the peak
    # A multimodal decoder's encoders, each loaded on demand: its mode's estimate ({"image": {"low_bytes",
    # "high_bytes", "encoder_high_bytes"}}: the decoder's weights and cache held, that encoder loaded and run once);
    # the figures above are the text mode's
    modes: dict[str, dict[str, int]] = field(default_factory=dict)

    def worst_high_bytes(self) -> int:
        """The high side of the worst mode: the text mode's, or an encoder's."""
        return max([self.high_bytes, *(m["high_bytes"] for m in self.modes.values())])

    def to_dict(self) -> dict[str, Any]:
        return {"low_bytes": self.low_bytes, "high_bytes": self.high_bytes, "breakdown": self.breakdown,
                "load_high_bytes": self.load_high_bytes, "run_high_bytes": self.run_high_bytes,
                "run_low_bytes": self.run_low_bytes, "context": self.context, "notes": self.notes,
                **({"mapped_bytes": self.mapped_bytes} if self.mapped_bytes else {}),
                **({"modes": self.modes} if self.modes else {})}


@dataclass(frozen=True)
class Memory(JsonRecord):
    """The fit stage's verdict (ctx.memory): the budget, the estimate, the measured peaks (this run's) and
    whether the model fits. Fields in the order `package --json` has always printed them."""

    WHERE = "memory"

    budget_bytes: int
    context: int | None            # decoders: tokens of KV cache judged; None for other models
    estimate: Estimate
    verdict_basis: str             # "measured" | "estimate (high)"
    fits: bool
    headroom_bytes: int | None = None
    measured_peak_bytes: int | None = None
    load_peak_bytes: int | None = None
    run_peak_bytes: int | None = None
    baseline_bytes: int | None = None
    method: str | None = None
    measured_on: str | None = None
    gpu_context_bytes: int | None = None
    components: dict[str, dict[str, Any]] | None = None
    tensorrt_workspace: dict[str, Any] | None = None
    # A multimodal decoder's encoders loaded on demand: each mode's measured peak ({"image": {"peak_bytes"}}), the
    # decoder's cache at the context held; measured_peak_bytes is the worst of the text run and these
    modes: dict[str, dict[str, Any]] | None = None
    # ... and their files, loaded on demand (not resident with the decoder): {"image": {"file", "size_bytes"}}
    on_demand: dict[str, dict[str, Any]] | None = None
    measured: str | None = None    # a bundle's manifest: the measured figures are not in it (manifest.py)
    more: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Io(JsonRecord):
    """runtime.io (ctx.io): what the model reads and answers, and how its family feeds it; the families describe
    it from the export (packager/families/, describe_io). The device reads the same JSON with its own record,
    targets/runtime/manifest.py `Io` (it cannot import packager): tests/test_records.py holds the two to the same
    fields, in the same order. The inputs, outputs and components stay JSON objects: the device code the host
    runs (rt.Decoder, rt.load_tokenizer ...) takes the whole as `to_dict()` gives it."""

    WHERE = "runtime.io"

    kind: str                      # the family's name (packager.families.family_for)
    inputs: list[dict[str, Any]]   # {"name", "dtype", "shape"}
    outputs: list[dict[str, Any]]
    checked_outputs: list[str]
    primary_outputs: list[str]
    tokenizer: str | None = None
    max_length: int | None = None
    eos_token_ids: list[int] | None = None
    kv: dict[str, Any] | None = None
    modality: str | None = None
    components: dict[str, Any] | None = None
    decoder_start_ids: list[int] | None = None
    preprocess: dict[str, Any] | None = None
    logits: str | None = None      # "last": the last position's only (decoders, the E-class exporter)
    soft: dict[str, Any] | None = None   # decoders taking soft tokens: {"inputs", "hidden", "pad_token_id"}


@dataclass(frozen=True)
class Accuracy(JsonRecord):
    """verify's figures against the fp32 reference (ctx.accuracy): the metric and threshold, then the
    comparison's own figures (cosine per output, or token agreement per prompt) as it gave them."""

    WHERE = "accuracy"

    metric: str                    # "cosine" | "token agreement"
    reference: str
    samples: int
    generated_tokens: int | None = field(default=None, kw_only=True)   # decoders
    threshold: float | dict[str, float]   # a decoder's: {"token_agreement", "logits_cosine"}
    more: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fit(JsonRecord):
    """--fit auto (ctx.fit): the recipes tried and what each gave, the one chosen and why. Filled in as
    the search goes (packager/fit_auto.py), hence not frozen."""

    WHERE = "recipe.fit"

    mode: str = "auto"   # "default": the profile's default recipe, rejected by verify, and its fallback
    tried: list[dict[str, Any]] = field(default_factory=list)   # {"recipe", "outcome"[, "context", "kv_cache"]}
    predicted_peak_bytes: dict[str, dict[str, int]] | None = None  # decoders: recipe -> context -> peak
    chosen: str | None = None
    context: int | None = None     # decoders: the context chosen, when it was shortened
    # decoders: the KV cache type --fit auto moved to (the runtime's smallest, "int8" on onnxruntime-genai), when no
    # recipe fitted with the profile's; the profile the bundle records carries it too
    kv_cache: str | None = None
    why: str | None = None
