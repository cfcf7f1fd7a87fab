"""onnxruntime-genai, the second device runtime: decoder LLMs generated in native code (issue 19).

On the host, its model builder (`python -m onnxruntime_genai.models.builder`, in packager's `genai` exporter
environment: it needs transformers 5.x) makes the bundle's model folder from the Hugging Face source, int4,
lean by construction: logits for the last position only (`prune_lm_head`), the runtime's CPU arena off.
On the device, runtime/session.py is targets/genai/session.py (ONNX Runtime's session.py ships beside it as
runtime/ort_session.py, for the helpers they share), which prefills in chunks. verify compares it with the
source model run in PyTorch in the same environment (genai_host.TorchReference): an exporter's bug fails the gate.
Which families the builder makes: genai_families.py (genai_supports).

The builder's graph is run by the onnxruntime library genai loads: its operators are checked against that
release in profiles/runtimes/onnxruntime.toml (packager/compat.py), as ONNX Runtime bundles are.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager import mobile_genai
from packager.compat import Compatibility, ModelFacts, check, read_model
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.families.base import step
from packager.paths import targets_dir
from packager.profile_types import Profile, by_block, key_error
from packager.runtimes.base import DecoderMemory, MemoryShare
from packager.runtimes.genai_families import check_family
from packager.runtimes.genai_families import genai_supports as genai_supports  # which families the builder makes
from packager.runtimes.onnxruntime import OnnxRuntime

if TYPE_CHECKING:
    from packager.context_view import RuntimeContext

# onnxruntime-genai 0.18.0's wheel depends on onnxruntime and loads it (its _dll_directory.py): the release its
# graphs run on. 1.32.0 is what pip resolves for it today (the genai exporter environment); pinned so the
# device runs what verify ran.
ONNXRUNTIME = "1.32.0"
# The app packages with the GenAI API the phone examples are written against (mobile_genai.py); the profile's
# [decoder_runtime.mobile] pins their versions (profiles/phone.toml has the sources).
APP_PACKAGES = {"android_package": "com.microsoft.onnxruntime:onnxruntime-genai-android",
                "ios_pod": "onnxruntime-genai-objc"}
# The builder's extra options that make the graph lean (scripts/bench_llm_runtime.py, 1B Llama shape, 4K prompt:
# builder defaults 4.05 GiB peak; these with the arena off and chunked prefill 1.37 GiB with int8 KV).
LEAN_OPTIONS = ("prune_lm_head=true",)
# The profile's genai settings, as [session] config entries ("genai.KEY" = "VALUE"), and their defaults.
# genai.prefill_chunk: prompt tokens per append_tokens call (bounded activations). genai.kv_cache: the KV cache's
# type, "float" (the builder's fp32; rpi5-genai's), "float16" (the attention in fp16 on the fp32 graph:
# runtimes/genai_kv16.py; rpi4's and rpi5's, with chunks of 64: the memory model below) or
# "int8" (CPU GroupQueryAttention's quantized cache, per-tensor static scales measured on the source model in PyTorch
# over the family's prompts: packager/runtime_steps.py).
SETTINGS = {"genai.prefill_chunk": "256", "genai.kv_cache": "float"}
ALLOWED = {"genai.prefill_chunk": (r"[1-9][0-9]*", "a positive whole number"),
           "genai.kv_cache": (r"float|float16|int8", "\"float\", \"float16\" or \"int8\"")}
KV8_OPTIONS = ("kv_cache_quant_scheme=int8_per_tensor",)
# packager recipe -> the builder's -p. int4-mixed is int4 with the layers packager/mixed_search.py keeps at 8 bits
# given to the builder as weight overrides by node name (runtime_steps.genai_build).
PRECISIONS = {"int4": "int4", "int4-mixed": "int4", "fp32": "fp32"}

# How genai holds a decoder (packager plan), measured on the Llama-3.2-1B shape at int4 (0.75 GiB of weights), 2
# threads, chunks of 256 (scripts/bench_llm_runtime.py --contexts 1024,4096,16384): the load peak is 1.35 GiB, the
# weights' bytes 1.7 times over beyond the runtime base (the mapped external data and MatMulNBits' packed copy side by
# side), and 1.55 times of them stay resident once loaded (1.23 GiB after load). The builder's CPU graphs keep the KV
# cache in fp32 ("float": the past_key_values inputs are float32), "int8" is the builder's quantized cache; each is one
# buffer shared by past and present (past_present_share_buffer; the int8 one by share_quantized_cache, where the builder
# shares it on CUDA only). "float16" (runtimes/genai_kv16.py; rpi4's and rpi5's, in chunks of 64)
# halves the cache, but ONNX Runtime 1.32's GroupQueryAttention streams its scores (flash attention) for float only: an
# fp16 node holds every head's scores of a chunk against the whole cache buffer at once (so planned: score_heads 0), in
# fp32 on x86 and the A72, in fp16 where MLAS has fp16 kernels (the A76; counted at 4 bytes, the larger). On the 1B
# shape at 4K (fp32 compute) that is 132 MB in chunks of 256, as much as the cache saves: 1.24 GiB measured against the
# fp32 cache's 1.26; in chunks of 64, 1.13-1.14 in five runs of six, 1.27 in one (plan: 1.06-1.19).
# scripts/bench_llm_runtime.py's docstring has the rows and where the scores are allocated. Sliding-window layers keep a
# window-sized cache (the builder's windowed_kv_cache, on by default on CPU). CPU GroupQueryAttention on float scores a
# chunk against the whole cache one head per thread at a time, not all heads at once: at 16K, 2.30 GiB measured = 1.23
# after load + 1.0 of fp32 cache + 0.07 of scratch (all heads' scores would be 0.5 GiB more).
# The load peak, tried against (the lean build, 2 threads, this x86 host; scripts/bench_llm_runtime.py's docstring has
# the table): ONNX Runtime's saved pre-packed weights (an optimized model written with
# session.save_external_prepacked_constant_initializers, made on the machine that runs it, then loaded by genai) load in
# 3.4-4.4 s instead of 8.9 and leave 1.09 GiB resident instead of 1.23 (the packed file memory-mapped), but the load
# still peaks at 1.39-1.43 GiB (0.24 GiB in the heap meanwhile: the lm_head's packed blob and scales): 4K with the fp32
# cache 1.42 GiB against 1.53, still over the 1.2 goal, for a 1.86 GB second file on the device (the packed weights
# beside the originals, which ONNX Runtime still reads) and a first-run prepare (16 s, 1.35 GiB peak). MatMulNBits'
# accuracy_level 0-2 (fp32 compute) packs to 0.70 GiB (load peak 0.89, 1.26 at 4K with an fp32 cache) but decodes 1.4x
# slower than level 4 (int8 compute; 1K prompt, back to back). The saved pre-packed weights are not packaged; the
# compute type is, as the profile's [int4] accuracy_level (WEIGHT_FACTORS below).
# genai's own library and a generator, beyond onnxruntime's calibrated base: sample:tiny-llama's rpi5-genai bundle
# (1.8 MiB of weights, a 512-token cache) measured 95.1 MiB at load and 105.8 MiB peak (run.py --measure), 21 and
# 27 MiB above what onnxruntime's base and the rest of the model below account for.
GENAI_BASE = 28 * 2**20
# The int4 weights' load and run factors (low, high) by MatMulNBits' compute type, which the profile's [int4]
# accuracy_level sets (the builder's accuracy_level option, as for the onnxruntime path's int4 recipe): "int8" (level
# 4: activations quantized to int8, the SDOT/SMMLA kernels of CPUs with dotprod/i8mm) packs the weights into a second
# resident copy at load; "fp32" (levels 0-2) packs to less and computes in fp32, slower where int8 dot products are
# fast. Level 3 (bf16) is not measured: counted as level 4, the larger. Measured on the 1B shape (above and
# scripts/bench_llm_runtime.py's lean-fp32 and lean-kv8-fp32 rows).
# By block size too (profile_types.by_block): level 4's packed copy carries a scale and a sum a block (x86), so a
# coarser block packs smaller, while level 1's copy is the 4-bit data alone and does not shrink with the scales. The
# 1B shape at blocks 64 and 128 (2026-12-04, eighth session; the builder's lean folder at each block, 4,000 + 32
# tokens, the 16-bit cache in chunks of 64, 2 threads), the load peak and the memory after load less the plan's base
# (97 MiB) over the plan's weights: level 4 1.70 / 1.53 (block 32), 1.53 / 1.35 (64), 1.51 / 1.31 (128); level 1
# 1.08 / 0.92, 1.19 / 1.01, 1.32 / 1.12 (the same 926 MiB load peak at each block). Block 128 at level 4 (rpi5's and
# the phone's decoders) checked at 1K, 4K and 16K: plan's midpoint +1.6%, -2.1%, -1.5% of the peak (docs/llms.md).
WEIGHT_FACTORS = {
    "int8": {32: ((1.6, 1.8), (1.45, 1.65)), 64: ((1.45, 1.65), (1.27, 1.47)), 128: ((1.42, 1.62), (1.22, 1.42))},
    "fp32": {32: ((1.0, 1.15), (1.1, 1.25)), 64: ((1.1, 1.3), (1.2, 1.35)), 128: ((1.23, 1.43), (1.3, 1.45))},
}
KV_BITS = {"float16": 16, "float": 32, "int8": 8}
# The fp16 node's scores of a chunk (all heads, fp32 on this x86 host) are held about 1.75 times over while it runs:
# the tiny random Llama of scripts/bench_memory.py (4 heads, chunks of 64, 1 KiB of scores a cached token) rose 6.9,
# 14.1 and 28.4 MiB above its resident memory during the last chunk at 4K, 8K and 16K: 1.69-1.73 of its scores.
# Counted once before, its 16K row measured 171 MiB against a high side of 153; the 1B shape's 16K row (1.62 GiB)
# sits at +1.4% of the midpoint with it, -3.0% without (docs/llms.md).
FP16_SCORE_COPIES = 1.75
# Copies of the KV cache a step holds (low, high): one buffer, past and present, whatever its type. The int8 one was
# two until packager shared it (share_quantized_cache): 2.5 times its bytes a token then (1B shape, chunks of 256, 1.96
# GiB at 16K), and now the run stays under the load peak: lean-kv8 at block 128 in chunks of 64 peaked at the load's
# 1.00 GiB at 1K and 4K (scripts/bench_llm_runtime.py --contexts; docs/llms.md). Its attention streams the int8 cache
# tile by tile (onnxruntime's quantized flash path): no scores of a chunk against the whole cache.
KV_COPIES = {"float16": (1.0, 1.0), "float": (1.0, 1.0), "int8": (1.0, 1.0)}
# --fit auto's KV lever (packager/fit_auto.py): the smallest cache, a quarter of the float one's bytes and half the
# 16-bit one's.
KV_SMALLEST = "int8"


def _with_kv_cache(profile: Profile, kv: str) -> Profile:
    """The profile with genai.kv_cache = `kv`."""
    session = dataclasses.replace(profile.session, config={**profile.session.config, "genai.kv_cache": kv})
    return dataclasses.replace(profile, session=session)


class GenaiRuntime(OnnxRuntime):
    """The `Runtime` of profiles whose [runtime] name is "onnxruntime-genai". Its memory share is ONNX Runtime's
    calibrated one (genai loads the same library); the rest is its own."""

    name = "onnxruntime-genai"
    builds_model = True
    converts_for_phones = False   # the app loads the builder's folder as it is (mobile_genai.py)

    def takes(self, architecture: str) -> bool:
        return genai_supports(architecture)

    def check_source(self, profile: Profile, architecture: str) -> None:
        if not architecture:
            raise PackagerError(f"{profile.name} runs decoder LLMs from a Hugging Face folder with onnxruntime-genai, "
                                "and this is an ONNX file; package it for a target on the onnxruntime runtime (such as "
                                "rpi5).", ExitCode.BAD_INPUT)
        check_family(architecture, profile.name)

    def check_profile(self, profile: Profile, where: str) -> None:
        for key, value in profile.session.config.items():
            if key not in SETTINGS:
                raise key_error(where, f"session.config.{key}", f"is not an onnxruntime-genai setting packager "
                                f"knows; known: {', '.join(SETTINGS)}")
            pattern, words = ALLOWED[key]
            if not re.fullmatch(pattern, value):
                raise key_error(where, f"session.config.{key}", f"must be {words}, got {value!r}")
        if profile.mobile is not None:   # phones: [decoder_runtime.mobile] names genai's app packages
            for key, package in APP_PACKAGES.items():
                if getattr(profile.mobile, key) != package:
                    raise key_error(where, f"mobile.{key}", f"must be {package!r}, the package with the GenAI API "
                                    "the app examples use (add [decoder_runtime.mobile] with it)")
            for key in ("android_version", "ios_version"):
                if getattr(profile.mobile, key) != profile.runtime.version:
                    raise key_error(where, f"mobile.{key}", f"must be {profile.runtime.version!r}, the release of "
                                    f"{profile.runtime.package} that verify and the smoke test run")
            if profile.mobile.android_providers or profile.mobile.ios_providers:
                raise key_error(where, "mobile.android_providers", "must be empty: the builder's graph is for the "
                                "CPU, which genai_config.json names")

    def requirements(self, profile: Profile) -> list[str]:
        rt = profile.runtime
        return [f"{rt.package}=={rt.version}", f"onnxruntime=={ONNXRUNTIME}", f"numpy=={rt.numpy}"]

    def check_model(self, path: Path, profile: Profile, what: str) -> tuple[Compatibility, dict[str, Any]]:
        result = check(read_model(path, what), _as_onnxruntime(profile))
        return result, result.to_dict() | {"runtime": f"onnxruntime {ONNXRUNTIME} inside {profile.runtime.package} "
                                           f"{profile.runtime.version}"}

    def check_facts(self, facts: ModelFacts, profile: Profile) -> Compatibility:
        return check(facts, _as_onnxruntime(profile))

    def memory(self, profile: Profile, kind: str) -> MemoryShare:
        share = super().memory(_as_onnxruntime(profile), kind)
        return dataclasses.replace(share, base_bytes=share.base_bytes + GENAI_BASE,
                                   shared_bytes=share.shared_bytes + GENAI_BASE,
                                   notes=(*share.notes, "runtime base: onnxruntime's calibration (genai loads the same "
                                          f"library) and genai's own library and generator ({GENAI_BASE >> 20} MiB, "
                                          "measured on one small model)"))

    def decoder_memory(self, profile: Profile, precision: str) -> DecoderMemory:
        """`precision`: plan's, or "" for a packaged graph (its MatMulNBits, if any, say "int4")."""
        kv = profile.session.config.get("genai.kv_cache", SETTINGS["genai.kv_cache"])
        chunk = _chunk(profile)
        load_weights, run_weights = weight_factors(profile, precision)
        return DecoderMemory(kv_bits=KV_BITS[kv], windowed_kv=True, kv_copies=KV_COPIES[kv],
                             prefill_tokens=chunk, logits_positions=1, runnable_kv_bits=tuple(KV_BITS.values()),
                             score_heads=0 if kv == "float16" else profile.session.intra_op_threads,
                             score_copies=FP16_SCORE_COPIES if kv == "float16" else 1.0,
                             load_weights=load_weights, run_weights=run_weights,
                             kv_copies_by_bits={KV_BITS[k]: KV_COPIES[k] for k in KV_BITS},
                             notes=(f"onnxruntime-genai: KV cache {kv} ({KV_BITS[kv]}-bit), prompt in chunks of "
                                    f"{chunk}, logits of the last position only (prune_lm_head)",))

    def smaller_kv_cache(self, profile: Profile) -> tuple[Profile, str] | None:
        """The builder's int8 cache (a quarter of the float one's bytes: KV_COPIES), where the profile's is
        another."""
        if profile.session.config.get("genai.kv_cache", SETTINGS["genai.kv_cache"]) == KV_SMALLEST:
            return None
        return _with_kv_cache(profile, KV_SMALLEST), KV_SMALLEST

    def with_kv_bits(self, profile: Profile, bits: int) -> Profile | None:
        """genai.kv_cache of that size ("float", "float16", "int8"), the prompt's chunks the profile's."""
        names = {b: name for name, b in KV_BITS.items()}
        if bits not in names:
            raise PackagerError(f"--kv-bits {bits}: {profile.runtime.package} runs a KV cache of "
                                f"{', '.join(map(str, sorted(names, reverse=True)))} bits; choose one of those.",
                                ExitCode.USAGE)
        return _with_kv_cache(profile, names[bits])

    def host_python(self, profile: Profile) -> str:
        return str(step("packager.runtime_steps:genai_python")())

    def host_runner(self, ctx: RuntimeContext) -> Any:
        return step("packager.runtime_steps:genai_runner")(ctx)

    def host_reference(self, ctx: RuntimeContext) -> Any:
        """The source model in PyTorch (issue 19): an exporter's bug must fail verify, not set its reference."""
        return step("packager.runtime_steps:genai_reference")(ctx)

    def build(self, ctx: RuntimeContext, model_dir: Path) -> bool:
        """The builder's model folder from the Hugging Face source, in place of the recipe's quantization."""
        _check_buildable(ctx)
        kv = ctx.profile.session.config.get("genai.kv_cache", SETTINGS["genai.kv_cache"])
        precision = PRECISIONS[ctx.recipe_name]
        int4 = ctx.profile.int4   # the profile's kernel settings ([int4]), as the int4 recipes take them
        quantized = (f"accuracy_level={int4.accuracy_level}", f"block_size={int4.block_size}",
                     f"is_symmetric={str(int4.symmetric).lower()}") if precision == "int4" else ()
        step("packager.runtime_steps:genai_build")(ctx, model_dir, precision, (*LEAN_OPTIONS, *quantized), kv)
        return True

    def convert(self, ctx: RuntimeContext) -> None:
        """Phones: nothing to convert (converts_for_phones); the record of the folder the app loads, and its
        packages."""
        if ctx.profile.mobile is not None:
            ctx.mobile = mobile_genai.record(ctx.profile, ctx.model_file, ONNXRUNTIME)

    def write_bundle_files(self, ctx: RuntimeContext, stage: Path) -> None:
        if ctx.mobile and ctx.profile.mobile is not None:
            assert ctx.context is not None   # a decoder's
            ctx.mobile["examples"] = mobile_genai.write_examples(stage, ctx.bundle_name, ctx.profile, ctx.mobile,
                                                                 ctx.context, _chunk(ctx.profile))

    def device_files(self, profile: Profile) -> dict[str, Path]:
        files = super().device_files(profile)
        return {**files, "runtime/ort_session.py": files["runtime/session.py"],
                "runtime/session.py": targets_dir() / "genai" / "session.py"}

    def readme(self, ctx: RuntimeContext) -> str:
        chunk = _chunk(ctx.profile)
        phone = mobile_genai.readme(ctx.mobile, ctx.profile) if ctx.mobile else ""
        return f"""
## The runtime: onnxruntime-genai

The model in `model/` is onnxruntime-genai's (its folder: `genai_config.json`, `model.onnx`), built by its model
builder ({ctx.recipe_name}) with logits for the last position only; run.py prefills the prompt in chunks of {chunk}
tokens and decodes greedily in native code. `pip install -r requirements.txt` installs onnxruntime-genai.
""" + phone


def _chunk(profile: Profile) -> int:
    """Prompt tokens per append_tokens call (the profile's genai.prefill_chunk)."""
    return int(profile.session.config.get("genai.prefill_chunk", SETTINGS["genai.prefill_chunk"]))


def matmul_compute(profile: Profile, precision: str) -> str:
    """The MatMulNBits compute type whose factors count the weights (WEIGHT_FACTORS): the profile's for int4 weights;
    for others, level 4's (the larger, measured before the compute type was a choice)."""
    return profile.int4.compute if precision in ("int4", "int4-mixed") else "int8"


def weight_factors(profile: Profile, precision: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """WEIGHT_FACTORS' load and run factors for `precision`'s weights: int4's at the profile's compute type and block
    size; others' at level 4 and block 32, as measured before either was a choice."""
    int4 = precision in ("int4", "int4-mixed")
    return by_block(WEIGHT_FACTORS[matmul_compute(profile, precision)], profile.int4.block_size if int4 else 32)


def _as_onnxruntime(profile: Profile) -> Profile:
    """The profile as the onnxruntime release inside genai sees it (compat table, calibration)."""
    runtime = dataclasses.replace(profile.runtime, package="onnxruntime", version=ONNXRUNTIME)
    return dataclasses.replace(profile, runtime=runtime)


def _check_buildable(ctx: RuntimeContext) -> None:
    family = family_for(ctx.io.kind)
    if not family.generates or family.has_components or ctx.source is None or ctx.source.kind != "huggingface":
        raise PackagerError(f"{ctx.profile.name} runs decoder LLMs from a Hugging Face folder with onnxruntime-genai, "
                            f"and this is {family.title}; package it for a target on the onnxruntime runtime "
                            "(such as rpi5).", ExitCode.BAD_INPUT)
    check_family(ctx.source.architecture, ctx.profile.name)
    if ctx.recipe_name not in PRECISIONS:
        raise PackagerError(f"recipe {ctx.recipe_name} is not one onnxruntime-genai's builder makes; choose "
                            f"{' or '.join(PRECISIONS)} (--recipe).", ExitCode.USAGE)


def tune(path: Path, profile: Profile, kv: str) -> None:
    """The profile's threads in the builder's config, the CPU arena off (an arena keeps the prefill's largest
    activations for good: scripts/bench_llm_runtime.py), and the cache one buffer whatever its type (`kv`)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    options = config["model"]["decoder"]["session_options"]
    options["intra_op_num_threads"] = profile.session.intra_op_threads
    options["inter_op_num_threads"] = profile.session.inter_op_threads
    options["enable_cpu_mem_arena"] = profile.session.cpu_mem_arena
    if kv == "int8":
        share_quantized_cache(config)
    path.write_text(json.dumps(config, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def share_quantized_cache(config: dict[str, Any]) -> None:
    """The builder's int8 cache as one buffer shared by past and present, as its float caches are. The builder shares
    a quantized cache on CUDA only, but onnxruntime 1.32's CPU GroupQueryAttention takes it shared as well: the same
    logits to the bit over a 1,000-token prompt in chunks of 64 and of 256 and 40 steps (2 layers of the 1B shape),
    and no copy of the cache a step (2 layers at 4,000 + 32: 1.8-2.5 ms a step shared, 2.5-3.4 not;
    scripts/bench_kv_cache.py measures both)."""
    config["search"]["past_present_share_buffer"] = True
