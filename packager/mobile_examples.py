"""The Android (Kotlin) and iOS (Swift) examples of a phone bundle, rendered from the templates in targets/mobile/:
the app's session with the providers the usability check rates (packager/mobile.py), and the model's inputs filled
from the bundle's sample."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.mobile import gated_out
from packager.paths import targets_dir
from packager.profile_types import Profile
from packager.row_tables import RowTable, row_tables


def class_name(name: str) -> str:
    """A Kotlin/Swift type name from the bundle name: "silero_vad" -> "SileroVadModel"."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    base = "".join(w[:1].upper() + w[1:] for w in words) or "Packaged"
    return ("M" + base if base[0].isdigit() else base) + "Model"


def render(template: str, values: dict[str, str]) -> str:
    """Fill {{key}} placeholders; every placeholder must have a value."""
    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder {m.group(1)!r} has no value")
        return values[m.group(1)]
    return re.sub(r"\{\{([a-z_]+)\}\}", fill, template)


def _template(name: str) -> str:
    return (targets_dir() / "mobile" / name).read_text(encoding="utf-8")


INLINE_MAX = 64  # sample values written into the example up to this many elements; larger tensors are zeros


@dataclasses.dataclass(frozen=True)
class ExampleInput:
    name: str
    dtype: str                     # numpy name: float32, int64, int32 ...
    shape: tuple[int, ...]
    values: list[Any] | None       # None: zeros of the shape


def example_inputs(io: dict[str, Any], sample: dict[str, np.ndarray]) -> list[ExampleInput]:
    """The model's inputs with the first sample's concrete shapes (and small tensors' values)."""
    result = []
    for spec in io["inputs"]:
        value = sample.get(spec["name"])
        if value is None:
            shape = tuple(d if isinstance(d, int) else 1 for d in spec["shape"])
            result.append(ExampleInput(spec["name"], spec["dtype"], shape, None))
            continue
        values = value.ravel().tolist() if value.size <= INLINE_MAX and value.any() else None
        result.append(ExampleInput(spec["name"], str(value.dtype), tuple(int(d) for d in value.shape), values))
    return result


def _kotlin_literal(dtype: str, v: Any) -> str:
    return f"{float(v)!r}f" if dtype == "float32" else str(int(v))


def kotlin_input(i: ExampleInput) -> str:
    kinds = {"float32": ("FloatBuffer", "floatArrayOf", "FloatArray"),
             "int64": ("LongBuffer", "longArrayOf", "LongArray"),
             "int32": ("IntBuffer", "intArrayOf", "IntArray"),
             "uint8": ("ByteBuffer", "byteArrayOf", "ByteArray")}
    shape = f"longArrayOf({', '.join(str(d) for d in i.shape)})"
    if i.dtype not in kinds:
        return (f"            // {i.name}: {i.dtype} {list(i.shape)}: "
                "create it with OnnxTensor.createTensor for that type")
    buffer, array_of, array = kinds[i.dtype]
    n = int(np.prod(i.shape)) if i.shape else 1
    data = (f"{array_of}({', '.join(_kotlin_literal(i.dtype, v) for v in i.values)})" if i.values is not None
            else f"{array}({n})")
    if i.dtype == "uint8":   # bytes: the Java API takes them with their type (a multimodal decoder's soft_mask)
        return (f'            "{i.name}" to OnnxTensor.createTensor(env, ByteBuffer.wrap({data}), {shape}, '
                "OnnxJavaType.UINT8),")
    return f'            "{i.name}" to OnnxTensor.createTensor(env, {buffer}.wrap({data}), {shape}),'


def _swift_literal(dtype: str, v: Any) -> str:
    return repr(float(v)) if dtype == "float32" else str(int(v))


def swift_input(i: ExampleInput) -> str:
    kinds = {"float32": ("Float", ".float"), "int64": ("Int64", ".int64"), "int32": ("Int32", ".int32"),
             "uint8": ("UInt8", ".uInt8")}
    shape = f"[{', '.join(str(d) for d in i.shape)}]"
    if i.dtype not in kinds:
        return (f"            // {i.name}: {i.dtype} {list(i.shape)}: "
                "create it with ORTValue(tensorData:elementType:shape:)")
    swift_type, element = kinds[i.dtype]
    n = int(np.prod(i.shape)) if i.shape else 1
    data = (f"[{', '.join(_swift_literal(i.dtype, v) for v in i.values)}] as [{swift_type}]" if i.values is not None
            else f"[{swift_type}](repeating: 0, count: {n})")
    return f'            "{i.name}": try Self.tensor({data}, shape: {shape}, type: {element}),'


# A table's dtype as each API names it (ai.onnxruntime.OnnxJavaType, ORTTensorElementDataType)
_JAVA_TYPES = {"float32": "FLOAT", "float16": "FLOAT16", "int8": "INT8", "uint8": "UINT8", "int32": "INT32",
               "int64": "INT64"}
_SWIFT_TYPES = {"float32": ".float", "float16": ".float16", "int8": ".int8", "uint8": ".uInt8", "int32": ".int32",
                "int64": ".int64"}


def _ids(inputs: list[ExampleInput]) -> ExampleInput:
    return next(i for i in inputs if i.name == "input_ids")


def kotlin_rows(tables: list[RowTable], inputs: list[ExampleInput]) -> tuple[str, str]:
    """The ids the sample's tables are read for, and each table's input (packager/row_feed.py): Kotlin lines."""
    if not tables:
        return "", ""
    ids = _ids(inputs)
    n = int(np.prod(ids.shape))
    data = f"longArrayOf({', '.join(str(int(v)) for v in ids.values)})" if ids.values is not None else f"LongArray({n})"
    lines = [f'            "{t.input}" to OnnxTensor.createTensor(env, readRows("{t.file}", {t.offset}L, '
             f'{t.row_bytes}, {t.rows}L, ids), longArrayOf({", ".join(str(d) for d in (*ids.shape, *t.row))}), '
             f"OnnxJavaType.{_JAVA_TYPES[t.dtype]})," for t in tables]
    return f"        val ids = {data}   // the sample's input_ids: the tables' rows are theirs\n", "\n".join(lines)


def swift_rows(tables: list[RowTable], inputs: list[ExampleInput]) -> tuple[str, str]:
    """kotlin_rows' lines in Swift."""
    if not tables:
        return "", ""
    ids = _ids(inputs)
    n = int(np.prod(ids.shape))
    data = (f"[{', '.join(str(int(v)) for v in ids.values)}] as [Int64]" if ids.values is not None
            else f"[Int64](repeating: 0, count: {n})")
    lines = [f'            "{t.input}": try readRows("{t.file}", offset: {t.offset}, rowBytes: {t.row_bytes}, '
             f'rows: {t.rows}, ids: ids, shape: [{", ".join(str(d) for d in (*ids.shape, *t.row))}], '
             f"type: {_SWIFT_TYPES[t.dtype]})," for t in tables]
    return f"        let ids: [Int64] = {data}   // the sample's input_ids: the tables' rows are theirs\n", \
        "\n".join(lines)


_KOTLIN_OPT = {"disable": "NO_OPT", "basic": "BASIC_OPT", "extended": "EXTENDED_OPT", "all": "ALL_OPT"}


_SWIFT_OPT = {"disable": ".none", "basic": ".basic", "extended": ".extended", "all": ".all"}


def _options(profile: Profile, provider: str) -> dict[str, str]:
    return {k: (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in profile.runtime.provider_options.get(provider, {}).items()}


def kotlin_session(profile: Profile, verdict: dict[str, Any]) -> str:
    s = profile.session
    assert profile.mobile is not None
    lines = [f"setIntraOpNumThreads({s.intra_op_threads})",
             f"setInterOpNumThreads({s.inter_op_threads})",
             f"setOptimizationLevel(OrtSession.SessionOptions.OptLevel.{_KOTLIN_OPT[s.graph_optimization]})",
             f"setExecutionMode(OrtSession.SessionOptions.ExecutionMode.{s.execution_mode.upper()})",
             f"setCPUArenaAllocator({str(s.cpu_mem_arena).lower()})",
             f"setMemoryPatternOptimization({str(s.mem_pattern).lower()})"]
    lines += [f'addConfigEntry("{k}", "{v}")' for k, v in s.config.items()]
    out = [f"        options.{line}" for line in lines]
    for provider in profile.mobile.android_providers:
        why = gated_out(provider, verdict)
        opts = _options(profile, provider)
        if provider == "QNNExecutionProvider":
            opts = opts or {"backend_path": "libQnnHtp.so"}  # the Hexagon NPU (HTP) backend
        pairs = ", ".join(f'"{k}" to "{v}"' for k, v in opts.items())
        call = {"XnnpackExecutionProvider": f"addXnnpack(mapOf({pairs}))",
                "NnapiExecutionProvider": "addNnapi()",
                "QNNExecutionProvider": f"addQnn(mapOf({pairs}))"}.get(provider)
        if call is None:
            continue  # CPUExecutionProvider: always there
        if provider == "QNNExecutionProvider":
            out.append("        // QNN needs the com.microsoft.onnxruntime:onnxruntime-android-qnn artifact "
                       "and a QDQ model.")
        if why:
            out.append(f"        // Left out: {why}.")
            out.append(f"        // options.{call}")
        else:
            out.append(f"        options.{call}")
    return "\n".join(out)


def swift_session(profile: Profile, verdict: dict[str, Any]) -> str:
    s = profile.session
    assert profile.mobile is not None
    out = [f"        try options.setIntraOpNumThreads({s.intra_op_threads})",
           f"        try options.setGraphOptimizationLevel({_SWIFT_OPT[s.graph_optimization]})"]
    out += [f'        try options.addConfigEntry(withKey: "{k}", value: "{v}")' for k, v in s.config.items()]
    for provider in profile.mobile.ios_providers:
        opts = _options(profile, provider)
        if provider == "CoreMLExecutionProvider":
            block = ["let coreML = ORTCoreMLExecutionProviderOptions()",
                     *(f"coreML.{k} = {v}" for k, v in opts.items()),
                     "try options.appendCoreMLExecutionProvider(with: coreML)"]
        elif provider == "XnnpackExecutionProvider":
            block = ["let xnnpack = ORTXnnpackExecutionProviderOptions()",
                     *(f"xnnpack.{k} = {v}" for k, v in opts.items()),
                     "try options.appendXnnpackExecutionProvider(with: xnnpack)"]
        else:
            continue
        why = gated_out(provider, verdict)
        if why:
            out.append(f"        // Left out: {why}.")
            out += [f"        // {line}" for line in block]
        else:
            out += [f"        {line}" for line in block]
    return "\n".join(out)


def _output(io: dict[str, Any]) -> tuple[str, str]:
    """The output the examples return, and its dtype."""
    outputs = {o["name"]: o for o in io["outputs"]}
    name = next(iter(io.get("primary_outputs") or io.get("checked_outputs") or list(outputs)))
    return name, outputs.get(name, {}).get("dtype", "float32")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def file_values(stage: Path, files: list[str], mapped: list[str], fed: bool = False) -> dict[str, str]:
    """The placeholders that name what the app loads: `files`, bundle paths, the model first and the data files it
    reads beside it (an .onnx with external data: packager/mobile.py loads_onnx); `mapped`, those of its lookup
    tables: memory-mapped, or read a row at a time by the example (`fed`: the model takes the rows as inputs)."""
    model = Path(files[0])
    names = [Path(f).name for f in files]
    values = {"model_name": model.name, "model_stem": model.stem, "model_ext": model.suffix.lstrip("."),
              "model_files": _and(files), "model_files_md": _and([f"`{f}`" for f in files]),
              "kotlin_files": ", ".join(f'"{n}" to {(stage / f).stat().st_size}L' for n, f in zip(names, files)),
              "files_note": "", "files_note_swift": "", "format_note": "",
              "reduced_build": " For a reduced-size runtime built from source, use the bundle's "
                               "`model/required_operators_and_types.config` (see the bundle's README)."}
    if len(files) == 1:
        return values
    maps = _and([Path(f).name for f in mapped]) if mapped else "none of them"
    note = ([f"{model.name} reads {_and(names[1:])} from its own folder; onnxruntime memory-maps {maps},",
             "of which a run makes resident only the pages of the rows its tokens read."] if not fed else
            [f"The files beside {model.name} go in its folder: it takes the rows of the lookup tables in {maps}",
             "as inputs, which readRows reads there for a pass's tokens (never the tables whole)."])
    size = sum((stage / f).stat().st_size for f in mapped) / 2**20
    values |= {
        "files_note": "".join(f"        // {line}\n" for line in note), "reduced_build": "",
        "files_note_swift": "".join(f"        // {line}\n" for line in note),
        "format_note": "\n" + textwrap.fill(
            f"The app loads `{model.name}`, not an ORT-format `.ort` file: {maps} ({size:,.0f} MiB) stays on "
            + ("storage, read a row at a time (`readRows` in the examples: feed every pass of your generation "
               "loop its tokens' rows that way)" if fed else
               "storage, memory-mapped, where the ORT format would hold it inside its flatbuffer, resident")
            + ". The "
            "packages above are ONNX Runtime's full builds, which read ONNX files (onnxruntime-android "
            "\"includes support for all types and operators, for ONNX format models\": its description on Maven "
            "Central; the pod and the Swift package wrap the same release's onnxruntime-c). A reduced-size build "
            "(`build.py --minimal_build`) and the discontinued onnxruntime-mobile packages (last release 1.18.0) "
            f"read the ORT format only and cannot load this model. Keep {_and(names)} in one folder; where they are "
            "too large to ship inside the app, download them into the folder the example loads from.", 115,
            break_on_hyphens=False) + "\n"}
    return values


def write_examples(stage: Path, bundle_name: str, profile: Profile, io: dict[str, Any],
                   sample: dict[str, np.ndarray], sample_note: str, verdict: dict[str, Any], files: list[str],
                   mapped: list[str]) -> list[str]:
    """android/ and ios/ in the staged bundle: a class that loads the model the app loads (`files`: bundle paths,
    model.ort, or model.onnx and its data files) with the pinned runtime, the profile's session options and
    providers, and runs the first sample; a README with the dependency lines."""
    assert profile.mobile is not None
    m = profile.mobile
    name = class_name(bundle_name.removesuffix(f"-{profile.name}"))
    inputs = example_inputs(io, sample)
    tables = row_tables(onnx.load(stage / files[0], load_external_data=False)) if files[0].endswith(".onnx") else []
    kotlin_ids, kotlin_fed = kotlin_rows(tables, inputs)
    swift_ids, swift_fed = swift_rows(tables, inputs)
    output, dtype = _output(io)
    floats = dtype == "float32"
    common = {
        "class_name": name,
        "bundle": bundle_name,
        "target": profile.name,
        "output": output,
        "sample_note": sample_note,
        **file_values(stage, files, mapped, bool(tables)),
        "maven": f"{m.android_package}:{m.android_version}",
        "android_version": m.android_version,
        "ios_pod": m.ios_pod,
        "ios_version": m.ios_version,
        "swift_package": m.ios_swift_package,
        "verdict": verdict.get("verdict", verdict.get("error", "")),
    }
    kotlin = render(_template("Model.kt.template"), {
        **common,
        "session_options": kotlin_session(profile, verdict),
        "inputs": "\n".join([*(kotlin_input(i) for i in inputs), *filter(None, [kotlin_fed])]),
        "row_ids": kotlin_ids,
        "read_rows": _template("rows.kt.part") if tables else "",
        "return_type": "FloatArray" if floats else "LongArray",
        "read_output": (f"                val buffer = output.{'floatBuffer' if floats else 'longBuffer'}\n"
                        f"                return {'FloatArray' if floats else 'LongArray'}(buffer.remaining())"
                        ".also { buffer.get(it) }"),
    })
    swift = render(_template("Model.swift.template"), {
        **common,
        "session_options": swift_session(profile, verdict),
        "inputs": "\n".join([*(swift_input(i) for i in inputs), *filter(None, [swift_fed])]),
        "row_ids": swift_ids,
        "read_rows": render(_template("rows.swift.part"), {"class_name": name}) if tables else "",
        "element": "Float" if floats else "Int64",
    })
    written = []
    for folder, filename, text in (("android", f"{name}.kt", kotlin), ("ios", f"{name}.swift", swift),
                                   ("android", "README.md", render(_template("android-README.md.template"), common)),
                                   ("ios", "README.md", render(_template("ios-README.md.template"), common))):
        (stage / folder).mkdir(exist_ok=True)
        (stage / folder / filename).write_text(text, encoding="utf-8")
        written.append(f"{folder}/{filename}")
    return written
