"""mobile: for phone profiles ([mobile]), the model the app loads: model.ort, converted by onnxruntime's own tool,
with the operators and types a reduced-size runtime build needs; checked against the app runtimes the profile
pins, and rated for NNAPI and CoreML by the runtime's mobile usability check.

From here on the bundle's runner (verify, fit, the smoke test) loads model.ort, as the app does. model.onnx stays
in the bundle: `packager inspect` reads it, and an app on another runtime release converts it with that release
(an .ort file is read by its writer's format version and newer only: profiles/runtimes/onnxruntime.toml).
"""

from __future__ import annotations

import shutil

from packager import mobile
from packager.context import Context


def run(ctx: Context) -> None:
    if ctx.profile.mobile is None:
        return
    assert ctx.packaged_model is not None
    import onnxruntime

    repacked = mobile.repack_int4(ctx.packaged_model)  # the ORT format has no 4-bit tensor type
    scratch = ctx.work_dir / "ort-format"
    shutil.rmtree(scratch, ignore_errors=True)
    converted = mobile.convert(ctx.packaged_model, scratch, ctx.profile.device.arch)
    model_dir = ctx.stage_dir / "model"
    shutil.move(converted.model, model_dir / "model.ort")
    config = ctx.stage_dir / mobile.REDUCED_BUILD_CONFIG
    config.write_text(mobile.portable_config(converted.config.read_text(encoding="utf-8")), encoding="utf-8")
    shutil.rmtree(scratch, ignore_errors=True)

    facts, format_version = mobile.ort_facts(model_dir / "model.ort", f"the {ctx.recipe_name} model.ort")
    apps = mobile.check_apps(facts, format_version, ctx.profile)
    ctx.model_file = mobile.ORT_MODEL
    ctx.mobile = {
        "model": mobile.ORT_MODEL,
        "onnx_model": "model/model.onnx",
        "ort_format_version": format_version,
        "converted_with": f"onnxruntime {onnxruntime.__version__}",
        "conversion": {"tool": "python -m onnxruntime.tools.convert_onnx_models_to_ort", "optimization_level": "all",
                       "optimization_style": "Fixed", "target_platform": mobile.target_platform(ctx.profile.device.arch),
                       "enable_type_reduction": True},
        "reduced_build_config": mobile.REDUCED_BUILD_CONFIG,
        **({"repacked_int4_tables": repacked} if repacked else {}),
        "app_runtimes": apps,
        "usability": mobile.usability(ctx.packaged_model, ctx.work_dir),
    }
