"""Phone bundles: the ORT-format model the app loads, its reduced-build configuration, the runtime's own
mobile usability check, and Android (Kotlin) and iOS (Swift) examples generated from targets/mobile/.

    loads_onnx(mapped_bytes)                        # the rule: memory-mapped tables keep model.onnx, no .ort
    repack_int4(model_onnx)                         # int4 tables as uint8: the ORT format has no 4-bit type
    result = convert(model_onnx, out_dir, arch)     # model.ort + required_operators_and_types.config
    facts, version = ort_facts(result.model)        # operators of the optimized graph, ORT format version
    check_apps(facts, version, profile)             # against the app runtimes [mobile] pins (exit 11)
    verdict = usability(model_onnx, work_dir)       # NNAPI / CoreML coverage, as the runtime's tool rates it
    write_examples(stage, ...)                      # android/, ios/ in the staged bundle (mobile_examples.py)

The conversion and the check are onnxruntime's own tools (onnxruntime.tools.convert_onnx_models_to_ort and
onnxruntime.tools.mobile_helpers.usability_checker), called in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import mmap
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from packager.compat import ONNX_DOMAIN, Compatibility, ModelFacts, check, load_table, minor, version_key
from packager.errors import ExitCode, PackagerError
from packager.paths import profiles_dir
from packager.profile_types import Mobile, Profile

ORT_MODEL = "model/model.ort"
REDUCED_BUILD_CONFIG = "model/required_operators_and_types.config"

# The providers each example can add (the names runtime.providers uses), in the API each platform has:
# Java's SessionOptions.addXnnpack / addNnapi / addQnn, Objective-C's appendXnnpackExecutionProvider /
# appendCoreMLExecutionProvider. CPU is always there and adds nothing.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "android": ("XnnpackExecutionProvider", "NnapiExecutionProvider", "QNNExecutionProvider", "CPUExecutionProvider"),
    "ios": ("CoreMLExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"),
}
# The usability checker's rating that decides whether an example adds NNAPI or CoreML.
RATED_BY = {"NnapiExecutionProvider": ("NNAPI",),
            "CoreMLExecutionProvider": ("CoreML NeuralNetwork", "CoreML MLProgram")}


# ---------------------------------------------------------------------------------------------
# Which file the app loads


def loads_onnx(mapped_bytes: int) -> bool:
    """The one rule of what a phone app loads: model.onnx with its external data files where the model has
    memory-mapped lookup tables (`mapped_bytes` > 0: estimate.mapped_tables, an E-class model's per-layer embeddings;
    plan's mapped weights), model.ort otherwise. The runtime's conversion (runtimes/onnxruntime.py), and through it the
    manifest, the app examples and the estimate (no ORT-format buffer), and plan's load buffer follow it.

    Why: the ORT format holds every initializer inside its flatbuffer (onnxruntime/core/flatbuffers/schema/ort.fbs),
    which the runtime reads whole at load, so a mapped table would be resident (E2B's is 2,240 MiB), and a flatbuffer
    cannot pass 2 GiB (32-bit offsets). From an .onnx file onnxruntime memory-maps external data stored at aligned
    offsets ("for models running on CPU, ORT will try to use mmap to load external initializers", 4 KiB alignment
    outside Windows: include/onnxruntime/core/graph/model_saving_options.h), and the packages the profiles pin are full
    builds that read ONNX files (onnxruntime-android "includes support for all types and operators, for ONNX format
    models", its Maven description; onnxruntime-objc over onnxruntime-c). The reduced builds read the ORT format only
    (the onnxruntime-mobile packages, last released at 1.18.0: "the ONNX model must be converted to ORT format";
    `build.py --minimal_build`), so such a bundle has no reduced-build configuration."""
    return mapped_bytes > 0


# ---------------------------------------------------------------------------------------------
# Conversion


@dataclasses.dataclass(frozen=True)
class Converted:
    model: Path                    # model.ort
    config: Path                   # required_operators_and_types.config
    log: str                       # what the converter printed


def target_platform(arch: str) -> str | None:
    """The converter's --target_platform: "arm" keeps int8 QDQ as int8 (ARM's fast path) and leaves out the
    x86-only NCHWc layout."""
    return "arm" if arch in ("aarch64", "arm64", "armv7l") else None


def convert(onnx_path: Path, out_dir: Path, arch: str) -> Converted:
    """onnxruntime.tools.convert_onnx_models_to_ort on one model: graph optimizations at level "all", saved as
    they are (the "Fixed" style: no runtime optimizations to replay), with the operators and types it needs."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # the tool logs INFO to stderr
    out_dir.mkdir(parents=True, exist_ok=True)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # the tool prints its progress: stdout stays ours (--json)
            convert_onnx_models_to_ort(onnx_path, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target_platform(arch), enable_type_reduction=True)
    except Exception as e:
        reason = str(e).split("Status Message: ")[-1].splitlines()[0][:300] if str(e) else type(e).__name__
        raise PackagerError(f"converting the model to the ORT format failed ({reason}); the app cannot load it: try "
                            "another recipe with --recipe.", ExitCode.TOOL_FAILED) from None
    model = out_dir / onnx_path.with_suffix(".ort").name
    configs = sorted(out_dir.glob("*.required_operators_and_types.config"))
    if not model.is_file() or len(configs) != 1:
        raise PackagerError(f"the ORT format converter wrote no {model.name} and configuration "
                            f"({printed.getvalue()[-200:]}); report it with --debug.", ExitCode.TOOL_FAILED)
    return Converted(model, configs[0], printed.getvalue())


def _all_nodes(graph: Any) -> list[Any]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                nodes += _all_nodes(sub)
    return nodes


def repack_int4(onnx_path: Path) -> list[str]:
    """Rewrite GatherBlockQuantized's int4 tables as uint8 with two 4-bit values a byte, in place; the names of
    the tables rewritten. The ORT format has no 4-bit tensor type (its TensorDataType stops at the float8 types:
    onnxruntime/core/flatbuffers/schema/ort.fbs), so an INT4 initializer converts but does not load ("Unsupported
    tensor data type"); the operator takes uint8 data too ("for bits < 8 the values are packed along the last
    dimension (low-order bits first)", default zero point 2^(bits-1) = 8, its schema's doc). A symmetric int4
    value q (zero point 0) is stored as q + 8: the same number after dequantization."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path, load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    targets = {}
    # Subgraphs too: an encoder-decoder's merged decoder holds its nodes in If branches, its weights outside.
    for node in _all_nodes(model.graph):
        if node.op_type != "GatherBlockQuantized" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        if table.data_type not in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            continue
        if table.data_type == onnx.TensorProto.UINT4 or (len(node.input) > 3 and node.input[3]) or table.dims[-1] % 2:
            raise PackagerError(f"{table.name} is an asymmetric or odd-sized 4-bit table, which the ORT format cannot "
                                "hold (no 4-bit tensor type) and packager does not repack; set int4.symmetric = true "
                                "in the profile or choose --recipe int8-dynamic.", ExitCode.TOOL_FAILED)
        targets[table.name] = node
    if not targets:
        return []
    external = any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    model = onnx.load(onnx_path)  # with its weights, to write them back
    data_files = {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}
    for init in model.graph.initializer:
        if init.name in targets:
            q = numpy_helper.to_array(init).astype(np.int16) + 8  # int4 [-8, 7] -> [0, 15]
            packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
            init.CopyFrom(numpy_helper.from_array(packed, init.name))
    for name in data_files:  # onnx.save appends to an existing data file: start afresh
        (onnx_path.parent / name).unlink(missing_ok=True)
    onnx.save(model, onnx_path, save_as_external_data=external,
              location=f"{onnx_path.name}.data" if external else None)
    return sorted(targets)


def portable_config(text: str) -> str:
    """The configuration with its header naming the model inside the bundle, not the build host's temp path
    (lines starting with # are comments to the reduced build: tools/python/util/reduced_build_config_parser.py)."""
    lines = text.splitlines()
    out = [re.sub(r"^# - .*[/\\]([^/\\]+)$", r"# - \1", line) if line.startswith("# - ") else line for line in lines]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The ORT-format model's own facts


def ort_facts(path: Path, name: str | None = None) -> tuple[ModelFacts, str]:
    """IR version, opsets in use and operators (subgraphs included) of an .ort file, and its ORT format version,
    from its flatbuffer (onnxruntime's own schema bindings). Opset imports list every domain the writing runtime
    knew; only those its nodes use (and ai.onnx) are kept, so a domain nobody uses cannot fail a check."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
            raise PackagerError(f"{path.name} is not an ORT format model; rebuild the bundle.", ExitCode.BAD_INPUT)
        session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0)
        model = session.Model()
        ops: dict[tuple[str, str], int] = {}
        attributes: dict[tuple[str, str, str], set[Any]] = {}
        kinds = fbs.AttributeType.AttributeType

        def walk(graph: Any) -> None:
            for i in range(graph.NodesLength()):
                node = graph.Nodes(i)
                key = (node.Domain().decode() or ONNX_DOMAIN, node.OpType().decode())
                ops[key] = ops.get(key, 0) + 1
                for j in range(node.AttributesLength()):
                    attr = node.Attributes(j)
                    kind = attr.Type()
                    if kind == kinds.INT:
                        attributes.setdefault((*key, attr.Name().decode()), set()).add(attr.I())
                    elif kind == kinds.STRING:
                        attributes.setdefault((*key, attr.Name().decode()), set()).add(
                            attr.S().decode("utf-8", "replace"))
                    elif kind == kinds.GRAPH:
                        walk(attr.G())
                    elif kind == kinds.GRAPHS:
                        for k in range(attr.GraphsLength()):
                            walk(attr.Graphs(k))

        walk(model.Graph())
        used = {d for d, _ in ops} | {ONNX_DOMAIN}
        opsets: dict[str, int] = {}
        for i in range(model.OpsetImportLength()):
            imp = model.OpsetImport(i)
            domain = imp.Domain().decode() or ONNX_DOMAIN
            if domain in used:
                opsets[domain] = max(opsets.get(domain, 0), imp.Version())
        facts = ModelFacts(name or path.name, model.IrVersion(), opsets, ops, frozenset(),
                           {k: frozenset(v) for k, v in attributes.items()})
        return facts, (session.OrtVersion() or b"").decode()


def ort_format_since(version: str) -> tuple[str | None, str]:
    """The first onnxruntime release that reads ORT format `version`, and the source (runtime table)."""
    data = tomllib.loads((profiles_dir() / "runtimes" / "onnxruntime.toml").read_text(encoding="utf-8"))
    row = data.get("ort_format", {}).get(version)
    return (row["since"], row.get("source", "")) if isinstance(row, dict) else (None, "")


def app_runtimes(mobile: Mobile) -> list[tuple[str, str, str]]:
    """(package, version, the profile key that pins it) of the apps' runtimes."""
    android = mobile.android_package.split(":")[-1]
    return [(android, mobile.android_version, "mobile.android_version"),
            (mobile.ios_pod, mobile.ios_version, "mobile.ios_version")]


def check_apps(facts: ModelFacts, format_version: str | None, profile: Profile) -> list[dict[str, Any]]:
    """The .ort model against each app runtime the profile pins (its operators, and its ORT format version; None: the
    app loads the .onnx, loads_onnx, whose operators are all there is to check); PackagerError (exit 11) with one
    sentence when one cannot run it."""
    assert profile.mobile is not None
    results = []
    table = load_table()
    for package, version, setting in app_runtimes(profile.mobile):
        app = dataclasses.replace(profile,
                                  runtime=dataclasses.replace(profile.runtime, package=package, version=version))
        result: Compatibility = check(facts, app, table, setting=setting)
        if result.status == "unknown":
            raise PackagerError(result.reason.replace(f"(pinned by {profile.name})", f"({setting} of {profile.name})"),
                                ExitCode.BAD_PROFILE)
        if not result.ok:
            raise PackagerError(result.message(), ExitCode.RUNTIME_INCOMPATIBLE)
        if format_version is None:
            results.append(result.to_dict())
            continue
        since, source = ort_format_since(format_version)
        notes = list(result.notes)
        if since is None:
            notes.append(f"ORT format version {format_version or '(none)'} is not in packager's runtime table: whether "
                         f"{package} {version} reads it was not checked")
        elif version_key(version) < version_key(since):
            raise PackagerError(
                f"{Path(ORT_MODEL).name} is ORT format version {format_version}, which {package} {version} on "
                f"{profile.name} cannot read (it needs {minor(since)}.0 or newer; {source}); raise {setting} in the "
                "profile, or convert model/model.onnx with that release's onnxruntime "
                "(python -m onnxruntime.tools.convert_onnx_models_to_ort).", ExitCode.RUNTIME_INCOMPATIBLE)
        results.append({**result.to_dict(), "ort_format_version": format_version, "notes": notes})
    return results


# ---------------------------------------------------------------------------------------------
# The mobile usability check


def _quiet_logger() -> logging.Logger:
    log = logging.getLogger("packager.mobile.usability")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    return log


def usability(onnx_path: Path, work_dir: Path) -> dict[str, Any]:
    """What `python -m onnxruntime.tools.check_onnx_model_mobile_usability` concludes, per provider, as data:
    the model optimized to the BASIC level and shape-inferred as the tool does, then partitioned against the
    operators NNAPI and CoreML (NeuralNetwork and MLProgram) support. Ratings are the tool's: YES, MAYBE, NO;
    where the model has dynamic input shapes, also the rating it would get with them fixed."""
    import onnxruntime
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    log = _quiet_logger()
    folder = work_dir / "usability"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        optimized = folder / onnx_path.name
        optimize_model(onnx_path, optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        dynamic_inputs, _ = uc.check_shapes(model.graph, log)
        checks = {
            "NNAPI": uc.check_nnapi_partitions,
            "CoreML NeuralNetwork": lambda m, fixed: uc.check_coreml_partitions(
                m, fixed, "coreml_supported_neuralnetwork_ops.md"),
            "CoreML MLProgram": lambda m, fixed: uc.check_coreml_partitions(
                m, fixed, "coreml_supported_mlprogram_ops.md"),
        }
        providers = {}
        for name, partition in checks.items():
            info = partition(model, True)
            entry = {"rating": info.suitability().name, "nodes": info.num_nodes,
                     "supported_nodes": info.num_supported_nodes, "partitions": info.num_partitions,
                     "unsupported_ops": sorted(info.unsupported_ops),
                     "nodes_unsupported_for_dynamic_shapes": info.nodes_unsupported_due_to_dynamic_input}
            if entry["rating"] != "YES" and dynamic_inputs:
                fixed = partition(model, False)
                entry["rating_with_fixed_shapes"] = fixed.suitability().name
                entry["supported_nodes_with_fixed_shapes"] = fixed.num_supported_nodes
            providers[name] = entry
    except Exception as e:  # the tool is best effort: a model it cannot analyse still packages
        return {"tool": f"onnxruntime {onnxruntime.__version__} mobile usability checker", "error":
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    worth_trying = [n for n, e in providers.items()
                    if "NO" != e["rating"] or e.get("rating_with_fixed_shapes", "NO") != "NO"]
    return {
        "tool": f"onnxruntime {onnxruntime.__version__} mobile usability checker "
                "(python -m onnxruntime.tools.check_onnx_model_mobile_usability)",
        "dynamic_inputs": [i.name for i in dynamic_inputs],
        "providers": providers,
        "verdict": ("compare " + " and ".join(worth_trying) + " against the CPU provider on the device"
                    if worth_trying else "the CPU provider (XNNPACK where it takes nodes): NNAPI and CoreML would "
                    "split the model into too many partitions"),
    }


def _summary(entry: dict[str, Any]) -> str:
    share = entry["supported_nodes"] / entry["nodes"] if entry["nodes"] else 0.0
    return f"{entry['partitions']} partitions cover {share:.0%} of its {entry['nodes']} nodes"


def gated_out(provider: str, verdict: dict[str, Any]) -> str:
    """Why an example leaves `provider` out ("" when it adds it): the usability check rates the model NO for it."""
    names = RATED_BY.get(provider, ())
    rated = [verdict.get("providers", {}).get(n) for n in names]
    if not names or not all(rated):
        return ""
    if all(e["rating"] == "NO" and e.get("rating_with_fixed_shapes", "NO") == "NO" for e in rated):
        return (f"the mobile usability check rates this model NO for {' and '.join(names)} ("
                + "; ".join(f"{n}: {_summary(e)}" for n, e in zip(names, rated)) + ")")
    return ""
