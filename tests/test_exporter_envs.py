"""Exporter environments (issue 19, item 2): made once from pinned requirements under
PACKAGER_CACHE_DIR, whole or absent, keyed by the pins; a failed install is exit 7 naming the command."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import exporter_envs
from packager.cli import app
from packager.errors import ExitCode, PackagerError
from packager.exporter_envs import GENAI, ExporterEnv, ensure, run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, and pip kept off the network (a local wheel or nothing)."""
    monkeypatch.setenv("PACKAGER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    return tmp_path / "cache" / "envs"


def probe(folder: Path, body: str) -> Path:
    """A module `probe` in `folder` (the child's working folder, so `python -m probe` finds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.py").write_text(body, encoding="utf-8")
    return folder


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".partial")) if root.is_dir() else []


def test_an_environment_is_made_once_and_runs_isolated(cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = ExporterEnv("plain", ())
    said: list[str] = []
    folder = ensure(env, said.append)
    assert folder == env.folder and folder.parent == cache and (folder / "bin" / "python").exists()
    assert json.loads((folder / "env.json").read_text())["key"] == env.key
    assert any("creating the exporter environment 'plain'" in line for line in said)
    stamp = (folder / "env.json").stat().st_mtime_ns
    said.clear()
    assert ensure(env, said.append) == folder and said == []          # made once
    assert (folder / "env.json").stat().st_mtime_ns == stamp and leftovers(cache) == []
    # The child is the environment's Python, and packager's own packages are out of its reach.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    work = probe(tmp_path / "work", "import sys\nprint(sys.prefix)\ntry:\n    import packager\n"
                 "    print('packager importable')\nexcept ImportError:\n    print('isolated')\n")
    lines: list[str] = []
    tail = run(env, "probe", [], lines.append, cwd=work)
    assert tail == lines == [str(folder), "isolated"]


def test_the_key_follows_the_pins() -> None:
    a, b = ExporterEnv("x", ("p==1", "q==2")), ExporterEnv("x", ("q==2", "p==1"))
    assert a.key == b.key                                                 # order does not matter
    assert ExporterEnv("x", ("p==1", "q==3")).folder != a.folder != ExporterEnv("y", ("p==1", "q==2")).folder


def test_start_up_modules_are_installed_and_key_the_environment(cache: Path, tmp_path: Path) -> None:
    """ExporterEnv.startup: each module imported at the environment's start-up (a .pth line), its contents in the
    key. packager_torchvision (genai's) costs a process that never imports torchvision nothing: not even torch."""
    env = ExporterEnv("hooked", (), startup=("packager_torchvision",))
    assert env.key != ExporterEnv("hooked", ()).key
    ensure(env, lambda line: None)
    work = probe(tmp_path / "work", "import sys\nprint(sorted(m for m in ('packager_torchvision', 'torch') "
                                    "if m in sys.modules))\n")
    assert run(env, "probe", [], cwd=work)[-1] == "['packager_torchvision']"


@pytest.mark.skipif(not exporter_envs.is_ready(GENAI), reason="needs `packager env create genai`")
def test_the_genai_environment_imports_torchvision_and_timm(tmp_path: Path) -> None:
    """PyPI's torchvision (built for CUDA torch) imports beside the CPU build of torch, and with it transformers'
    models and timm's MobileNet-V5 (Gemma 3n's vision encoder)."""
    work = probe(tmp_path / "work", "import torch, torchvision, timm\nfrom transformers import LlamaConfig\n"
                                    "print(torch.__version__.endswith('+cpu'), "
                                    "torchvision.__version__.split('+')[0])\n")
    assert run(GENAI, "probe", [], cwd=work)[-1] == "True 0.28.0"


def wheel(folder: Path, name: str = "fakedep", version: str = "1.0") -> Path:
    """A pure-Python wheel made by hand: module `fakedep` that prints its version."""
    files = {f"{name}.py": f"print('{name} {version}')\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()}"
              f",{len(text.encode())}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record + [f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
    return path


def test_pinned_requirements_are_installed_and_concurrent_runs_make_it_once(cache: Path, tmp_path: Path) -> None:
    env = ExporterEnv("local", (f"fakedep @ {wheel(tmp_path).as_uri()}",))
    said: list[str] = []
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(ensure(env, said.append))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert folders == [env.folder, env.folder]
    assert sum("creating the exporter environment" in line for line in said) == 1   # the other one waited
    assert run(env, "fakedep", [])[-1] == "fakedep 1.0" and leftovers(cache) == []


def test_a_failed_install_leaves_nothing_and_names_the_command(cache: Path) -> None:
    env = ExporterEnv("broken", ("packager-no-such-distribution==0.0.0",))
    with pytest.raises(PackagerError) as e:
        ensure(env)
    assert e.value.code == ExitCode.MISSING_DEPENDENCY
    assert "`packager env create broken`" in e.value.message and "pip install failed" in e.value.message
    assert "packager-no-such-distribution==0.0.0" in e.value.message
    assert not env.folder.exists() and leftovers(cache) == []


def test_a_failing_module_is_a_tool_failure_quoting_its_last_line(cache: Path, tmp_path: Path) -> None:
    work = probe(tmp_path / "work", "import sys\nprint('working')\nprint('bad weights', file=sys.stderr)\n"
                 "sys.exit(3)\n")
    with pytest.raises(PackagerError) as e:
        run(ExporterEnv("plain", ()), "probe", [], cwd=work)
    assert e.value.code == ExitCode.TOOL_FAILED and "(exit 3): bad weights" in e.value.message


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_env_commands(cache: Path) -> None:
    code, out, _ = invoke("env", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["genai"]["ready"] is False and rows["genai"]["folder"].startswith(str(cache))
    assert "transformers==5.24.0" in rows["genai"]["requirements"]
    code, _, stderr = invoke("env", "create", "genia")
    assert code == ExitCode.USAGE and "unknown exporter environment 'genia'" in stderr and "genai" in stderr
    for command in ("create", "list"):
        code, out, _ = invoke("env", command, "--help")
        assert code == 0 and "-v, --verbose" in out and "--json" in out and "TEXT" not in out


@pytest.mark.integration
def test_the_genai_builder_runs_offline_on_the_sample(tmp_path: Path) -> None:
    """The real environment (.ci/run makes it first): the model builder on sample:tiny-llama, int4 CPU."""
    out = tmp_path / "out"
    lines: list[str] = []
    run(GENAI, "onnxruntime_genai.models.builder",
        ["-i", str(REPO / "packager" / "data" / "tiny-llama"), "-o", str(out), "-p", "int4", "-e", "cpu",
         "-c", str(tmp_path / "builder-cache")], lines.append)
    assert (out / "genai_config.json").is_file() and (out / "model.onnx").is_file()
    assert json.loads((out / "genai_config.json").read_text())["model"]["type"] == "llama"
    assert lines   # its progress came back line by line
    assert exporter_envs.is_ready(GENAI)
