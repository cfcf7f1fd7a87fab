"""Bad inputs: one sentence naming the problem and the fix, the documented exit code,
no traceback, and nothing left in the output folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli


def assert_clean_failure(proc, code: int, *phrases: str, out: Path | None = None) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr.replace("\n", " "), proc.stderr
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def package(model: str, tmp_path: Path, *extra: str, target: str = "rpi5"):
    out = tmp_path / "dist"
    return run_cli("package", model, "--target", target, "--out", str(out), *extra), out


def test_missing_path(tmp_path: Path) -> None:
    proc, out = package(str(tmp_path / "nope"), tmp_path)
    assert_clean_failure(proc, 5, "no such file or folder", out=out)


def test_unknown_target_suggests_the_closest(tmp_path: Path, silero_onnx: Path) -> None:
    proc, out = package(str(silero_onnx), tmp_path, target="rpi-5")
    assert_clean_failure(proc, 6, "unknown target 'rpi-5'", 'did you mean "rpi5"?', "packager targets", out=out)


def test_unknown_sample(tmp_path: Path) -> None:
    proc, out = package("sample:minilmm", tmp_path)
    assert_clean_failure(proc, 5, "unknown sample", 'did you mean "minilm"?', out=out)


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "not a model folder", out=out)


def test_invalid_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "invalid JSON", out=out)


def test_unknown_architecture(tmp_path: Path, tiny_bert: Path) -> None:
    folder = tmp_path / "odd"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["FrobnicatorNet"]}))
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "unknown architecture 'FrobnicatorNet'", out=out)


def test_pickled_weights_are_refused(tmp_path: Path, tiny_bert: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(tiny_bert / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "pickled", "safetensors", out=out)


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage that is not protobuf\xff\xfe" * 10])
def test_corrupt_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, str(path), out=out)


def test_truncated_onnx(tmp_path: Path, silero_onnx: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(silero_onnx.read_bytes()[:100_000])
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, "re-", out=out)


def _matmul_model_with_external_data(folder: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")  # raw_data, so it can go external
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    m = onnx.load(folder / "model.onnx", load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = location
    onnx.save(m, folder / "model.onnx")
    return folder / "model.onnx"


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    path = _matmul_model_with_external_data(tmp_path / "m", "../weights.bin")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, "points outside the model's folder", out=out)


def test_missing_external_data(tmp_path: Path) -> None:
    path = _matmul_model_with_external_data(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").unlink()
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, "external data file 'weights.bin' is missing", out=out)


def test_output_path_that_is_a_file(tmp_path: Path, silero_onnx: Path) -> None:
    out = tmp_path / "dist"
    out.write_text("I am a file")
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out))
    assert_clean_failure(proc, 9, "is a file")
    assert out.read_text() == "I am a file"


def test_json_errors_are_json_on_stdout(tmp_path: Path) -> None:
    proc, _ = package(str(tmp_path / "nope"), tmp_path, "--json")
    assert proc.returncode == 5
    assert json.loads(proc.stdout) == {"error": json.loads(proc.stdout)["error"], "exit_code": 5}


def test_malformed_shape_option(tmp_path: Path, silero_onnx: Path) -> None:
    proc, out = package(str(silero_onnx), tmp_path, "--shape", "input")
    assert_clean_failure(proc, 2, "--shape", out=out)


def test_unknown_recipe(tmp_path: Path, silero_onnx: Path) -> None:
    proc, out = package(str(silero_onnx), tmp_path, "--recipe", "int3")
    assert_clean_failure(proc, 2, "unknown recipe 'int3'", out=out)


def test_missing_export_stack_says_which_extra(tmp_path: Path, tiny_bert: Path) -> None:
    # Simulate a core-only install: make `optimum` unimportable in the child process.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['optimum'] = None\n")
    out = tmp_path / "dist"
    proc = run_cli("package", str(tiny_bert), "--target", "rpi5", "--out", str(out),
                   env={"PYTHONPATH": str(blocker)})
    assert_clean_failure(proc, 7, "pip install 'packager[hf]'", out=out)


def test_smoke_of_missing_bundle(tmp_path: Path) -> None:
    proc = run_cli("smoke", str(tmp_path / "nope.tar.gz"))
    assert_clean_failure(proc, 5, "no such bundle")


@pytest.mark.parametrize("sig, after, delay", [(signal.SIGINT, "source", 0.5), (signal.SIGTERM, "source", 3.0),
                                              (signal.SIGTERM, "export", 1.0)])
def test_interrupt_leaves_nothing_behind(tmp_path: Path, sig: int, after: str, delay: float) -> None:
    """Stopped while a stage runs (`delay` seconds after the stage `after` ends: in the export, in the quantizer):
    exit 130, no output folder, no temporary work folder. The moment follows the stages' own lines, not a clock: on
    a faster machine a fixed delay landed after the bundle was written (a signal then is dropped: exit 0)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "dist"
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    # --no-cache: the export runs (7 s) rather than coming from an earlier test's cache
    proc = subprocess.Popen([sys.executable, "-m", "packager", "package", "sample:minilm", "--target", "rpi5",
                             "--no-cache", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env,
                            # A shell's background job inherits SIGINT ignored; a user's terminal does not.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    ended = threading.Event()
    reader = threading.Thread(target=_read_stages, args=(proc, lines, f"✓ {after}", ended), daemon=True)
    reader.start()
    assert ended.wait(timeout=120), "".join(lines)
    time.sleep(delay)
    assert proc.poll() is None and not any("✓ bundle" in line for line in lines), \
        f"the run was past its stages {delay} s after {after}:\n" + "".join(lines)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert work_dirs(tmpdir) == []


def _read_stages(proc: subprocess.Popen[str], lines: list[str], marker: str, ended: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(marker):
            ended.set()
    ended.set()  # the run ended before the marker: the caller's check says so


def work_dirs(tmpdir: Path) -> list[Path]:
    return [p for p in tmpdir.iterdir() if p.name.startswith("packager-")]


def test_unwritable_output_fails_before_any_work(tmp_path: Path) -> None:
    # /proc refuses new folders even to root: the pre-flight check stops before the export.
    proc = run_cli("package", "sample:minilm", "--target", "rpi5", "--out", "/proc/packager-out")
    assert_clean_failure(proc, 9, "cannot write the bundle there")
    assert "export" not in proc.stderr


def test_output_parents_are_created_and_nothing_is_left_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "dist"
    proc = run_cli("package", str(tmp_path / "missing.onnx"), "--target", "rpi5", "--out", str(out))
    assert proc.returncode == 5
    assert not (tmp_path / "a").exists()  # the pre-flight check removes the folders it tried


def test_empty_model_argument(tmp_path: Path) -> None:
    proc, out = package("", tmp_path)
    assert_clean_failure(proc, 5, "MODEL is empty", out=out)


def _bert_copy(tiny_bert: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    return folder


def test_truncated_safetensors(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _bert_copy(tiny_bert, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "truncated safetensors", "re-download", out=out)


def test_corrupt_safetensors_header(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _bert_copy(tiny_bert, tmp_path)
    (folder / "model.safetensors").write_bytes((40).to_bytes(8, "little") + b"{not json at all, just noise....}xxxxxxx")
    proc, out = package(str(folder), tmp_path)
    assert_clean_failure(proc, 5, "corrupt safetensors", out=out)


def test_truncated_external_data(tmp_path: Path) -> None:
    path = _matmul_model_with_external_data(tmp_path / "m", "weights.bin")
    data = tmp_path / "m" / "weights.bin"
    data.write_bytes(data.read_bytes()[:10])
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, "is truncated", out=out)


def test_external_data_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    path = _matmul_model_with_external_data(tmp_path / "m", "weights.bin")
    outside = tmp_path / "secret.bin"
    (tmp_path / "m" / "weights.bin").rename(outside)
    (tmp_path / "m" / "weights.bin").symlink_to(outside)
    proc, out = package(str(path), tmp_path)
    assert_clean_failure(proc, 5, "points outside the model's folder", out=out)


def _pickled_bert(tiny_bert: Path, tmp_path: Path) -> Path:
    from transformers import BertModel

    folder = tmp_path / "pickled-bert"
    BertModel.from_pretrained(tiny_bert).save_pretrained(folder, safe_serialization=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_bert / name, folder / name)
    assert (folder / "pytorch_model.bin").is_file()
    return folder


def test_pickled_weights_load_weights_only_with_allow_pickle(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _pickled_bert(tiny_bert, tmp_path)
    proc, out = package(str(folder), tmp_path, "--recipe", "fp32")
    assert_clean_failure(proc, 5, "--allow-pickle", out=out)
    proc, out = package(str(folder), tmp_path, "--recipe", "fp32", "--allow-pickle", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"]["min_cosine"] > 0.9999


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, tiny_bert: Path) -> None:
    import pickle

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copyfile(tiny_bert / "config.json", folder / "config.json")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Payload()}, f)
    proc, out = package(str(folder), tmp_path, "--allow-pickle")
    assert_clean_failure(proc, 5, "weights-only loader refused it", out=out)
    assert not marker.exists()


def test_full_disk(tmp_path: Path) -> None:
    """A 1 MiB tmpfs as the output folder: the archive does not fit; nothing is left on it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(mnt / "dist"))
        assert_clean_failure(proc, 9, "No space left on device")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("change, key", [
    (("cores = 4", 'cores = "four"'), "device.cores"),
    (("[budget]\n", "[budget]\nbudgte = 1\n"), "budget.budgte"),
    (("memory_bytes = 1500000000", "memory_bytes = 0"), "budget.memory_bytes"),
    (("name = \"rpi5\"", "name = "), None),
])
def test_invalid_profile_through_the_cli(tmp_path: Path, change: tuple[str, str], key: str | None) -> None:
    from packager.paths import profiles_dir

    profile = tmp_path / "board.toml"
    profile.write_text((profiles_dir() / "rpi5.toml").read_text().replace(*change, 1))
    proc, out = package("sample:silero-vad", tmp_path, target=str(profile))
    assert_clean_failure(proc, 6, str(profile), *([f"'{key}'"] if key else ["invalid TOML"]), out=out)


def _evil_archive(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    import io

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("b/smoke_test.py")
        ok.size = 5
        tar.addfile(ok, io.BytesIO(b"pass\n"))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink", "device"])
def test_smoke_refuses_hostile_archives(tmp_path: Path, kind: str) -> None:
    member = {"traversal": lambda: tarfile.TarInfo("b/../../escaped.txt"),
              "absolute": lambda: tarfile.TarInfo("/tmp/escaped.txt"),
              "symlink": lambda: tarfile.TarInfo("b/link"),
              "hardlink": lambda: tarfile.TarInfo("b/hard"),
              "device": lambda: tarfile.TarInfo("b/dev")}[kind]()
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        member.type, member.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    archive = _evil_archive(tmp_path, member, b"x" if kind in ("traversal", "absolute") else b"")
    proc = run_cli("smoke", str(archive))
    assert_clean_failure(proc, 5, str(archive))
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()


# ---------------------------------------------------------------- the exit code table

def test_the_readme_table_is_the_exit_codes() -> None:
    """README.md's "Exit codes" table lists exactly ExitCode's codes (errors.py says to keep them in step)."""
    from conftest import REPO
    from packager.errors import ExitCode

    section = (REPO / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[0] == "code"
    assert [int(code) for code in rows[1:]] == sorted(int(c) for c in ExitCode)


def test_an_internal_error_is_exit_1_with_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (any exception that is not a PackagerError): exit 1, "rerun with --debug"; --debug shows the traceback."""
    from typer.testing import CliRunner

    import packager.profiles
    from packager.cli import app

    def boom(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(packager.profiles, "builtin_profiles", boom)
    plain = CliRunner().invoke(app, ["targets"])
    assert plain.exit_code == 1 and "internal error (RuntimeError: a bug); rerun with --debug" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = CliRunner().invoke(app, ["targets", "--debug", "--json"])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr
    assert json.loads(debug.stdout) == {
        "error": "internal error (RuntimeError: a bug); rerun with --debug and report it.", "exit_code": 1}


def test_a_tool_failure_is_exit_10(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The quantizer (here: the recipe) failing on a valid model: exit 10, naming the recipe and what to try."""
    from typer.testing import CliRunner

    from packager.cli import app
    from packager.recipes import RECIPES

    def failing(*args: object) -> None:
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(RECIPES, "int8-dynamic", dataclasses.replace(RECIPES["int8-dynamic"], entry="dense:failing"))
    monkeypatch.setattr("packager.recipes.dense.failing", failing, raising=False)
    out = tmp_path / "dist"
    proc = CliRunner().invoke(app, ["package", "sample:silero-vad", "--target", "rpi5", "--out", str(out)])
    assert proc.exit_code == 10, proc.output
    assert "recipe int8-dynamic failed on this model (RuntimeError: kernel exploded)" in proc.stderr
    assert "--recipe" in proc.stderr and not out.exists()
