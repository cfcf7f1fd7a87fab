"""Names that become file names (packager/names.py): a profile's `name`, --name, a model's and an
adapter's derived names, a member of a bundle of several. A name that is not a plain file name is
refused with one sentence and its exit code before anything is written; a derived one is made plain.
No input here may end in an internal error (exit 1)."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from conftest import run_cli
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.names import MAX_NAME, check_name, derive_name, is_plain, joined_name
from packager.paths import profiles_dir
from packager.profiles import load_profile

EXAMPLES = int(os.environ.get("PACKAGER_PROPERTY_EXAMPLES", "200"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])

# What a user might type for a name, each not a plain file name.
BAD_NAMES = {
    "parent": "../x", "slash": "a/b", "backslash": "a\\b", "hidden": ".hidden", "dotdot": "..", "empty": "",
    "nul": "a\x00b", "newline": "a\nb", "trailing-newline": "ab\n", "rtl-mark": "abc\u202etxt.exe",
    "long": "x" * 100_000, "one-too-long": "x" * (MAX_NAME + 1), "leading-dash": "-rf", "space": "my model",
    "unicode": "modèle",
}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (JSON's escapes are TOML's too, for the characters hypothesis makes)."""
    return json.dumps(text)


def evil_profile(folder: Path, name: str, file: str = "evil.toml") -> Path:
    """A copy of the built-in rpi5 profile under another `name`."""
    text = (profiles_dir() / "rpi5.toml").read_text(encoding="utf-8")
    assert 'name = "rpi5"\n' in text
    path = folder / file
    path.write_text(text.replace('name = "rpi5"\n', f"name = {toml_string(name)}\n", 1), encoding="utf-8")
    return path


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return stderr.replace("\n", " ")


@pytest.fixture
def victim(tmp_path: Path) -> tuple[Path, str]:
    """A folder a hostile name points into, with a sentinel file in it; and the name."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "sentinel.txt").write_text("untouched", encoding="utf-8")
    # Up from any work folder (/tmp/packager-XXXX/) or output folder to /, then down to the victim.
    return folder, "../" * 16 + str(folder).lstrip("/")


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["sentinel.txt"]
    assert (folder / "sentinel.txt").read_text(encoding="utf-8") == "untouched"


# ---------------------------------------------------------------- a profile's name (issue 17, item 2)

@pytest.mark.parametrize("extra", [(), ("--fit", "auto")], ids=["recipe", "fit-auto"])
def test_a_profile_named_a_path_is_refused_via_target(tmp_path: Path, victim: tuple[Path, str], extra: tuple[str, ...],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACKAGER_TARGET", raising=False)
    folder, name = victim
    profile = evil_profile(tmp_path, name)
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", str(profile), "--out", str(out), *extra)
    assert proc.returncode == ExitCode.BAD_PROFILE, proc.stderr
    message = one_error(proc.stderr)
    assert f"{profile}: key 'name' is " in message and "not a plain file name" in message
    assert "fix the profile" in message
    assert_untouched(folder)
    assert not out.exists()


def test_a_profile_named_a_path_is_refused_via_pyproject(tmp_path: Path, victim: tuple[Path, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACKAGER_TARGET", raising=False)
    folder, name = victim
    project = tmp_path / "project"
    project.mkdir()
    evil_profile(project, name)
    (project / "pyproject.toml").write_text('[tool.packager]\ntarget = "evil.toml"\n', encoding="utf-8")
    for command in (["package", "sample:silero-vad", "--fit", "auto"], ["check", "sample:silero-vad"]):
        proc = run_cli(*command, cwd=project)
        assert proc.returncode == ExitCode.BAD_PROFILE, (command, proc.stderr)
        assert "evil.toml: key 'name' is " in one_error(proc.stderr)
    assert_untouched(folder)
    assert sorted(p.name for p in project.iterdir()) == ["evil.toml", "pyproject.toml"]   # no dist/


def test_a_profile_named_a_path_among_several_targets(tmp_path: Path, victim: tuple[Path, str]) -> None:
    folder, name = victim
    profile = evil_profile(tmp_path, name)
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--target", str(profile), "--out", str(out))
    assert proc.returncode == ExitCode.BAD_PROFILE, proc.stderr
    assert "key 'name' is " in one_error(proc.stderr)
    assert_untouched(folder)
    assert not out.exists()


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_a_profile_name_that_is_no_plain_file_name(tmp_path: Path, name: str) -> None:
    path = evil_profile(tmp_path, name)
    with pytest.raises(PackagerError) as e:
        load_profile(path)
    assert e.value.code == ExitCode.BAD_PROFILE
    assert e.value.message.startswith(f"{path}: key 'name' is ") and e.value.message.endswith("; fix the profile.")
    assert "\n" not in e.value.message and len(e.value.message) < 400


def test_the_builtin_profile_names_are_plain() -> None:
    from packager.profiles import builtin_profiles

    assert all(is_plain(name) for name in builtin_profiles())


# ---------------------------------------------------------------- --name

@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_a_bad_name_option_is_refused_before_any_work(tmp_path: Path, name: str) -> None:
    """In process (an argument cannot hold a NUL): exit 2, one sentence naming --name."""
    from typer.testing import CliRunner

    from packager.cli import app

    out = tmp_path / "dist"
    proc = CliRunner().invoke(app, ["package", "sample:silero-vad", "--target", "rpi5", "--out", str(out),
                                    "--name", name])
    assert proc.exit_code == ExitCode.USAGE, proc.output
    message = one_error(proc.stderr)
    assert "--name is " in message and "not a plain file name" in message
    assert not out.exists()


@pytest.mark.parametrize("models", [["sample:silero-vad"], ["sample:silero-vad", "sample:minilm"]],
                         ids=["one-model", "several-models"])
def test_a_bad_name_through_the_cli(tmp_path: Path, victim: tuple[Path, str], models: list[str]) -> None:
    """As a user runs it, one model or a bundle of several (whose folder --name named): exit 2, nothing written."""
    folder, name = victim
    out = tmp_path / "dist"
    proc = run_cli("package", *models, "--target", "rpi5", "--out", str(out), "--name", name)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "--name is " in one_error(proc.stderr)
    assert_untouched(folder)
    assert not out.exists()


def test_a_bad_name_among_several_targets_fails_once(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--target", "rpi4", "--out", str(out),
                   "--name", "../x")
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "--name is '../x'" in one_error(proc.stderr)
    assert not out.exists()


@pytest.mark.parametrize("name", ["\x00", "../x", ""], ids=["nul", "parent", "empty"])
def test_a_bad_name_through_the_api(tmp_path: Path, name: str) -> None:
    from packager.api import package

    for models in ("sample:silero-vad", ["sample:silero-vad", "sample:minilm"]):
        with pytest.raises(PackagerError) as e:
            package(models, "rpi5", out=tmp_path / "dist", name=name)
        assert e.value.code == ExitCode.USAGE and e.value.message.startswith("--name is ")
    assert not (tmp_path / "dist").exists()


# ---------------------------------------------------------------- names derived from the user's files

def tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(("file", "expected"), [
    ("my model (v2).onnx", "my-model-v2"), (".hidden.onnx", "hidden"), ("modèle.onnx", "modele"),
    ("模型.onnx", "model"), ("abc\u202etxt.onnx", "abc-txt"), ("x" * 200 + ".onnx", "x" * MAX_NAME),
    ("silero_vad.onnx", "silero_vad"),
])
def test_a_model_file_name_becomes_a_plain_name(tmp_path: Path, file: str, expected: str) -> None:
    from packager.stages.source import resolve

    source = resolve(str(tiny_onnx(tmp_path / file)))
    assert source.name == expected and is_plain(source.name)


def test_an_adapter_folder_name_becomes_a_plain_name(tmp_path: Path) -> None:
    from packager.samples import resolve_adapter_sample, resolve_sample
    from packager.stages.source import resolve, with_adapter

    base = resolve(str(resolve_sample("tiny-llama")[0]))
    adapter = tmp_path / "my adapter (v2) \u202e"
    shutil.copytree(resolve_adapter_sample("tiny-llama-lora"), adapter)
    assert with_adapter(base, str(adapter), None, False).name == f"{base.name}-my-adapter-v2"
    long = tmp_path / ("a" * 200)
    shutil.copytree(adapter, long)
    named = with_adapter(base, str(long), None, False).name
    assert is_plain(named) and named.startswith(f"{base.name}-a")


def test_members_of_several_models_get_plain_distinct_names() -> None:
    from packager.suite import member_names

    contexts = [SimpleNamespace(name=None, source=SimpleNamespace(name="x" * MAX_NAME)) for _ in range(12)]
    names = member_names(contexts)  # type: ignore[arg-type]
    assert len(set(names)) == 12 and all(is_plain(n) for n in names)
    assert is_plain(joined_name(names))


# ---------------------------------------------------------------- properties

@FAST
@example("\U0001f600" * 25)  # escapes of 10 characters each: the message stayed over 400 once
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9._+\-/\\ \x00\n]{0,120}", fullmatch=True))
def test_a_name_is_refused_or_one_component_inside_its_folder(text: str) -> None:
    try:
        name = check_name(text, "--name", ExitCode.USAGE)
    except PackagerError as e:
        assert e.code == ExitCode.USAGE
        assert "\n" not in e.message and len(e.message) < 400
        assert not is_plain(text)
        return
    parent = Path("/bundles/dist")
    assert name == text and len(Path(name).parts) == 1 and name not in (".", "..")
    assert (parent / name).parent == parent and os.path.normpath(parent / name) == str(parent / name)
    assert 1 <= len(name) <= MAX_NAME and name.isascii() and name.isprintable()
    assert not name.startswith((".", "-", "+"))


@FAST
@given(st.text(max_size=300))
def test_a_derived_name_is_always_plain(text: str) -> None:
    name = derive_name(text)
    assert is_plain(name)
    assert derive_name(name) == name


@FAST
@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}", fullmatch=True))
def test_a_plain_name_is_kept(name: str) -> None:
    assert is_plain(name) and derive_name(name) == name and check_name(name, "--name", ExitCode.USAGE) == name


@FAST
@given(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}", fullmatch=True), min_size=1, max_size=8))
def test_a_joined_name_is_plain(names: list[str]) -> None:
    assert is_plain(joined_name(names))


@FAST
@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_.+-]{1,101}", fullmatch=True))
def test_a_profile_with_any_name_loads_or_is_refused_with_exit_6(tmp_path_factory: pytest.TempPathFactory,
                                                                  name: str) -> None:
    folder = tmp_path_factory.mktemp("profile")
    try:
        profile = load_profile(evil_profile(folder, name))
    except PackagerError as e:
        assert e.code == ExitCode.BAD_PROFILE and "\n" not in e.message
        return
    assert is_plain(profile.name) and profile.name == name


# ---------------------------------------------------------------- the device: run.py --model NAME

@functools.cache
def _run_py() -> Any:
    return runner()


def suite_bundle(folder: Path, names: list[str]) -> Path:
    models = [{"name": n, "path": f"models/{n}"} for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"kind": "suite", "models": models}), encoding="utf-8")
    for n in names:
        (folder / "models" / n).mkdir(parents=True)
    return folder


@pytest.mark.parametrize("name", ["../x", "models/a", "a/../a", "../a", "/etc", "", "a\x00", ".."])
def test_run_py_model_must_be_one_the_manifest_lists(tmp_path: Path, name: str) -> None:
    run = _run_py()
    bundle = suite_bundle(tmp_path / "bundle", ["a", "b"])
    assert run.member(bundle, "a") == bundle / "models" / "a"
    with pytest.raises(ValueError, match="no model .* in this bundle; it holds a, b"):
        run.member(bundle, name)


@FAST
@given(st.text(max_size=50))
def test_run_py_model_never_leaves_the_bundle(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    run = _run_py()
    bundle = tmp_path_factory.getbasetemp() / "names-bundle"
    if not bundle.exists():   # once for all the examples
        suite_bundle(bundle, ["a", "b-2"])
    try:
        found = run.member(bundle, name)
    except ValueError:
        return
    assert found in (bundle / "models" / "a", bundle / "models" / "b-2")


# ---------------------------------------------------------------- component names from the export cache

def test_a_cached_export_names_only_the_components_an_export_makes() -> None:
    """An encoder-decoder's component names and files become paths in the work folder; a cache entry whose
    io names others (edited, or from a broken run) is not used (read as corrupt, exported again)."""
    from packager.families.seq2seq import SEQ2SEQ_COMPONENTS, SEQ2SEQ_MERGED
    from packager.stages.export import _components_known

    made = {"encoder": {"export": SEQ2SEQ_COMPONENTS["encoder"], "inputs": [], "outputs": []},
            "decoder": {"export": SEQ2SEQ_COMPONENTS["decoder"], "merges": list(SEQ2SEQ_MERGED),
                        "inputs": [], "outputs": []}}
    assert _components_known({"kind": "seq2seq", "components": made})
    assert _components_known({"kind": "text"})
    edited = [
        {"../../x": made["encoder"]},
        {"encoder": made["encoder"] | {"export": "../../../etc/passwd"}},
        {"decoder": made["decoder"] | {"merges": ["../x.onnx"]}},
        {"encoder": "encoder_model.onnx"},
        ["encoder"],
    ]
    for components in edited:
        assert not _components_known({"kind": "seq2seq", "components": components})
