"""`packager plan`: will a model fit, at which precision and context, from its config.json alone.

Decoder LLMs of the families packager/decoder_config.py knows (Llama, Qwen2/3, Gemma 1-3, Gemma 3n, Gemma 4,
Phi-3, Mistral, Granite, SmolLM3, OLMo 2) are counted analytically from the config: each layer's attention (layer
types, sliding windows, KV heads and head sizes, KV sharing) and the parameters stored, effective and mapped
(per-layer embeddings). Other models are counted exactly by instantiating the architecture on torch's meta device
(no weights, no allocation). Memory per row follows the same components as the graph estimate
(packager/estimate.py): runtime base, weights with allocator overhead and load transient, prepacked copies, KV
cache at the context, and prefill activations; how the runtime holds a decoder (KV dtype, windows, prefill chunk,
logits, load peak) is the runtime's answer (Runtime.decoder_memory).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from packager import decoder_config, decoder_peak, plan_encoders, plan_notes
from packager.bandwidth import decode_bound
from packager.bundles import is_bundle
from packager.decoder_peak import DecoderShape, kv_by_type, measured_peak
from packager.errors import ExitCode, PackagerError
from packager.estimate import (
    LOAD_TRANSIENT_HIGH,
    LOAD_TRANSIENT_LOW,
    OVERHEAD_HIGH,
    OVERHEAD_LOW,
    nbits_extra,
)
from packager.estimate_prepack import SLICE_BYTES, device_kernels
from packager.mobile import loads_onnx
from packager.plan_types import Architecture as Architecture
from packager.plan_types import Row as Row
from packager.profile_types import Int4
from packager.profiles import Profile
from packager.row_tables import fed_bytes
from packager.runtimes import DecoderMemory, profile_for_model, runtime_for
from packager.runtimes.onnxruntime import ECLASS_SCORE_COPIES
from packager.samples import resolve_sample

# Bytes per parameter as each recipe stores it. int4: MatMulNBits with one scale per block, in the weights' dtype:
# fp32 (the embedding table and lm_head included, as the int4 recipe does), at the block size of the profile's int4
# settings (Int4.bytes_per_weight: 0.625 at block 32); a tied pair's embedding reads a mapped copy (mapped_embedding).
BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": Int4().bytes_per_weight}
# The E-class exporter's per-layer embedding table (packager/runtimes/eclass_export.py): int8 rows whatever the
# recipe, a float32 scale per row (negligible beside a row of layers x 256)
PLE_BYTES_PER_PARAM = 1.0

# An encoder's bytes per parameter under the profile's (encoder) recipe: int8-dynamic quantizes every MatMul and
# lookup table, a scale per channel.
ENCODER_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8-dynamic": 1.0, "int8-static": 1.0}

PRECISIONS = tuple(BYTES_PER_PARAM)
DEFAULT_CONTEXTS = (2048, 8192, 32768, 131072)
PROTO_LIMIT = 2**31  # models above it keep weights in (memory-mapped) external data: no load copy


@dataclass(frozen=True)
class Plan:
    architecture: Architecture
    target: str
    budget_bytes: int
    rows: list[Row]
    max_context: dict[str, int]             # precision -> largest context that fits (0: none)
    notes: list[str] = field(default_factory=list)
    # Decoders whose runtime has a smaller KV cache than the profile's (Runtime.smaller_kv_cache, --fit auto's lever):
    # its name ("int8") and, per precision, the largest context that fits with it, where that is longer.
    smaller_kv: str = ""
    max_context_smaller_kv: dict[str, int] = field(default_factory=dict)
    # A multimodal decoder: per mode ("text", "image", "audio"), per precision, the largest context that fits it
    # (max_context is every mode's).
    max_context_by_mode: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """A plan is a table of what fits, not a verdict: it succeeds whatever it finds."""
        return int(ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        return {"parameters": self.architecture.parameters,
                "effective_parameters": self.architecture.effective_parameters,
                "architecture": asdict(self.architecture),
                "target": self.target, "budget_bytes": self.budget_bytes, "rows": [asdict(r) for r in self.rows],
                "max_context": self.max_context, "notes": self.notes,
                **({"smaller_kv": self.smaller_kv, "max_context_smaller_kv": self.max_context_smaller_kv}
                   if self.smaller_kv else {}),
                **({"max_context_by_mode": self.max_context_by_mode} if self.max_context_by_mode else {})}


def find_config(spec: str | Path) -> Path:
    """The config.json a plan reads: a sample:NAME's, a Hugging Face folder's, or the file named."""
    shown = str(spec)
    if shown.startswith("sample:"):
        path = resolve_sample(shown.removeprefix("sample:"))[0]
    else:
        path = Path(spec)
    if path.suffix == ".onnx" or (path.exists() and is_bundle(path)):
        raise PackagerError(f"{shown}: an ONNX model or bundle, with no config.json to plan from; `packager check "
                            f"{shown}` estimates and measures it instead.", ExitCode.BAD_INPUT)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise PackagerError(f"{shown}: no config.json there; pass a config.json, a Hugging Face folder holding one, "
                            "or sample:NAME.", ExitCode.BAD_INPUT)
    return config_path


def read_config(spec: str | Path) -> dict[str, Any]:
    config_path = find_config(spec)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackagerError(f"{config_path}: invalid JSON ({e}); fix the file.", ExitCode.BAD_INPUT) from None
    if not isinstance(config, dict) or not config.get("architectures"):
        raise PackagerError(f"{config_path}: no `architectures` list; add the model class name to it.",
                            ExitCode.BAD_INPUT)
    return config


DECODER_CLASSES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def architecture(config: dict[str, Any], where: str = "config.json") -> Architecture:
    """Parameter count and the attention shapes, with no weights allocated: analytically for the decoder families
    packager/decoder_config.py knows, on torch's meta device for the others."""
    arch = str(config["architectures"][0])
    if arch.endswith(DECODER_CLASSES) and decoder_config.known(config):
        a = _from_config(arch, decoder_config.read(config, where))
        encoders, unplanned = plan_encoders.on_demand(config, a.hidden, where)
        return replace(a, on_demand=encoders, unplanned_encoders=tuple(unplanned))
    return _from_meta_device(arch, config, where)


def _from_config(arch: str, d: decoder_config.DecoderConfig) -> Architecture:
    first = d.layers[0]
    return Architecture(
        name=arch, parameters=d.stored_parameters, embedding_parameters=d.embedding_parameters, layers=len(d.layers),
        kv_heads=first.kv_heads, head_dim=first.head_dim, heads=d.heads, hidden=d.hidden, intermediate=d.intermediate,
        vocab=d.vocab, max_context=d.max_context, decoder=True, tied_embeddings=d.tied, attention=d.layers,
        mapped_parameters=d.mapped_parameters)


def _from_meta_device(arch: str, config: dict[str, Any], where: str) -> Architecture:
    try:
        import torch
        import transformers
    except ImportError:
        raise PackagerError("planning from a config needs torch and transformers: pip install 'packager[hf]'.",
                            ExitCode.MISSING_DEPENDENCY) from None
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise PackagerError(f"{where}: unknown architecture {arch!r} for transformers {transformers.__version__}; "
                            "check config.json's `architectures`, or upgrade transformers.", ExitCode.BAD_INPUT)
    try:
        cfg = transformers.AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = cls(cfg)
    except ImportError as e:   # a class that needs packages the user lacks (timm, ...): transformers names them
        raise PackagerError(f"{arch} needs packages this environment lacks: {str(e).strip().splitlines()[0]}",
                            ExitCode.MISSING_DEPENDENCY) from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as e:
        raise PackagerError(f"{where}: transformers cannot build {arch} from this config ({e}); fix config.json.",
                            ExitCode.BAD_INPUT) from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    parameters = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    embeddings = model.get_input_embeddings()
    embedding_parameters = embeddings.weight.numel() if embeddings is not None else 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = embeddings is not None and head is not None and head.weight is embeddings.weight
    heads = int(getattr(text, "num_attention_heads", 1))
    hidden = int(getattr(text, "hidden_size", 0))
    head_dim = int(getattr(text, "head_dim", None) or (hidden // heads if heads else 0))
    decoder = arch.endswith(DECODER_CLASSES)
    if getattr(cfg, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return _encoder_decoder(arch, cfg, model, parameters, embedding_parameters)
    return Architecture(
        name=arch, parameters=parameters, embedding_parameters=embedding_parameters,
        layers=int(getattr(text, "num_hidden_layers", 0)),
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads), head_dim=head_dim, heads=heads,
        hidden=hidden, intermediate=_widest(getattr(text, "intermediate_size", 0)) or 4 * hidden,
        vocab=int(getattr(text, "vocab_size", 0)), max_context=int(getattr(text, "max_position_embeddings", 0)),
        decoder=decoder, tied_embeddings=tied,
    )


def _widest(size: Any) -> int:
    """A size given once or per layer (a list: Gemma 3n's intermediate_size): the widest layer's."""
    return max((int(v) for v in size), default=0) if isinstance(size, (list, tuple)) else int(size or 0)


# The encoder's output length where the config does not fix it (T5's relative positions): a planning figure.
DEFAULT_ENCODER_POSITIONS = 512


def _encoder_decoder(arch: str, cfg: Any, model: Any, parameters: int, embedding_parameters: int) -> Architecture:
    """Whisper, T5/BART, VisionEncoderDecoder: the decoder's attention shapes (its own KV cache grows with the
    context, the cross-attention's holds the encoder's output length), and the parameters of each side."""
    encoder_parameters = sum(p.numel() for p in model.get_encoder().parameters())
    dec = getattr(cfg, "decoder", None) if hasattr(cfg, "decoder") and not isinstance(cfg.decoder, (int, bool)) else cfg
    # a sub-config of a transformers config, whose fields differ by architecture
    enc: Any = (getattr(cfg, "encoder", None)
                if hasattr(cfg, "encoder") and not isinstance(cfg.encoder, (int, bool)) else cfg)

    def first(config: Any, *names: str, default: int = 0) -> int:
        return next((int(getattr(config, n)) for n in names if getattr(config, n, None)), default)

    heads = first(dec, "decoder_attention_heads", "num_heads", "num_attention_heads", default=1)
    hidden = first(dec, "d_model", "hidden_size")
    if getattr(enc, "image_size", None) and getattr(enc, "patch_size", None):
        positions = (int(enc.image_size) // int(enc.patch_size)) ** 2 + 1   # patches and the class token
    else:
        positions = first(enc, "max_source_positions", "max_position_embeddings", default=DEFAULT_ENCODER_POSITIONS)
    return Architecture(
        name=arch, parameters=parameters, embedding_parameters=embedding_parameters,
        layers=first(dec, "decoder_layers", "num_decoder_layers", "num_hidden_layers"),
        kv_heads=heads, head_dim=first(dec, "d_kv", "head_dim", default=hidden // heads if heads else 0), heads=heads,
        hidden=hidden, intermediate=first(dec, "decoder_ffn_dim", "d_ff", "intermediate_size", "n_inner",
                                          default=4 * hidden),
        vocab=first(dec, "vocab_size"), max_context=first(dec, "max_target_positions", "max_position_embeddings"),
        decoder=True, components={"encoder": encoder_parameters, "decoder": parameters - encoder_parameters},
        encoder_positions=positions,
    )


def kv_cache(a: Architecture, context: int, bits: int, windowed: bool) -> dict[str, int]:
    """The KV cache's bytes by layer type at `context` tokens (packager/decoder_peak.py); an encoder-decoder's decoder
    also caches the cross-attention's keys and values at the encoder's length."""
    by_type = kv_by_type(a.layers_attention(), context, bits, windowed)
    if a.encoder_positions:
        by_type["cross_attention"] = 2 * a.layers * a.kv_heads * a.head_dim * a.encoder_positions * bits // 8
    return by_type


def shape(a: Architecture) -> DecoderShape:
    """The architecture as the decoder peak's rule reads it (no logits for a model that does not generate)."""
    return DecoderShape(a.layers_attention(), a.heads, a.hidden, a.intermediate, a.vocab if a.decoder else 0)


def activation_bytes(a: Architecture, mem: DecoderMemory, precision: str, context: int) -> int:
    return decoder_peak.activation_bytes(shape(a), mem, 2 if precision == "fp16" else 4, context)


def decoder_memory(a: Architecture, profile: Profile, precision: str) -> DecoderMemory:
    """How the runtime holds this decoder; an E-class model's exported graph is the E-class exporter's (sliding layers
    keep their window, the cache is appended to in place: one copy; fewer copies of the scores); an encoder-decoder's
    decoder (optimum's, not rewritten) returns every position's logits."""
    mem = runtime_for(profile).decoder_memory(profile, precision)
    if a.encoder_positions:
        return replace(mem, logits_positions=0, notes=())
    eclass = replace(mem, windowed_kv=True, kv_copies=(1.0, 1.0), score_copies=ECLASS_SCORE_COPIES)
    return eclass if e_exported(a, mem) else mem


def e_exported(a: Architecture, mem: DecoderMemory) -> bool:
    """Whether the E-class exporter makes this model's graph: per-layer embeddings, on an exported-graph runtime."""
    return bool(a.mapped_parameters) and mem.load_weights == (0.0, 0.0)


def bytes_per_param(profile: Profile, precision: str) -> float:
    """A weight's bytes as the recipe of `precision` stores it on this profile (int4: its block size's scales)."""
    return profile.int4.bytes_per_weight if precision == "int4" else BYTES_PER_PARAM[precision]


def mapped_embedding(a: Architecture, profile: Profile, mem: DecoderMemory,
                     precision: str) -> dict[str, tuple[int, int]]:
    """A tied decoder's embedding on an exported graph, as packager packages it: the lookup reads its own copy of the
    table from a mapped file (int4: the lm_head's 4-bit data and scales, recipes/nbits.untie_embedding; fp32 and fp16:
    the exporter's second copy, the quantize stage's keep_tables_mapped), never resident whole; as
    estimate.mapped_tables names them, (bytes, rows). None where the runtime builds its own graph or for int8 (the
    dynamic quantizer quantizes the two apart)."""
    if not a.tied_embeddings or not a.decoder or mem.measured_weights or precision == "int8":
        return {}
    if precision != "int4":
        return {"table": (int(a.embedding_parameters * BYTES_PER_PARAM[precision]), a.vocab)}
    return {"data": (a.embedding_parameters // 2, a.vocab),
            "scales": (int(a.embedding_parameters * 4 / profile.int4.block_size), a.vocab)}


def int8_lookup_copy(a: Architecture, mem: DecoderMemory, precision: str) -> int:
    """int8, tied embedding, on an exported graph: the dynamic quantizer quantizes the lookup's table and the
    lm_head's weight apart, two 8-bit copies, both resident (the E2B-plan bundle of scripts/bench_multimodal.py:
    201 MiB of inline weights, where one copy counted 135). Read a row at a time, the lookup's costs a token nothing."""
    return a.embedding_parameters if precision == "int8" and a.tied_embeddings and a.decoder \
        and not mem.measured_weights else 0


def second_scales(a: Architecture, profile: Profile, precision: str) -> int:
    """int4, tied embedding, as onnxruntime-genai's builder stores it: the embedding reads the lm_head's 4-bit weight
    with its scales in another shape, 4 bytes a block of the table, again (the recipes on onnxruntime untie it:
    mapped_embedding)."""
    return int(a.embedding_parameters * 4 / profile.int4.block_size) if precision == "int4" and a.tied_embeddings \
        else 0


def row(a: Architecture, profile: Profile, precision: str, context: int, kv_bits: int | None) -> Row:
    mem = decoder_memory(a, profile, precision)
    share = runtime_for(profile).memory(profile, "text")
    copy = int8_lookup_copy(a, mem, precision)
    weights = int(a.effective_parameters * bytes_per_param(profile, precision)) + copy
    if mem.measured_weights:
        weights += second_scales(a, profile, precision)
    per_mapped = PLE_BYTES_PER_PARAM if e_exported(a, mem) else bytes_per_param(profile, precision)
    # a phone's app loads such a model's .onnx, its tables mapped, rather than model.ort (packager/mobile.py loads_onnx)
    embedding = mapped_embedding(a, profile, mem, precision)
    mapped = int(a.mapped_parameters * per_mapped) + sum(size for size, _ in embedding.values())
    tables = {**embedding, **({"ple": (int(a.mapped_parameters * per_mapped), a.vocab)} if e_exported(a, mem) else {})}
    touched = fed_bytes(tables, mem.chunk(context))   # the rows the loop feeds a pass (row_feed)
    bits = kv_bits or mem.kv_bits
    by_type = kv_cache(a, context, bits, mem.windowed_kv) if a.decoder else {}
    kv = sum(by_type.values())
    activations = activation_bytes(a, mem, precision, context)
    base = share.base_bytes + share.gpu_context_bytes  # GPU: the CUDA context too

    def peak(activations: int) -> tuple[int, int]:
        if mem.measured_weights:
            measured = measured_peak(base, weights, kv, activations, mem, bits)
            return measured.low, measured.high
        return _exported_graph_peak(a, profile, share, precision, weights, base,
                                    int(kv * mem.copies(bits)[1]) + touched, activations, mapped)

    low, high = peak(activations)
    modes, encoders = mode_peaks(a, profile, peak(0))
    worst = max([high, *(h for _, h in modes.values())])
    return Row(precision, context, weights, kv, activations, base, low, high, worst <= profile.budget.memory_bytes,
               bits, bits not in mem.runnable_kv_bits, mapped, by_type,
               decode_bound_tokens_per_s=_decode_bound(a, profile, precision, weights - copy, kv), modes=modes,
               encoder_bytes=encoders)


def mode_peaks(a: Architecture, profile: Profile,
               held: tuple[int, int]) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Each encoder's mode (image, audio): what the decoder holds at the context, its weights and KV cache but no
    pass's activations (`held`: the peak without them, which counts its load where that is larger), and the encoder
    loaded and run on one input at the profile's encoder recipe; and each encoder's weights."""
    per_param = ENCODER_BYTES.get(profile.recipe, BYTES_PER_PARAM["fp32"])
    modes: dict[str, tuple[int, int]] = {}
    weights: dict[str, int] = {}
    for encoder in a.on_demand:
        low, high = plan_encoders.encoder_bytes(encoder, per_param)
        modes[encoder.mode] = (held[0] + low, held[1] + high)
        weights[encoder.mode] = int(encoder.parameters * per_param)
    return modes, weights


def _exported_graph_peak(a: Architecture, profile: Profile, share: Any, precision: str, weights: int, base: int,
                         kv: int, activations: int, mapped: int) -> tuple[int, int]:
    """An exported graph on ONNX Runtime: the weights with allocator overhead, the MatMuls' prepacked copies (int4:
    MatMulNBits' by the profile's compute type on the device's kernels, estimate_prepack.nbits_extra; the others up to
    a copy), the load transient (the largest inline initializer, the embedding table: packager/estimate.py; int4: the
    lm_head's original beside its packed copy, estimate.py's `packing`) and an ORT-format file's buffer at load (phones:
    MemoryShare.converted_buffer; none for a model with `mapped` tables, whose app loads the .onnx: packager/mobile.py
    loads_onnx), against the KV cache (`kv`: with the mapped embedding's touched rows) and activations at run."""
    per_param = bytes_per_param(profile, precision)
    largest, packing = int(a.embedding_parameters * per_param), 0   # the largest weight: the lm_head (or the table)
    packed = a.effective_parameters - a.embedding_parameters
    extra = (0.0, 1.0)
    if precision == "int4":
        # the lm_head in slices of SLICE_BYTES (recipes/nbits.slice_wide_heads; its logits are the last position's):
        # one slice's 4-bit original beside its copy while it packs
        largest = packing = min(a.embedding_parameters // 2, SLICE_BYTES)
        packed += a.embedding_parameters if a.tied_embeddings else 0   # the lm_head's MatMulNBits reads the table
        # each MatMulNBits its weight's only reader (a tied embedding reads its own copy): the original freed
        extra = nbits_extra(profile.int4.compute, profile.int4.block_size, False, device_kernels(profile),
                            a.narrowest_input())
    inline = 0 if weights > PROTO_LIMIT else largest   # the proto's copy of the largest inline weight at load
    matmul_weights = packed * (0.5 if precision == "int4" else per_param)   # what packs: the 4-bit data, not scales
    ort_buffer = 0 if loads_onnx(mapped) else int(weights * share.converted_buffer[1])
    plain = max(0, weights - matmul_weights)   # what loads as stored: the allocator's overhead (estimate.py's rule)
    # each side the larger of the run's and the load's (where the proto's copy goes before the packing starts)
    ort_low = 0 if loads_onnx(mapped) else int(weights * share.converted_buffer[0])
    low = base + weights + int(plain * OVERHEAD_LOW + matmul_weights * extra[0]) + max(
        kv + activations // 2, max(int(inline * LOAD_TRANSIENT_LOW), packing) + ort_low)
    high = base + weights + int(plain * OVERHEAD_HIGH + matmul_weights * extra[1]) + max(
        max(int(inline * LOAD_TRANSIENT_HIGH), packing) + ort_buffer, kv + activations)
    return low, high


def _decode_bound(a: Architecture, profile: Profile, precision: str, weights: int, kv: int) -> float:
    """A token reads every weight but an untied embedding table (looked up a row at a time), and the KV cache."""
    if not a.decoder or not profile.device.memory_bandwidth_gbs:
        return 0.0
    lookup = 0 if a.tied_embeddings else int(a.embedding_parameters * bytes_per_param(profile, precision))
    return decode_bound(profile.device.memory_bandwidth_gbs, weights - lookup, kv)


def largest_context(a: Architecture, profile: Profile, precision: str, kv_bits: int | None, mode: str = "") -> int:
    """The largest context (a multiple of 256, up to the model's maximum) whose high estimate fits: in every mode, or
    in `mode` ("text", or an encoder's: "image", "audio")."""
    if not a.decoder:
        return 0
    budget = profile.budget.memory_bytes

    def fits(context: int) -> bool:
        r = row(a, profile, precision, context, kv_bits)
        if not mode:
            return r.fits
        return (r.modes[mode][1] if mode in r.modes else r.peak_high_bytes) <= budget

    limit = a.max_context or 131072
    if not fits(min(256, limit)):
        return 0
    lo, hi = 1, limit // 256
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * 256) else (lo, mid - 1)
    return lo * 256


def as_packaged(a: Architecture, profile: Profile) -> tuple[Profile, str]:
    """The profile as `package` would apply it to this model: a decoder LLM on the profile's [decoder_runtime] where
    that runtime builds its architecture; with the note `package` prints where it does not ("" otherwise)."""
    if not a.decoder or a.components:
        return profile, ""
    return profile_for_model(profile, "decoder", a.name)


def plan(config_path: str | Path, profile: Profile, precisions: list[str] | None = None,
         contexts: list[int] | None = None,
         kv_bits: int | None = None) -> Plan:
    a = architecture(read_config(config_path), str(find_config(config_path)))
    precisions = precisions or list(PRECISIONS)
    for p in precisions:
        if p not in BYTES_PER_PARAM:
            raise PackagerError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}.", ExitCode.USAGE)
    contexts = contexts or [c for c in DEFAULT_CONTEXTS if not a.max_context or c <= a.max_context] or [a.max_context]
    profile, note = as_packaged(a, profile)
    notes: list[str] = [note] if note else []
    rows = [row(a, profile, p, c, kv_bits) for p in precisions for c in contexts]
    notes += plan_notes.notes(a, profile, decoder_memory(a, profile, precisions[0]), rows, kv_bits)
    largest = {p: largest_context(a, profile, p, kv_bits) for p in precisions}
    levered = {p: smaller_kv_context(a, profile, p, largest[p]) for p in precisions} if kv_bits is None else {}
    smaller = {p: c for p, (_, c) in levered.items() if c}
    by_mode = {mode: {p: largest_context(a, profile, p, kv_bits, mode) for p in precisions}
               for mode in ("text", *(e.mode for e in a.on_demand))} if a.on_demand else {}
    return Plan(a, profile.name, profile.budget.memory_bytes, rows, largest, notes,
                next((name for name, c in levered.values() if c), ""), smaller, by_mode)


def smaller_kv_context(a: Architecture, profile: Profile, precision: str, than: int) -> tuple[str, int]:
    """The runtime's smaller KV cache (Runtime.smaller_kv_cache: --fit auto's lever) and the largest context that fits
    with it, where that is longer than `than`; ("", 0) where there is none or it gains nothing."""
    lever = runtime_for(profile).smaller_kv_cache(profile) if a.decoder else None
    if lever is None:
        return "", 0
    context = largest_context(a, lever[0], precision, None)
    return (lever[1], context) if context > than else ("", 0)

