"""Bundles of several models (issue 11 part 5): `packager package A B --target T` packages each model,
stores the component files in blobs/<sha256>/ (a component two models share once), and judges the budget
for all of them loaded together. The shared-encoder pair is tiny-whisper and a copy whose decoder was
fine-tuned (perturbed) with the encoder frozen, as a task-specific speech model would be."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import package_json, run_cli, unpack
from packager import api
from packager.errors import ExitCode, PackagerError
from packager.smoke import run_smoke


@pytest.fixture(scope="module")
def whisper_ft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-whisper with its decoder's matrices moved by noise and its encoder untouched."""
    from safetensors.numpy import load_file, save_file

    from packager.sample_models import built_sample

    folder = tmp_path_factory.mktemp("ft") / "whisper-ft"
    shutil.copytree(built_sample("tiny-whisper"), folder)
    weights = load_file(folder / "model.safetensors")
    rng = np.random.default_rng(1)
    for key, value in weights.items():
        if key.startswith("model.decoder.") and value.ndim == 2:
            weights[key] = (value + rng.normal(0, 0.02, value.shape)).astype(value.dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, whisper_ft: Path) -> dict:
    """The pair packaged for the phone through the CLI, smoke-tested: the --json summary and the bundle."""
    out = tmp_path_factory.mktemp("pair")
    summary = package_json("sample:tiny-whisper", str(whisper_ft), "--target", "phone", "--out", str(out / "dist"),
                           "--smoke", "host", "--report", str(out / "report"))
    return {"summary": summary, "archive": Path(summary["archive"]), "report": out / "report",
            "bundle": unpack(Path(summary["archive"]), out / "unpacked")}


def test_a_shared_encoder_is_stored_once_and_referenced_by_hash(pair: dict) -> None:
    summary, bundle = pair["summary"], pair["bundle"]
    assert summary["smoke"]["verdict"] == "PASS"
    assert list(summary["models"]) == ["tiny-whisper", "whisper-ft"]
    shared = [b for b in summary["blobs"] if len(b["used_by"]) > 1]
    assert [b["used_by"] for b in shared] == [["tiny-whisper/encoder", "whisper-ft/encoder"]]
    assert len(summary["blobs"]) == 3            # one encoder, two decoders
    with tarfile.open(pair["archive"]) as tar:
        encoders = [m.name for m in tar.getmembers() if m.name.endswith("/encoder_model.onnx")]
    assert len(encoders) == 1

    top = json.loads((bundle / "manifest.json").read_text())
    assert top["kind"] == "suite" and [m["path"] for m in top["models"]] == ["models/tiny-whisper", "models/whisper-ft"]
    key = shared[0]["key"]
    # The key is the sha256 over the source files' names and sha256s (the .ort is derived from them).
    blob = bundle / "blobs" / key
    sources = sorted(p.name for p in blob.iterdir() if not p.name.endswith(".ort"))
    lines = "".join(f"{n} {hashlib.sha256((blob / n).read_bytes()).hexdigest()}\n" for n in sources)
    assert hashlib.sha256(lines.encode()).hexdigest() == key
    encoders_named = set()
    for name in ("tiny-whisper", "whisper-ft"):
        manifest = json.loads((bundle / "models" / name / "manifest.json").read_text())
        encoders_named.add(manifest["runtime"]["components"]["encoder"])
        assert not (bundle / "models" / name / "run.py").exists()   # one runner for all, at the top
    assert encoders_named == {f"../../blobs/{key}/encoder_model.ort"}


def test_the_manifests_and_the_report_hold_to_their_schemas(pair: dict) -> None:
    import jsonschema

    schemas = Path(__file__).resolve().parent.parent / "schemas"
    bundle = pair["bundle"]
    for schema, document in (("suite", bundle / "manifest.json"), ("report", pair["report"] / "report.json"),
                             *(("manifest", m) for m in sorted(bundle.glob("models/*/manifest.json")))):
        validator = jsonschema.Draft202012Validator(json.loads((schemas / f"{schema}.schema.json").read_text()))
        found = [e.message for e in validator.iter_errors(json.loads(document.read_text()))]
        assert found == [], (document, found)
    report = (pair["report"] / "report.md").read_text()
    assert "tiny-whisper\\: tokens 100.0%" in report and "whisper-ft\\: tokens" in report   # each model's own


def test_the_whole_is_measured_together_with_a_per_model_breakdown(pair: dict) -> None:
    summary = pair["summary"]
    mem = summary["memory"]
    alone = {n: m["memory_alone"]["measured_peak_bytes"] for n, m in summary["models"].items()}
    assert mem["verdict_basis"] == "measured" and mem["fits"]
    # Together costs more than either alone, and less than both apart: the runtime and the encoder once.
    assert max(alone.values()) < mem["measured_peak_bytes"] < sum(alone.values())
    assert set(mem["components"]) == set(alone)
    assert all(c["measured_load_bytes"] >= 0 and c["estimate"]["high_bytes"] > 0 for c in mem["components"].values())
    # The estimate: the first model whole, and of the second only what it does not share (its decoder).
    first, second = (m["memory_alone"] for m in summary["models"].values())
    for side in ("low_bytes", "high_bytes"):
        assert mem["estimate"][side] == first["estimate"][side] + second["components"]["decoder"]["estimate"][side]
    assert any("counted once" in note for note in mem["estimate"]["notes"])
    # Each model passed its own verify and its own smoke check inside the one smoke test.
    assert set(summary["smoke"]["report"]["models"]) == set(alone)
    assert all(m["accuracy"]["token_agreement"] >= 0.9 for m in summary["smoke"]["report"]["models"].values())


def test_run_py_picks_a_model_by_name(pair: dict) -> None:
    bundle = pair["bundle"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "run.py", *args], cwd=bundle, capture_output=True, text=True,
                              timeout=300)

    done = run("--model", "whisper-ft", "models/whisper-ft/samples/chord.wav", "--max-new-tokens", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)[0]["tokens"]) >= 1
    unnamed = run("models/whisper-ft/samples/chord.wav")
    assert unnamed.returncode == 2 and "holds several models (tiny-whisper, whisper-ft); pick one with --model" \
        in unnamed.stderr
    wrong = run("--model", "vision", "x.png")
    assert wrong.returncode == 2 and "no model 'vision' in this bundle" in wrong.stderr
    # `packager inspect` takes one graph: it names where a bundle of several keeps them.
    inspected = run_cli("inspect", str(pair["archive"]))
    assert inspected.returncode == ExitCode.BAD_INPUT and "a bundle of several models" in inspected.stderr


def test_a_changed_shared_blob_fails_the_smoke_test(pair: dict, tmp_path: Path) -> None:
    bundle = shutil.copytree(pair["bundle"], tmp_path / "b")
    checked = run_cli("smoke", str(bundle))
    assert checked.returncode == 0 and checked.stdout.strip().endswith("PASS"), checked.stderr
    assert "outputs   tiny-whisper: 100.0%" in checked.stderr and "outputs   whisper-ft: " in checked.stderr
    (blob,) = [b for b in pair["summary"]["blobs"] if len(b["used_by"]) > 1]
    target = bundle / "blobs" / blob["key"] / "encoder_model.ort"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    result = run_smoke(bundle)
    assert result.verdict.startswith("FAIL: checksum mismatch: blobs/")


def test_over_the_budget_together_is_refused_and_writes_nothing(pair: dict, whisper_ft: Path, tmp_path: Path) -> None:
    """A budget each model fits alone, but not both together: exit 3, nothing in --out."""
    summary = pair["summary"]
    alone = max(m["memory_alone"]["measured_peak_bytes"] for m in summary["models"].values())
    together = summary["memory"]["measured_peak_bytes"]
    budget = (alone + together) // 2
    out = tmp_path / "dist"
    with pytest.raises(PackagerError, match="the 2 models do not fit together") as e:
        api.package(["sample:tiny-whisper", str(whisper_ft)], "phone", out=out, budget=budget)
    assert e.value.code == ExitCode.DOES_NOT_FIT
    assert "leave a model out" in e.value.message
    assert not out.exists()


def test_options_for_one_model_and_repeated_models_are_refused(tmp_path: Path, silero_onnx: Path) -> None:
    for args, words in ((["--adapter", "sample:tiny-llama-lora"], "--adapter applies to one model, and 2 were given"),
                        (["--shape", "input=1,512"], "--shape applies to one model")):
        proc = run_cli("package", str(silero_onnx), "sample:minilm", "--target", "rpi5", "--out", str(tmp_path / "o"),
                       *args)
        assert proc.returncode == ExitCode.USAGE and words in proc.stderr, proc.stderr
    proc = run_cli("package", str(silero_onnx), str(silero_onnx), "--target", "rpi5", "--out", str(tmp_path / "o"))
    assert proc.returncode == ExitCode.USAGE and "is given twice" in proc.stderr
    # A missing model fails before any model's work (no stage ran), however late it comes.
    proc = run_cli("package", "sample:minilm", str(tmp_path / "typo.onnx"), "--target", "rpi5", "--out",
                   str(tmp_path / "o"))
    assert proc.returncode == ExitCode.BAD_INPUT and "typo.onnx: no such file or folder" in proc.stderr
    assert "export" not in proc.stderr
    proc = run_cli("check", "sample:minilm", "sample:tiny-wisper", "--target", "rpi5")
    assert proc.returncode == ExitCode.BAD_INPUT and "unknown sample 'tiny-wisper'" in proc.stderr
    assert "did you mean" in proc.stderr.lower() and "export" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_single_graph_models_bundle_together_for_a_jetson_signed(tmp_path: Path) -> None:
    """A text model and a tensor model, nothing shared, on the Jetson (container files at the top), signed:
    the top manifest lists every file, so its signature covers the models' manifests and the blobs."""
    from packager.signing import keygen

    private, public, _ = keygen(tmp_path / "key.pem")
    summary = package_json("sample:minilm", "sample:silero-vad", "--target", "jetson-orin-nano", "--out",
                           str(tmp_path / "dist"), "--smoke", "host", "--name", "assistant", "--sign", str(private))
    assert summary["bundle"] == "assistant-jetson-orin-nano" and summary["smoke"]["verdict"] == "PASS"
    assert summary["smoke"]["report"]["signature"]["checked"] is True
    assert all(len(b["used_by"]) == 1 for b in summary["blobs"]) and len(summary["blobs"]) == 2
    bundle = unpack(Path(summary["archive"]), tmp_path / "u")
    assert (bundle / "Dockerfile").is_file() and not list(bundle.glob("models/*/Dockerfile"))
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert len(requirements) == len(set(requirements))   # each pin once
    env = {**os.environ, "PACKAGER_PUBLIC_KEY": str(public)}
    done = subprocess.run([sys.executable, "run.py", "--model", "minilm", "a sentence"], cwd=bundle,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 1, done.stderr
    # A blob changed after signing: the signature check refuses the whole bundle before any model runs.
    blob = next((bundle / "blobs").glob("*/model.onnx"))
    blob.write_bytes(blob.read_bytes() + b"\0")
    refused = subprocess.run([sys.executable, "run.py", "--model", "minilm", "a sentence"], cwd=bundle,
                             capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and "does not match the signed manifest.json" in refused.stderr, refused.stderr


def test_check_of_several_models_judges_them_together(whisper_ft: Path, tmp_path: Path) -> None:
    """`packager check A B`: the estimate and the measurement of both loaded together, the shared encoder once;
    a budget under the whole's estimate (each model fitting it alone) is exit 3."""
    proc = run_cli("check", "sample:tiny-whisper", str(whisper_ft), "--target", "phone", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fits"] and result["verdict_basis"] == "measured" and result["measured"]["peak_bytes"] > 0
    assert [s["used_by"] for s in result["shared"]] == [["tiny-whisper/encoder", "whisper-ft/encoder"]]
    assert list(result["components"]) == ["tiny-whisper", "whisper-ft"]
    budget = result["estimate"]["high_bytes"] - 2**20
    over = run_cli("check", "sample:tiny-whisper", str(whisper_ft), "--target", "phone", "--no-measure",
                   "--budget", str(budget))
    assert over.returncode == ExitCode.DOES_NOT_FIT, over.stderr
    assert over.stdout.startswith("DOES NOT FIT: sample:tiny-whisper + ") and "estimate (high) peak" in over.stdout
    alone = run_cli("check", "sample:tiny-whisper", "--target", "phone", "--no-measure", "--budget", str(budget))
    assert alone.returncode == 0 and alone.stdout.startswith("FITS"), alone.stderr
    refused = run_cli("check", "sample:silero-vad", "sample:silero-vad", "--target", "rpi5")
    assert refused.returncode == ExitCode.USAGE and "is given twice" in refused.stderr
