"""ONNX Runtime, the first device runtime: the `onnxruntime` (or `onnxruntime-gpu`) wheel on Linux boards, the
mobile packages (onnxruntime-android, onnxruntime-objc) in phone apps.

The logic lives in the modules it names: packager/compat.py (the runtime table: IR, opsets, operators),
packager/mobile.py (the ORT format, the usability check, the app examples), packager/gpu.py (the CUDA context a
CPU-only host cannot measure, the TensorRT workspace). This module is what ties them to the profile, and what
the bundle says about them.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager import decoder_config, gpu, mobile, mobile_examples
from packager.compat import Compatibility, ModelFacts, check, facts_of, load, lower_ir_version, read_model
from packager.errors import did_you_mean
from packager.families import family_for
from packager.families.base import step
from packager.paths import profiles_dir, targets_dir
from packager.profile_types import Mobile, Profile, key_error
from packager.runtimes.base import DecoderMemory, MemoryShare

if TYPE_CHECKING:
    from packager.context_view import RuntimeContext
    from packager.records import Memory

# The device-side code (targets/): the runner that loads the model with the manifest's session options, and the
# smoke test that checks the bundle with it.
# The entry points, and the package they load from its source (targets/run.py's load_package).
RUNNER_FILES = ("run.py", "smoke_test.py")
RUNNER_PACKAGE = "runtime"
# The runtime's own resident cost per onnxruntime version (scripts/calibrate_runtime.py writes it). Where it has
# no figure for a version, the nearest version's is used, and the estimate says so.
CALIBRATION = "calibration/runtime_base.toml"
# The ORT-format file's buffer at load, as a fraction of the file (the whole file is read; some of it
# may be handed back before the packing ends).
ORT_BUFFER_LOW, ORT_BUFFER_HIGH = 0.8, 1.05
# The memory pattern's block beside the first run's arena chunks, as a fraction of the activations' liveness
# peak: measured (VmHWM, 6 runs of one session at fixed shapes, onnxruntime 1.32, x86-64) 1.04x on a chain of
# 3x3 Convs at 32x160x160 (6.5 MiB more from the second run on; none with mem_pattern off, none with one run),
# 1.2x on a YOLOv8n at 320 (5.5 MiB), 1.5x on PP-OCRv4 det at 736 (76 MiB, its layout copies included); the
# high side leaves room for the int8 graphs' pattern (the PyPI corpus, scripts/bench_memory.py: up to 1.9x).
PATTERN_LOW, PATTERN_HIGH = 0.9, 2.0
# A Conv kernel's own state beyond its weight (its MLAS parameters, the optimizer's blocked copy of a small
# weight left in the heap): a chain of 100 3x3 Convs of 16 channels (9 KiB weights) loads 41 KiB a Conv more than
# one Conv does, 32 KiB beyond the weight (23 KiB with the layout transform off).
CONV_NODE_BYTES = 32 * 2**10
# run.py's decoder loop on an exported decoder-only graph: the export's lm_head reads the last position only
# (onnx_rewrite.last_position_logits: io.logits = "last"), so the loop prefills the prompt in chunks of
# decoder_config.LAST_ONLY_CHUNK tokens with one row of logits a pass; the KV cache in the activations' dtype (fp16
# models in fp16; fp32 and weight-only int8/int4 on the CPU in fp32), a full-length cache on every layer (the export
# keeps no window), past and present both held by a step: the caller's past and the present the run returns (past and
# new tokens) are two whole caches at its end (kv_copies 2). An encoder-decoder's decoder is not rewritten
# (packager/plan.py's decoder_memory gives it every position's logits).
# The exported attention (MatMul, the mask's Add, Softmax, MatMul) holds a layer's scores in several buffers at once:
# measured on a 2-layer, 16-head Llama at 2,048 positions (run.py's step, fp32, arena on), a pass of 64, 128 and 256
# tokens took 4.6, 4.5 and 5.3 times its scores' bytes beyond the cache's present.
SCORE_COPIES = 5.5
# The E-class exporter's attention (runtimes/eclass_export.py) holds fewer, and no present: it returns the new
# tokens' keys and values, which run.py appends to the cache it holds (kv_copies 1 in plan). A pass of n tokens at
# 8,192 positions on a 4-layer bundle of Gemma 4 E2B's widths (8 heads; rpi5, int4; run.py's step, fp32, arena on; the
# peak above the resident cache, 2026-12-04) took 6.5 MiB at n = 1, 14 at 16, 27 at 32, 47 at 64, 93 at 128: beyond
# the MLP's double-wide activations (n x 120 KiB), 2.5 times the scores' bytes at 64 tokens (the prefill chunk) and
# 2.4 at 128 (2.1-2.2 beyond the 6.5 MiB a single token holds). Its graph scores the past and the new keys apart.
# Scoring a KV head's query heads in two groups, one after the other, held less (2026-12-05, the same bundle: 34 MiB
# at n = 64, 68 at 128) but reads the cache once a group: a decode step at 8K took 42.8-48.1 ms in six runs instead of
# 34.7-41.3 (one outlier, 57.8), the prompt no measurably slower (`python scripts/bench_decoder_step.py BUNDLE --speed
# --context 8K --chunks 64`; host, 2 threads). Not taken.
ECLASS_SCORE_COPIES = 2.5


def calibration(profile: Profile) -> tuple[dict[str, Any], str]:
    """The calibration entry for the target's runtime version (the nearest version's, with a note)."""
    data = tomllib.loads((profiles_dir() / CALIBRATION).read_text(encoding="utf-8"))
    runs = data["runtime"]
    version = profile.runtime.version
    key = version if version in runs else min(runs, key=lambda v: _version_distance(v, version))
    note = "" if key == version else f"runtime base measured for onnxruntime {key}, not {version}"
    return runs[key], note


def _version_distance(a: str, b: str) -> float:
    pa, pb = ([int(x) for x in v.split(".")[:3]] for v in (a, b))
    return float(sum(abs(x - y) * 100 ** (2 - i) for i, (x, y) in enumerate(zip(pa, pb))))


class OnnxRuntime:
    """The `Runtime` of profiles whose [runtime] name is "onnxruntime" (the default)."""

    name = "onnxruntime"
    builds_model = False
    # The one rule of whether a phone bundle's model is converted (model.ort, `convert`, and its buffer at load in the
    # estimate, `memory`): ONNX Runtime's mobile packages load the ORT format; onnxruntime-genai loads its builder's
    # folder as it is (runtimes/genai.py).
    converts_for_phones = True

    # ------------------------------------------------------------------ profile

    def takes(self, architecture: str) -> bool:
        return True   # optimum's exporter makes the fp32 graph the recipes quantize

    def check_source(self, profile: Profile, architecture: str) -> None:
        return None   # what the exporter cannot make, it says (export stage)

    def check_profile(self, profile: Profile, where: str) -> None:
        for key in profile.session.config:
            if not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key):
                raise key_error(where, f"session.config.{key}", "is not an onnxruntime session config key "
                                "(dotted lower-case words, such as \"session.intra_op.allow_spinning\")")
        if profile.mobile is not None:
            _check_mobile(profile.mobile, where)

    def requirements(self, profile: Profile) -> list[str]:
        rt = profile.runtime
        index = [f"--extra-index-url {rt.index_url}"] if rt.index_url else []
        return [*index, f"{rt.package}=={rt.version}", f"numpy=={rt.numpy}"]

    # ------------------------------------------------------------------ compatibility

    def check_model(self, path: Path, profile: Profile, what: str) -> tuple[Compatibility, dict[str, Any]]:
        lowered = lower_ir_version(path, profile)
        result = check(read_model(path, what), profile)
        return result, result.to_dict() | ({"ir_version_lowered": lowered} if lowered else {})

    def check_facts(self, facts: ModelFacts, profile: Profile) -> Compatibility:
        return check(facts, profile)

    # ------------------------------------------------------------------ memory

    def memory(self, profile: Profile, kind: str) -> MemoryShare:
        """The calibrated base (interpreter, numpy, the runner, the runtime and an empty session, a thread pool of
        the profile's size; the tokenizers library for text models), the session's cost per node, and on GPU
        profiles the CUDA context; phones load model.ort, which the runtime reads whole into a buffer."""
        entry, note = calibration(profile)
        base = (entry["base_bytes"] + entry["session_bytes"]
                + entry["per_thread_bytes"] * profile.session.intra_op_threads)
        if family_for(kind).needs_tokenizer:
            base += entry["tokenizers_bytes"]
        gpu_context = profile.runtime.gpu_context_bytes
        return MemoryShare(
            base_bytes=base, shared_bytes=int(entry["base_bytes"]) + gpu_context,
            node_bytes=entry.get("node_bytes", 0), conv_node_bytes=CONV_NODE_BYTES,
            token_bytes=entry.get("token_bytes", 0), merge_bytes=entry.get("merge_bytes", 0),
            gpu_context_bytes=gpu_context,
            converted_buffer=(ORT_BUFFER_LOW, ORT_BUFFER_HIGH) if self.converts(profile) else (0.0, 0.0),
            converted_buffer_name="ort_format_buffer",
            repeat_activations=(PATTERN_LOW, PATTERN_HIGH) if profile.session.mem_pattern
            and profile.session.cpu_mem_arena else (0.0, 0.0), notes=(note,) if note else ())

    def decoder_memory(self, profile: Profile, precision: str) -> DecoderMemory:
        return DecoderMemory(kv_bits=16 if precision == "fp16" else 32, windowed_kv=False, kv_copies=(2.0, 2.0),
                             prefill_tokens=decoder_config.LAST_ONLY_CHUNK, logits_positions=1,
                             runnable_kv_bits=(16, 32), score_copies=SCORE_COPIES, chunk_by_context=True,
                             notes=(f"onnxruntime: the exported decoder's prompt in chunks of "
                                    f"{decoder_config.LAST_ONLY_CHUNK} (fewer past "
                                    f"{decoder_config.CHUNK_SCORES // decoder_config.LAST_ONLY_CHUNK:,} positions: "
                                    f"{decoder_config.prefill_chunk(8192)} to 8K), logits of the last position "
                                    "only",))

    def converts(self, profile: Profile) -> bool:
        """Whether a bundle for this profile converts its model for the device (phones: model.ort)."""
        return profile.mobile is not None and self.converts_for_phones

    def smaller_kv_cache(self, profile: Profile) -> tuple[Profile, str] | None:
        return None   # the exported graph's cache is the model's dtype: no setting makes it smaller

    def with_kv_bits(self, profile: Profile, bits: int) -> Profile | None:
        return None   # the exported graph's cache is the activations' type (fp32; fp16 with the fp16 recipe)

    def unmeasured_bytes(self, profile: Profile, measured: dict[str, Any] | None) -> int:
        return gpu.unmeasured_gpu_bytes(profile, measured)

    # ------------------------------------------------------------------ conversions

    def build(self, ctx: RuntimeContext, model_dir: Path) -> bool:
        return False   # the recipe quantizes the fp32 export

    def host_python(self, profile: Profile) -> str:
        return sys.executable

    def host_runner(self, ctx: RuntimeContext) -> Any:
        return step("packager.runtime_steps:onnxruntime_runner")(ctx)

    def host_reference(self, ctx: RuntimeContext) -> Any:
        return step("packager.runtime_steps:onnxruntime_reference")(ctx)

    def convert(self, ctx: RuntimeContext) -> None:
        """Phone profiles ([mobile]): the model the app loads, model.ort, converted by onnxruntime's own tool, with
        the operators and types a reduced-size runtime build needs; checked against the app runtimes the profile
        pins, and rated for NNAPI and CoreML by the runtime's mobile usability check.

        From here on the bundle's runner (verify, fit, the smoke test) loads model.ort, as the app does.
        model.onnx stays in the bundle: `packager inspect` reads it, and an app on another runtime release
        converts it with that release (an .ort file is read by its writer's format version and newer only:
        profiles/runtimes/onnxruntime.toml). A multi-component model (an encoder-decoder) gets one .ort file per
        component beside its .onnx file, and one reduced-build configuration for all of them: the app's runtime
        loads them all.

        A model with memory-mapped lookup tables (ctx.mapped_files: an E-class model's per-layer embeddings) is not
        converted: the app loads model.onnx and its external data files, as run.py does (mobile.loads_onnx)."""
        if not self.converts(ctx.profile):
            return
        assert ctx.packaged_model is not None
        if mobile.loads_onnx(sum(ctx.mapped_files.values())):
            ctx.mobile = _as_onnx(ctx, ctx.packaged_model)
            return
        conversion = {"tool": "python -m onnxruntime.tools.convert_onnx_models_to_ort", "optimization_level": "all",
                      "optimization_style": "Fixed", "target_platform": mobile.target_platform(ctx.profile.device.arch),
                      "enable_type_reduction": True}
        config_path = ctx.stage_dir / mobile.REDUCED_BUILD_CONFIG
        if not ctx.components:
            _, config, record = _to_ort(ctx, ctx.packaged_model, ctx.recipe_name)   # model/model.ort (ORT_MODEL)
            config_path.write_text(config, encoding="utf-8")
            ctx.model_file = mobile.ORT_MODEL
            ctx.mobile = {**record, "conversion": conversion, "reduced_build_config": mobile.REDUCED_BUILD_CONFIG}
            return
        records, configs = {}, []
        for c in ctx.components:
            assert c.packaged is not None
            _, config, records[c.name] = _to_ort(ctx, c.packaged, f"{c.recipe_name} {c.name}")
            c.file = records[c.name]["model"]
            configs.append(config)
        # The reduced build reads every `domain;opset;operators` line and takes the union of what they list
        # (tools/python/util/reduced_build_config_parser.py), so the components' configurations are concatenated.
        config_path.write_text("".join(configs), encoding="utf-8")
        decoder = records[ctx.components[-1].name]
        ctx.model_file = decoder["model"]
        ctx.mobile = {**decoder, "conversion": conversion, "reduced_build_config": mobile.REDUCED_BUILD_CONFIG,
                      "components": records}

    # ------------------------------------------------------------------ the device side

    def session_spec(self, profile: Profile, memory: Memory | None) -> dict[str, Any]:
        rt = profile.runtime
        options = {k: dict(v) for k, v in rt.provider_options.items()}
        workspace = gpu.trt_workspace(profile, memory)
        if workspace is not None:  # bounded by the budget's headroom once the fit stage has estimated it
            options[gpu.TRT]["trt_max_workspace_size"] = workspace["bytes"]
        return {"package": rt.package, "version": rt.version, "providers": list(rt.providers),
                "provider_options": options, "session": dataclasses.asdict(profile.session)}

    def device_files(self, profile: Profile) -> dict[str, Path]:
        package = targets_dir() / RUNNER_PACKAGE
        modules = {f"{RUNNER_PACKAGE}/{p.name}": p for p in sorted(package.glob("*.py"))}
        return {**{name: targets_dir() / name for name in RUNNER_FILES}, **modules}

    def write_bundle_files(self, ctx: RuntimeContext, stage: Path) -> None:
        if ctx.mobile and ctx.profile.mobile is not None and not ctx.components:
            # The app examples run one model on one sample; an encoder-decoder's loop has none yet.
            mob = ctx.mobile
            ctx.mobile["examples"] = mobile_examples.write_examples(
                stage, ctx.bundle_name, ctx.profile, ctx.io.to_dict(), ctx.sample_inputs[0], _sample_note(ctx),
                mob["usability"], [mob["model"], *mob.get("external_data", [])], mob.get("mapped_files", []))
        workspace = gpu.trt_workspace(ctx.profile, ctx.memory)
        if workspace is not None and ctx.memory is not None:
            ctx.memory = dataclasses.replace(ctx.memory, tensorrt_workspace=workspace)

    def readme(self, ctx: RuntimeContext) -> str:
        return _phone_readme(ctx) + _gpu_readme(ctx)


def _check_mobile(m: Mobile, where: str) -> None:
    for key in ("android_version", "ios_version"):
        if not re.fullmatch(r"\d+\.\d+\.\d+", getattr(m, key)):
            raise key_error(where, f"mobile.{key}", f"must be an exact version such as \"1.27.0\", got "
                            f"{getattr(m, key)!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+", m.android_package):
        raise key_error(where, "mobile.android_package", f"must be Maven coordinates GROUP:ARTIFACT, got "
                        f"{m.android_package!r}")
    if not m.ios_swift_package.startswith("https://"):
        raise key_error(where, "mobile.ios_swift_package", f"must be an https:// repository URL, got "
                        f"{m.ios_swift_package!r}")
    for platform in ("android", "ios"):
        known = mobile.PROVIDERS[platform]   # what the examples can write, per platform
        for i, name in enumerate(getattr(m, f"{platform}_providers")):
            if name not in known:
                raise key_error(where, f"mobile.{platform}_providers[{i}]", f"names {name!r}, which the {platform} "
                                f"example cannot add{did_you_mean(name, list(known))}; known: {', '.join(known)}")


def _to_ort(ctx: RuntimeContext, onnx_path: Path, what: str) -> tuple[Path, str, dict[str, Any]]:
    """onnx_path converted to <stem>.ort beside it: the .ort file, its reduced-build configuration and its record."""
    import onnxruntime

    repacked = mobile.repack_int4(onnx_path)  # the ORT format has no 4-bit tensor type
    scratch = ctx.work_dir / "ort-format"
    shutil.rmtree(scratch, ignore_errors=True)
    converted = mobile.convert(onnx_path, scratch, ctx.profile.device.arch)
    ort_path = onnx_path.with_suffix(".ort")
    shutil.move(converted.model, ort_path)
    config = mobile.portable_config(converted.config.read_text(encoding="utf-8"))
    shutil.rmtree(scratch, ignore_errors=True)
    facts, format_version = mobile.ort_facts(ort_path, f"the {what} {ort_path.name}")
    record = {
        "model": f"model/{ort_path.name}",
        "onnx_model": f"model/{onnx_path.name}",
        "ort_format_version": format_version,
        "converted_with": f"onnxruntime {onnxruntime.__version__}",
        **({"repacked_int4_tables": repacked} if repacked else {}),
        "app_runtimes": mobile.check_apps(facts, format_version, ctx.profile),
        "usability": mobile.usability(onnx_path, ctx.work_dir),
    }
    return ort_path, config, record


def _as_onnx(ctx: RuntimeContext, onnx_path: Path) -> dict[str, Any]:
    """The record of a model the app loads as it is (mobile.loads_onnx): its files, checked against the app runtimes
    as an ONNX file, and rated for NNAPI and CoreML. No int4 repacking (that is the ORT format's) and no reduced-build
    configuration (a reduced build reads the ORT format only)."""
    model = load(onnx_path)
    # the files its initializers name, and those of the tables whose rows the loop reads (packager/row_feed.py)
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
                  | set(ctx.mapped_files))
    facts = facts_of(model, f"the {ctx.recipe_name} {onnx_path.name}")
    return {
        "model": f"model/{onnx_path.name}",
        "onnx_model": f"model/{onnx_path.name}",
        "format": "onnx",
        "external_data": [f"model/{name}" for name in data],
        "mapped_files": [f"model/{name}" for name in sorted(ctx.mapped_files)],
        "why_onnx": "the model's lookup tables stay in their files, read a row at a time; the ORT format would hold "
                    "them in its flatbuffer, resident (packager/mobile.py loads_onnx)",
        "app_runtimes": mobile.check_apps(facts, None, ctx.profile),
        "usability": mobile.usability(onnx_path, ctx.work_dir),
    }


def _sample_note(ctx: RuntimeContext) -> str:
    return family_for(ctx.io.kind).sample_note(ctx.texts)


MiB = 2**20


def _phone_readme(ctx: RuntimeContext) -> str:
    if not ctx.mobile or ctx.profile.mobile is None:
        return ""
    m, mob = ctx.profile.mobile, ctx.mobile
    android, ios = (next((e for e in mob.get("examples", []) if e.startswith(f"{d}/") and not e.endswith(".md")), "")
                    for d in ("android", "ios"))
    examples = (f"`{android}` and `{ios}` load it with this profile's session options and providers and run the "
                "first\nsample; `android/README.md` and `ios/README.md` give the dependency lines. Neither was "
                "compiled by packager.") if android else (
        "No app example is generated for a model of several components yet: the app loads each `.ort` file that\n"
        "`manifest.json` lists under `runtime.components`, with the session options there, and runs run.py's loop.")
    verdict = mob["usability"].get("verdict") or f"not rated ({mob['usability'].get('error', '')})"
    if mob.get("format") == "onnx":
        return _phone_onnx_readme(ctx, examples, verdict)
    converter = mob['converted_with']
    return f"""
## In a phone app

The app loads `{mob['model']}` (ORT format {mob['ort_format_version']}, converted by {converter}) with
`{m.android_package}:{m.android_version}` on Android, or the `{m.ios_pod}` pod / Swift package {m.ios_version} on iOS.
{examples}

- Reduced-size runtime: `{mob['reduced_build_config']}` lists the operators and types the model needs, for
  ONNX Runtime's `build.py --minimal_build --include_ops_by_config` at the converter's release ({converter}).
- NNAPI and CoreML, as the runtime's mobile usability check rates this model: {verdict}.
- `model/model.onnx` is the model before conversion: for an app on another runtime release, convert it with that
  release (`python -m onnxruntime.tools.convert_onnx_models_to_ort --enable_type_reduction model/model.onnx`).
- `python smoke_test.py` runs `{mob['model']}` with the Python runtime, on a computer (or Termux): the checks an app
  does not run.
"""


def _phone_onnx_readme(ctx: RuntimeContext, examples: str, verdict: str) -> str:
    """A model the app loads as model.onnx (packager/mobile.py loads_onnx): which packages read it, and why."""
    assert ctx.profile.mobile is not None
    m, mob = ctx.profile.mobile, ctx.mobile
    files = ", ".join(f"`{f}`" for f in mob["external_data"])
    mapped = ", ".join(f"`{f}`" for f in mob["mapped_files"])
    return f"""
## In a phone app

The app loads `{mob['model']}` and the data files it reads ({files}; all in one folder) with
`{m.android_package}:{m.android_version}` on Android, or the `{m.ios_pod}` pod / Swift package {m.ios_version} on iOS:
ONNX Runtime's full packages, which read ONNX files.
{examples}

- Not the ORT format: {mapped} holds lookup tables read a row at a time (a decoder's loop feeds the model each pass's
  rows, as the examples' `readRows` does; a table left in the graph is memory-mapped), where an `.ort` file holds
  every weight inside its flatbuffer, read whole at load. So there is no
  `model.ort` and no reduced-build configuration: a reduced-size build (`--minimal_build`) and the discontinued
  onnxruntime-mobile packages read the ORT format only.
- NNAPI and CoreML, as the runtime's mobile usability check rates this model: {verdict}.
- `python smoke_test.py` runs `{mob['model']}` with the Python runtime, on a computer (or Termux): the checks an app
  does not run.
"""


def _gpu_readme(ctx: RuntimeContext) -> str:
    p = ctx.profile
    if gpu.TRT not in p.runtime.providers:
        return ""
    workspace = (ctx.memory.tensorrt_workspace if ctx.memory else None) or {}
    bound = f"{workspace['bytes'] / MiB:.0f} MiB" if workspace else "the profile's figure"
    text = f"""
## On the GPU

TensorRT builds its engines on the first load (minutes) and caches them under
`$XDG_CACHE_HOME/packager-bundle/trt-engines` (default `~/.cache`); later loads reuse them. Its build workspace
(`trt_max_workspace_size`) is bounded to {bound}: the profile's ceiling, or less where the memory budget leaves
less after the measured peak, the CUDA context and the engine's copy of the weights. Without the GPU providers
(`onnxruntime` installed beside `onnxruntime-gpu` leaves only the CPU one) the smoke test runs on the CPU and says
the GPU path was not exercised.
"""
    if p.os.container:
        image = gpu.image_name(ctx.bundle_name)
        text += f"""
In a container on the device (Docker with the NVIDIA runtime; base image `{p.os.container}`):

    docker build -t {image} .
    docker run --rm --runtime nvidia -v {image}-cache:/cache {image}    # the smoke test; engines cached in the volume
"""
    return text
