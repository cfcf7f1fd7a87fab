"""A catalogue of bad inputs, each built here from a few onnx.helper calls and run through the CLI:
the documented exit code, one sentence naming the problem and the fix, nothing left in --out or in
the temporary folder, and never exit 1 (an internal error on user input is a bug)."""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from packager.cli import app
from packager.errors import ExitCode, PackagerError, disk_full
from packager.exporter_envs import GENAI, is_ready

# ---------------------------------------------------------------- the models


def identity(path: Path, dims: list[Any] | tuple[Any, ...] = (1, 4), elem: int = TensorProto.FLOAT) -> Path:
    """x -> Identity -> y, declaring `dims` and element type `elem` (any number, as a damaged file may)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, list(dims))],
                              [helper.make_tensor_value_info("y", elem, list(dims))])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def with_external_data(folder: Path, **fields: str) -> Path:
    """x @ w, w in weights.bin beside the model, its external_data entries then set to `fields`."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for key, value in fields.items():
        entry = next((e for e in entries if e.key == key), None) or entries.add()
        entry.key, entry.value = key, value
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def zero_bytes(tmp: Path) -> Path:
    path = tmp / "m" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"")
    return path


def deep_manifest(tmp: Path) -> Path:
    """An unpacked bundle whose manifest.json nests 200,000 lists deep."""
    bundle = tmp / "deep-rpi5"
    identity(bundle / "model" / "model.onnx")
    (bundle / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return bundle


# ---------------------------------------------------------------- running the CLI


def multimodal_without_pad(tmp: Path) -> Path:
    """A Gemma 4 multimodal folder (an E-class text decoder, a vision encoder) whose text_config's pad_token_id is
    null: the loop has nothing to put where the soft tokens go."""
    from safetensors.numpy import save_file
    folder = tmp / "m"
    folder.mkdir()
    text = {"model_type": "gemma4_text", "hidden_size": 64, "hidden_size_per_layer_input": 16, "pad_token_id": None}
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text,
              "vision_config": {"model_type": "gemma4_vision"}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    return folder


def cli(tmp: Path, *args: str) -> Any:
    """`packager ARGS` in this process, its work folders in tmp/tmp (which must end up empty)."""
    work = tmp / "tmp"
    work.mkdir(exist_ok=True)
    old, tempfile.tempdir = tempfile.tempdir, str(work)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        tempfile.tempdir = old


def command(tmp: Path, verb: str, model: Path) -> list[str]:
    if verb == "package":
        return ["package", str(model), "--target", "rpi5", "--out", str(tmp / "dist")]
    if verb == "check":
        return ["check", str(model), "--target", "rpi5", "--no-measure"]
    return ["inspect", str(model)]


def assert_refused(result: Any, tmp: Path, code: int, *phrases: str) -> None:
    """Exit `code`, one `error:` line holding one sentence with `phrases`, and nothing left behind."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception   # exited with its code: nothing escaped
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    sentence = errors[0].removeprefix("error: ")
    assert sentence.endswith(".") and not re.search(r"[.;]\s+[A-Z]", sentence), sentence
    for phrase in phrases:
        assert phrase in sentence, sentence
    assert_nothing_left(tmp)


def assert_nothing_left(tmp: Path) -> None:
    assert not (tmp / "dist").exists() or not any((tmp / "dist").iterdir()), list((tmp / "dist").iterdir())
    assert not (tmp / "tmp").exists() or not any((tmp / "tmp").iterdir()), list((tmp / "tmp").iterdir())


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]
    verbs: tuple[str, ...]          # the commands that read the input this far
    code: int                       # the documented exit code
    phrases: tuple[str, ...] = ()   # what the sentence must name


SOURCE = ("package", "check", "inspect")       # read by model_files.read_onnx: all three refuse it
SAMPLES = ("package", "check")                 # found when sample inputs are made: inspect shows it
CATALOGUE: dict[str, Case] = {
    # Dimensions no sample can have: the input, its shape and the --shape fix.
    "dims-1e12": Case(lambda t: identity(t / "m" / "model.onnx", [10**12, 4]), SAMPLES, 5,
                      ("'x'", "[1000000000000, 4]", "re-export", "--shape x=D1,D2")),
    "dims-2**62": Case(lambda t: identity(t / "m" / "model.onnx", [2**62, 4]), SAMPLES, 5,
                       ("'x'", f"[{2**62}, 4]", "--shape x=")),
    # Open dimensions: packager picks sizes (a negative one is open too, as onnxruntime takes it).
    "dims-negative": Case(lambda t: identity(t / "m" / "model.onnx", [-5, 4]), ("package",), 0),
    "dims-names-only": Case(lambda t: identity(t / "m" / "model.onnx", ["batch", "n"]), ("package",), 0),
    # Element types: one no ONNX defines, and UNDEFINED.
    "elem-999": Case(lambda t: identity(t / "m" / "model.onnx", elem=999), SOURCE, 5, ("'x'", "element type 999")),
    "elem-0": Case(lambda t: identity(t / "m" / "model.onnx", elem=0), ("package",), 5, ("'x'", "not a tensor")),
    # Types ONNX defines but packager cannot make samples of (strings cannot go into an .npz without pickle).
    "elem-string": Case(lambda t: identity(t / "m" / "model.onnx", elem=TensorProto.STRING), SAMPLES, 5,
                        ("'x'", "string tensors", "re-export")),
    "elem-bfloat16": Case(lambda t: identity(t / "m" / "model.onnx", elem=TensorProto.BFLOAT16), ("package",), 5,
                          ("'x'", "bfloat16 tensors", "re-export")),
    # External data whose offset or length is not a byte count, or that lies outside the model's folder.
    "offset-abc": Case(lambda t: with_external_data(t / "m", offset="abc"), SOURCE, 5, ("'w'", "offset", "'abc'")),
    "offset-negative": Case(lambda t: with_external_data(t / "m", offset="-5"), SOURCE, 5, ("'w'", "offset", "'-5'")),
    "offset-1e30": Case(lambda t: with_external_data(t / "m", offset="1e30"), SOURCE, 5, ("offset", "'1e30'")),
    "offset-10**30": Case(lambda t: with_external_data(t / "m", offset=str(10**30)), SOURCE, 5, ("truncated",)),
    "length-negative": Case(lambda t: with_external_data(t / "m", length="-4"), SOURCE, 5, ("'w'", "length", "'-4'")),
    "location-absolute": Case(lambda t: with_external_data(t / "m", location="/etc/passwd"), SOURCE, 5,
                              ("'/etc/passwd'", "outside the model's folder")),
    "location-dotdot": Case(lambda t: with_external_data(t / "m", location=".."), SOURCE, 5,
                            ("'..'", "outside the model's folder")),
    # A 0-byte file parses as an empty model: no target runs it.
    "zero-bytes": Case(zero_bytes, SOURCE, 5, ("the ONNX graph is empty", "re-export")),
    # A multimodal checkpoint whose decoder has no pad token to put at its encoders' soft tokens: the source
    # stage says so (before, the exporter's child did: exit 10, a tool failure).
    "soft-pad-null": Case(multimodal_without_pad, ("package", "check"), 5,
                          ("text_config.pad_token_id is null", "set it")),
    "deep-manifest": Case(deep_manifest, ("inspect",), 5, ("manifest.json", "nested too deeply", "rebuild")),
}
DOCUMENTED = {int(c) for c in ExitCode} - {int(ExitCode.INTERNAL)}


@pytest.mark.parametrize("name, verb", [(n, v) for n, c in CATALOGUE.items() for v in c.verbs])
def test_catalogue(tmp_path: Path, name: str, verb: str) -> None:
    """Each input, through each command that reads it: its documented exit code, never 1."""
    case = CATALOGUE[name]
    result = cli(tmp_path, *command(tmp_path, verb, case.make(tmp_path)))
    assert result.exit_code in DOCUMENTED, result.output
    if case.code:
        assert_refused(result, tmp_path, case.code, *case.phrases)
    else:
        assert result.exit_code == 0, result.output
        assert not any((tmp_path / "tmp").iterdir())


def test_huge_shape_option_is_refused_and_a_smaller_one_packages(tmp_path: Path) -> None:
    """An open dimension given 1e12 by --shape: the same refusal, whose fix is a smaller --shape."""
    model = identity(tmp_path / "m" / "model.onnx", ["n", 4])
    result = cli(tmp_path, *command(tmp_path, "package", model), "--shape", f"x={10**12},4")
    assert_refused(result, tmp_path, 5, "'x'", "[1000000000000, 4]", "give a smaller --shape x=D1,D2")
    result = cli(tmp_path, *command(tmp_path, "package", model), "--shape", "x=2,4")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "dist").iterdir()] == ["model-rpi5.tar.gz"]


# ---------------------------------------------------------------- symlinked models


def test_symlinked_onnx_works_like_its_file(tmp_path: Path) -> None:
    """A symlink to a model whose external data lies beside the file itself (not beside the link)."""
    real = with_external_data(tmp_path / "store")
    link = tmp_path / "links" / "tiny.onnx"
    link.parent.mkdir()
    link.symlink_to(real)
    for verb in ("package", "check", "inspect"):
        result = cli(tmp_path, *command(tmp_path, verb, link))
        assert result.exit_code == 0, (verb, result.output)
    assert [p.name for p in (tmp_path / "dist").iterdir()] == ["tiny-rpi5.tar.gz"]  # named as the user named it
    assert not any((tmp_path / "tmp").iterdir())


def test_symlinked_onnx_keeps_its_data_inside_the_resolved_folder(tmp_path: Path) -> None:
    """The external data check runs on the folder of the file the link points to: data beside the
    link only is missing there, and '../' from the real folder is outside it."""
    real = with_external_data(tmp_path / "store" / "m")
    link = tmp_path / "links" / "model.onnx"
    link.parent.mkdir()
    link.symlink_to(real)
    shutil.move(real.parent / "weights.bin", link.parent / "weights.bin")
    result = cli(tmp_path, *command(tmp_path, "package", link))
    assert_refused(result, tmp_path, 5, "'weights.bin' is missing")

    escaping = with_external_data(tmp_path / "store" / "n", location="../weights.bin")
    shutil.copyfile(link.parent / "weights.bin", tmp_path / "store" / "weights.bin")
    (tmp_path / "links" / "n.onnx").symlink_to(escaping)
    for verb in ("package", "inspect"):
        result = cli(tmp_path, *command(tmp_path, verb, tmp_path / "links" / "n.onnx"))
        assert_refused(result, tmp_path, 5, "'../weights.bin'", "outside the model's folder")


# ---------------------------------------------------------------- a full disk


def _full(code: int) -> Callable[..., None]:
    def write(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded", str(dst))
    return write


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota is exceeded")])
def test_full_tmpdir_is_exit_9_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
                                         words: str) -> None:
    """A write into the work folder (TMPDIR) fails for want of space: the API raises the OUTPUT error
    naming TMPDIR and the fix, the CLI exits 9 with that sentence, and no work folder is left."""
    import packager.api

    model = identity(tmp_path / "m" / "model.onnx")
    monkeypatch.setattr(shutil, "copyfile", _full(code))   # the export stage copies the model into its folder
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    with pytest.raises(PackagerError) as raised:
        packager.api.package(model, "rpi5", out=tmp_path / "dist")
    assert raised.value.code == ExitCode.OUTPUT
    assert raised.value.message.startswith(f"{work}: ") and words in raised.value.message
    assert "point TMPDIR at a folder with room" in raised.value.message
    assert_nothing_left(tmp_path)

    result = CliRunner().invoke(app, command(tmp_path, "package", model))
    assert_refused(result, tmp_path, 9, str(work), words, "TMPDIR")


def test_full_disk_inside_a_recipe_is_exit_9_not_a_tool_failure(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe wraps what fails inside it as exit 10 ("try another recipe"): a full disk under
    that wrapper is still exit 9, as no recipe would help."""
    from packager.recipes import RECIPES

    def quantize(src: Path, dest: Path, options: Any) -> None:
        with open(dest, "wb") as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")  # a write with no file name, as f.write gives

    monkeypatch.setitem(RECIPES, "int8-dynamic", dataclasses.replace(RECIPES["int8-dynamic"], entry="dense:failing"))
    monkeypatch.setattr("packager.recipes.dense.failing", quantize, raising=False)
    result = cli(tmp_path, *command(tmp_path, "package", identity(tmp_path / "m" / "model.onnx")))
    assert_refused(result, tmp_path, 9, str(tmp_path / "tmp"), "no space left", "packager's work files", "TMPDIR")


def test_disk_full_outside_tmpdir_names_that_folder(tmp_path: Path) -> None:
    e = OSError(errno.ENOSPC, "No space left on device", "/srv/cache/stages/x.bin")
    full = disk_full(e)
    assert full is not None and full.code == ExitCode.OUTPUT
    assert full.message == "/srv/cache/stages: no space left on the device (writing x.bin); free some space there."
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/x")) is None
    assert disk_full(PackagerError("already said", ExitCode.OUTPUT)) is None


@pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")
def test_a_checkpoint_the_exporters_child_refuses_is_exit_5_with_its_sentence(tmp_path: Path) -> None:
    """The E-class exporter runs in the genai environment; what it finds wrong with the checkpoint (here: no per-layer
    embedding table in the safetensors) is the user's input, exit 5 with the child's sentence, not a tool failure."""
    folder = multimodal_without_pad(tmp_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["pad_token_id"] = 0
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = cli(tmp_path, *command(tmp_path, "package", folder))
    assert_refused(result, tmp_path, 5, "no embed_tokens_per_layer.weight", "save_pretrained")


@pytest.mark.parametrize("args, phrases", [
    (("package", "sample:tiny-llama", "--target", "rpi5", "--kv-bits", "12"), ("--kv-bits 12 is not 4, 8, 16 or 32",)),
    (("check", "MODEL", "--target", "rpi5", "--no-measure", "--kv-bits", "8"),   # an .onnx tensor model
     ("--kv-bits 8", "no KV cache", "drop --kv-bits")),
    # rpi5's decoders run on onnxruntime-genai, which has no 4-bit cache (plan reckons with one)
    (("check", "sample:tiny-llama", "--target", "rpi5", "--no-measure", "--kv-bits", "4"),
     ("--kv-bits 4: onnxruntime-genai runs a KV cache of 32, 16, 8 bits",)),
    # a Jetson's decoders stay on onnxruntime, whose cache is the activations' type
    (("check", "sample:tiny-llama", "--target", "jetson-orin-nano-cpu", "--no-measure", "--kv-bits", "16"),
     ("which no setting changes", "onnxruntime-genai (phone, rpi4, rpi5, rpi5-genai)")),
])
def test_a_kv_cache_size_the_model_or_its_runtime_cannot_take_is_exit_2(tmp_path: Path, args: tuple[str, ...],
                                                                       phrases: tuple[str, ...],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's own compile cache (the export imports torch here) is not packager's to clean up: kept out of tmp
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))
    out = ("--out", str(tmp_path / "dist")) if args[0] == "package" else ()
    args = tuple(str(identity(tmp_path / "m" / "model.onnx")) if a == "MODEL" else a for a in args)
    assert_refused(cli(tmp_path, *args, *out), tmp_path, ExitCode.USAGE, *phrases)
