"""mobile: for phone profiles ([mobile]), the model the app loads: model.ort, converted by onnxruntime's own tool,
with the operators and types a reduced-size runtime build needs; checked against the app runtimes the profile
pins, and rated for NNAPI and CoreML by the runtime's mobile usability check.

From here on the bundle's runner (verify, fit, the smoke test) loads model.ort, as the app does. model.onnx stays
in the bundle: `packager inspect` reads it, and an app on another runtime release converts it with that release
(an .ort file is read by its writer's format version and newer only: profiles/runtimes/onnxruntime.toml).

A multi-component model (an encoder-decoder) gets one .ort file per component beside its .onnx file, and one
reduced-build configuration for all of them: the app's runtime loads them all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packager import mobile
from packager.context import Context


def _convert(ctx: Context, onnx_path: Path, what: str) -> tuple[Path, str, dict[str, Any]]:
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


def run(ctx: Context) -> None:
    if ctx.profile.mobile is None:
        return
    assert ctx.packaged_model is not None
    conversion = {"tool": "python -m onnxruntime.tools.convert_onnx_models_to_ort", "optimization_level": "all",
                  "optimization_style": "Fixed", "target_platform": mobile.target_platform(ctx.profile.device.arch),
                  "enable_type_reduction": True}
    config_path = ctx.stage_dir / mobile.REDUCED_BUILD_CONFIG
    if not ctx.components:
        _, config, record = _convert(ctx, ctx.packaged_model, ctx.recipe_name)   # model/model.ort (ORT_MODEL)
        config_path.write_text(config, encoding="utf-8")
        ctx.model_file = mobile.ORT_MODEL
        ctx.mobile = {**record, "conversion": conversion, "reduced_build_config": mobile.REDUCED_BUILD_CONFIG}
        return
    records, configs = {}, []
    for c in ctx.components:
        assert c.packaged is not None
        _, config, records[c.name] = _convert(ctx, c.packaged, f"{c.recipe_name} {c.name}")
        c.file = records[c.name]["model"]
        configs.append(config)
    # The reduced build reads every `domain;opset;operators` line and takes the union of what they list
    # (tools/python/util/reduced_build_config_parser.py), so the components' configurations are concatenated.
    config_path.write_text("".join(configs), encoding="utf-8")
    decoder = records[ctx.components[-1].name]
    ctx.model_file = decoder["model"]
    ctx.mobile = {**decoder, "conversion": conversion, "reduced_build_config": mobile.REDUCED_BUILD_CONFIG,
                  "components": records}
