"""The typed records: the manifest (targets/runtime/manifest.py, the device's reader, which the host reads
with too) and memory, accuracy and --fit auto (packager/records.py) serialize to what schemas/ describe,
read back to the same record, and a malformed manifest is refused in one sentence: on the device by the
smoke test, on the host by `packager inspect` (exit 5) and `packager smoke` (exit 8)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import REPO, run_cli, unpack
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.records import Accuracy, Fit, Io, Memory

DATA = Path(__file__).parent / "data"


def validator(name: str, part: str | None = None) -> jsonschema.Draft202012Validator:
    """The schema `name`, or its `$defs` entry `part` (its own $refs resolve against the whole)."""
    schema = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    if part is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{part}"}
    return jsonschema.Draft202012Validator(schema)


def errors(name: str, doc: Any, part: str | None = None) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(name, part).iter_errors(doc)]


def decoder_manifest() -> dict[str, Any]:
    """A real decoder bundle's manifest, as today's fit stage writes its estimate (run_low_bytes)."""
    manifest = json.loads((DATA / "manifest_decoder.json").read_text(encoding="utf-8"))
    manifest["memory"]["estimate"].setdefault("run_low_bytes", manifest["memory"]["estimate"]["low_bytes"])
    return manifest


@pytest.fixture(scope="module")
def silero_summary(silero_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh bundle of silero-vad for rpi5 (a tensor model: seconds to build): `package --json`'s summary."""
    out = tmp_path_factory.mktemp("records") / "dist"
    proc = run_cli("package", str(silero_onnx), "--target", "rpi5", "--out", str(out), "--shape", "input=1,512",
                   "--shape", "state=2,1,128", "--value", "sr=16000", "--json")
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


@pytest.fixture(scope="module")
def silero_bundle(silero_summary: dict[str, Any]) -> Path:
    return Path(silero_summary["archive"])


# ---------------------------------------------------------------- records against their schemas


def test_a_decoder_manifest_reads_typed_and_writes_back_what_it_read() -> None:
    rt = runner()
    manifest = decoder_manifest()
    record = rt.Manifest.from_dict(manifest)
    assert record.runtime.io.kind == "decoder" and record.runtime.session.intra_op_threads >= 1
    assert record.smoke.min_token_agreement == manifest["smoke"]["min_token_agreement"]
    assert record.to_dict() == manifest
    assert errors("manifest", record.to_dict()) == []
    assert rt.Manifest.from_dict(record.to_dict()) == record


def test_a_fresh_bundles_manifest_reads_and_writes_back(silero_bundle: Path, tmp_path: Path) -> None:
    rt = runner()
    folder = unpack(silero_bundle, tmp_path)
    written = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    record = rt.load_manifest(folder)
    assert isinstance(record, rt.Manifest) and record.runtime.io.kind == "tensor"
    assert record.to_dict() == written and errors("manifest", record.to_dict()) == []
    assert [f.path for f in record.files] == [f["path"] for f in written["files"]]
    assert rt.read_runtime(folder) == record.runtime


@pytest.mark.parametrize("cls", [Memory, Accuracy])
def test_memory_and_accuracy_match_their_schemas_and_round_trip(cls: Any) -> None:
    part = cls.__name__.lower()
    manifest = decoder_manifest()
    record = cls.from_dict(manifest[part])
    assert record.to_dict() == manifest[part]
    assert errors("manifest", record.to_dict(), part) == []
    assert cls.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("cls", [Memory, Accuracy])
def test_memory_and_accuracy_keep_the_key_order_package_json_prints(cls: Any, silero_summary: dict[str, Any]) -> None:
    part = cls.__name__.lower()
    record = cls.from_dict(silero_summary[part])
    assert list(record.to_dict().items()) == list(silero_summary[part].items())
    assert errors("report", record.to_dict(), part) == []


def test_memory_keeps_the_estimate_typed() -> None:
    memory = Memory.from_dict(decoder_manifest()["memory"])
    assert memory.estimate.high_bytes >= memory.estimate.low_bytes > 0
    assert memory.to_dict()["estimate"] == memory.estimate.to_dict()


def test_io_matches_its_schema_and_the_devices_record(silero_bundle: Path, tmp_path: Path) -> None:
    """ctx.io (packager/records.py Io) writes the manifest's runtime.io as the device reads it: the two records
    name the same fields in the same order, and a decoder's and a fresh tensor model's io round-trip."""
    rt = runner()
    assert [(f.name, f.default) for f in dataclasses.fields(Io)] == \
        [(f.name, f.default) for f in dataclasses.fields(rt.Io)]
    written = json.loads((unpack(silero_bundle, tmp_path) / "manifest.json").read_text(encoding="utf-8"))
    for io in (decoder_manifest()["runtime"]["io"], written["runtime"]["io"]):
        record = Io.from_dict(io)
        assert record.to_dict() == io == rt.Io.from_dict(io).to_dict()
        assert errors("manifest", record.to_dict(), "io") == []
    with pytest.raises(PackagerError) as e:
        Io.from_dict({k: v for k, v in written["runtime"]["io"].items() if k != "kind"})
    assert e.value.code == ExitCode.BAD_INPUT and "runtime.io.kind is missing" in e.value.message


def test_fit_matches_its_schema_and_round_trips() -> None:
    fit = Fit(tried=[{"recipe": "fp32", "context": 8192, "outcome": "does not fit: ..."},
                     {"recipe": "fp32", "context": 4096, "outcome": "fits and passes verify"}],
              predicted_peak_bytes={"fp32": {"4096": 123456789}}, chosen="fp32", context=4096,
              why="the most precise recipe that fits")
    assert list(fit.to_dict()) == ["mode", "tried", "predicted_peak_bytes", "chosen", "context", "why"]
    assert errors("manifest", fit.to_dict(), "fit_auto") == []
    assert Fit.from_dict(fit.to_dict()) == fit
    assert list(Fit(tried=[{"recipe": "int8", "outcome": "x"}], chosen="int8", why="y").to_dict()) == \
        ["mode", "tried", "chosen", "why"]


# ---------------------------------------------------------------- malformed manifests


def missing_key(m: dict[str, Any]) -> None:
    del m["runtime"]["io"]["checked_outputs"]


def wrong_type(m: dict[str, Any]) -> None:
    m["files"][0]["size"] = "12"


def list_for_dict(m: dict[str, Any]) -> None:
    m["runtime"]["session"] = [m["runtime"]["session"]]


MALFORMED = {
    "missing key": (missing_key, "runtime.io.checked_outputs is missing"),
    "wrong type": (wrong_type, "files[0].size is a string, not an integer"),
    "list for a dict": (list_for_dict, "runtime.session is a list, not an object"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_the_reader_refuses_a_malformed_manifest_in_one_sentence(case: str) -> None:
    rt = runner()
    change, words = MALFORMED[case]
    manifest = decoder_manifest()
    change(manifest)
    with pytest.raises(rt.ManifestError) as e:
        rt.manifest_record(manifest)
    message = str(e.value)
    assert words in message and "rebuild the bundle" in message and "\n" not in message
    assert isinstance(e.value, ValueError)   # what the device's callers catch


def test_a_record_from_malformed_json_is_a_packager_error() -> None:
    broken = copy.deepcopy(decoder_manifest()["memory"])
    broken["fits"] = "yes"
    with pytest.raises(PackagerError) as e:
        Memory.from_dict(broken)
    assert e.value.code == ExitCode.BAD_INPUT and "memory.fits is a string, not true or false" in e.value.message


def test_a_key_packager_does_not_write_is_refused_where_the_schema_closes_the_object() -> None:
    rt = runner()
    manifest = decoder_manifest()
    manifest["runtime"]["sesion"] = {}
    with pytest.raises(rt.ManifestError, match="runtime has a key packager does not write"):
        rt.Manifest.from_dict(manifest)


def damaged(archive: Path, dest: Path, change: Any) -> Path:
    """The bundle unpacked into `dest`, its manifest changed and SHA256SUMS updated to match: a bundle
    whose checksums hold but whose manifest is not of packager's shape."""
    folder = unpack(archive, dest)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    sums = folder / "SHA256SUMS"
    lines = [f"{digest}  manifest.json" if line.endswith("  manifest.json") else line
             for line in sums.read_text(encoding="utf-8").splitlines()]
    sums.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("case", MALFORMED)
def test_the_device_smoke_test_fails_a_malformed_manifest(case: str, silero_bundle: Path, tmp_path: Path) -> None:
    change, words = MALFORMED[case]
    folder = damaged(silero_bundle, tmp_path, change)
    proc = subprocess.run([sys.executable, str(folder / "smoke_test.py")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    verdict = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 1 and verdict.startswith("FAIL: manifest.json: ") and words in verdict, proc.stdout


@pytest.mark.integration
def test_the_host_refuses_a_malformed_manifest(silero_bundle: Path, tmp_path: Path) -> None:
    words = MALFORMED["list for a dict"][1]
    folder = damaged(silero_bundle, tmp_path, list_for_dict)
    inspect = run_cli("inspect", str(folder))
    assert inspect.returncode == ExitCode.BAD_INPUT and words in inspect.stderr, inspect.stderr
    smoke = run_cli("smoke", str(folder))
    assert smoke.returncode == ExitCode.SMOKE_FAILED and words in smoke.stdout + smoke.stderr, smoke.stdout
