"""Issue 17 (items 3, 4, 8): a damaged stage cache entry is a miss, swept and rebuilt with one warning;
a tokenizer.json that does not load is a bad input named up front; a killed run's leftovers (a
half-written bundle in --out, a work folder in TMPDIR) are swept by the next run, a live run's never."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from packager.cache import BadMeta, StageCache, key_of, parse_meta
from packager.leftovers import (
    BUNDLE_PARTIAL,
    CACHE_PARTIAL,
    WORK_FOLDER,
    bundle_partial,
    cache_partial,
    temp_folder,
    work_folder,
)

# ---------------------------------------------------------------- the stage cache's meta.json


@dataclass(frozen=True)
class CleanRun:
    cache: Path        # PACKAGER_CACHE_DIR after one run: holds the export's entry
    stdout: str        # the verdict line
    table: list[str]   # the estimate table (stderr, after the stage lines)


def _check(model: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check", str(model), "--target", "rpi5", "--no-measure",
                   env={"PACKAGER_NO_CACHE": "", "PACKAGER_CACHE_DIR": str(cache)})


def _table(stderr: str) -> list[str]:
    """The estimate's table: from its header on (the progress lines above it carry elapsed seconds)."""
    lines = [line for line in stderr.splitlines() if line.startswith("  ")]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("memory for"))
    return lines[start:]


def _export_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "stages" / "export").iterdir() if not p.name.startswith(".")]
    return entry


@pytest.fixture(scope="module")
def clean_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    cache = tmp_path_factory.mktemp("clean-cache")
    proc = _check(tiny_bert, cache)
    assert proc.returncode == 0, proc.stderr
    return CleanRun(cache, proc.stdout, _table(proc.stderr))


def _damage(meta: Path, how: str) -> None:
    text = meta.read_text()
    if how == "empty-list":
        meta.write_text("[]")
    elif how == "deep":
        meta.write_text("[" * 200_000 + "]" * 200_000)
    elif how == "truncated":
        meta.write_text(text[: len(text) // 2])
    elif how == "wrong-types":
        record = json.loads(text)
        record["files"]["model.onnx"]["size"] = str(record["files"]["model.onnx"]["size"])
        meta.write_text(json.dumps(record))
    else:  # edited data.io: still valid JSON of the right shape, but not what was stored
        record = json.loads(text)
        record["data"]["io"]["max_length"] = 7
        meta.write_text(json.dumps(record))


WHY = {"empty-list": "its meta.json is not an object of key, stage, inputs, data, files, content",
       "deep": "its meta.json is nested too deeply",
       "truncated": "its meta.json is not JSON (",
       "wrong-types": "its meta.json's record of 'model.onnx' is not a sha256 and a size",
       "edited-data-io": "its meta.json does not match its recorded content sha256 (edited)"}


@pytest.mark.integration
@pytest.mark.parametrize("how", ["empty-list", "deep", "truncated", "wrong-types", "edited-data-io"])
def test_a_damaged_meta_json_is_a_miss_swept_and_rebuilt(tiny_bert: Path, clean_run: CleanRun, tmp_path: Path,
                                                         how: str) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(clean_run.cache, cache)
    entry = _export_entry(cache)
    clean_meta = parse_meta((entry / "meta.json").read_text())
    _damage(entry / "meta.json", how)
    proc = _check(tiny_bert, cache)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("export: ")]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith(f"export: damaged cache entry {entry}: {WHY[how]}")
    assert warnings[0].endswith("; removed it and exported again")
    assert "(damaged cache entry rebuilt)" in proc.stderr  # the export's stage line
    # The result is a clean run's, and the entry is whole again, with the data a clean run stored.
    assert proc.stdout == clean_run.stdout
    assert _table(proc.stderr) == clean_run.table
    rebuilt = parse_meta((_export_entry(cache) / "meta.json").read_text())
    assert rebuilt.key == clean_meta.key and rebuilt.data == clean_meta.data
    assert [p.name for p in (cache / "stages" / "export").iterdir()] == [entry.name]  # nothing aside, no partial


def _stored(tmp_path: Path) -> tuple[StageCache, dict, Path]:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights" * 100)
    cache = StageCache(tmp_path / "c")
    inputs = {"stage": "export", "opset": 17}
    assert cache.store("export", inputs, folder, {"io": {"kind": "tensor", "inputs": []}}) == ""
    return cache, inputs, cache.entry("export", key_of(inputs)) / "meta.json"


def _edit(meta: Path, change) -> None:
    record = json.loads(meta.read_text())
    change(record)
    meta.write_text(json.dumps(record))


EDITS = {
    "empty-list": lambda m: m.write_text("[]"),
    "deep-list": lambda m: m.write_text("[" * 200_000 + "]" * 200_000),
    "deep-object": lambda m: m.write_text('{"a":' * 200_000 + "1" + "}" * 200_000),
    "truncated": lambda m: m.write_text(m.read_text()[:40]),
    "not-utf8": lambda m: m.write_bytes(b"\xff\xfe{}"),
    "key-not-hex": lambda m: _edit(m, lambda r: r.update(key="x" * 64)),
    "data-a-list": lambda m: _edit(m, lambda r: r.update(data=[])),
    "size-a-bool": lambda m: _edit(m, lambda r: r["files"]["model.onnx"].update(size=True)),
    "path-escapes": lambda m: _edit(m, lambda r: r["files"].update({"../x": r["files"]["model.onnx"]})),
    "extra-field": lambda m: _edit(m, lambda r: r.update(extra=1)),
    "no-content": lambda m: _edit(m, lambda r: r.pop("content")),
    "edited-data": lambda m: _edit(m, lambda r: r["data"]["io"].update(kind="text")),
    "edited-inputs": lambda m: _edit(m, lambda r: r["inputs"].update(opset=18)),
}


@pytest.mark.parametrize("how", sorted(EDITS))
def test_a_meta_json_that_is_not_its_record_is_corrupt_and_removed(tmp_path: Path, how: str) -> None:
    cache, inputs, meta = _stored(tmp_path)
    EDITS[how](meta)
    with pytest.raises(BadMeta) as e:
        parse_meta(meta.read_bytes().decode("utf-8", "replace"))
    assert "\n" not in str(e.value) and len(str(e.value)) < 300
    fetched = cache.fetch("export", inputs, tmp_path / "dest")
    assert fetched.status == "corrupt" and str(meta.parent) in fetched.problem and "\n" not in fetched.problem
    assert not meta.parent.exists() and not (tmp_path / "dest").exists()
    assert cache.fetch("export", inputs, tmp_path / "dest").status == "miss"


def test_an_entry_without_the_data_its_stage_needs_is_corrupt_and_removed(tmp_path: Path) -> None:
    cache, inputs, meta = _stored(tmp_path)
    fetched = cache.fetch("export", inputs, tmp_path / "dest", lambda data: "" if "tokens" in data else "no tokens")
    assert fetched.status == "corrupt" and fetched.problem.endswith("no tokens")
    assert not meta.parent.exists() and not (tmp_path / "dest").exists()


def test_store_replaces_a_damaged_entry_and_keeps_a_whole_one(tmp_path: Path) -> None:
    cache, inputs, meta = _stored(tmp_path)
    meta.write_text("[" * 200_000)  # damaged where fetch has not seen it yet: store replaces it
    assert cache.store("export", inputs, tmp_path / "out", {"io": {"kind": "tensor", "inputs": []}}) == ""
    assert parse_meta(meta.read_text()).data == {"io": {"kind": "tensor", "inputs": []}}
    assert cache.fetch("export", inputs, tmp_path / "dest").status == "hit"


# ---------------------------------------------------------------- a tokenizer.json that does not load


@pytest.mark.parametrize("value", [False, True])
def test_a_malformed_tokenizer_json_is_a_bad_input(tiny_bert: Path, tmp_path: Path, value: bool) -> None:
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_bert, folder)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text()[:200])
    extra = ["--value", "input_ids=1", "--value", "token_type_ids=0"] if value else []
    proc = run_cli("package", "my-model", "--target", "rpi5", "--out", "dist", *extra, cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # named by its absolute path (stages/source.py resolve: the steps that read the model run in other folders)
    assert error.startswith(f"error: {folder / 'tokenizer.json'}: cannot load the tokenizer (")
    assert error.endswith("); fix or remove the file.")
    assert "✓ export" not in proc.stderr  # refused before any work
    assert not (tmp_path / "dist").exists()


# ---------------------------------------------------------------- a killed run's leftovers


def _tiny_onnx(path: Path) -> Path:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The PID of a sleeping child: a concurrent run's."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _leftover(path: Path, age_s: float = 120) -> Path:
    if path.name.startswith("packager-"):
        path.mkdir()
        (path / "reference").mkdir()
        (path / "reference" / "model.onnx").write_bytes(b"half")
    else:
        path.write_bytes(b"half an archive")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_killed_runs_leftovers_are_swept_by_the_next_run(tmp_path: Path, live_pid: int) -> None:
    tmpdir, out = tmp_path / "tmp", tmp_path / "dist"
    tmpdir.mkdir()
    out.mkdir()
    dead = _dead_pid()
    stale = [_leftover(out / f".mm-rpi5.tar.gz.partial-{dead}"),
             _leftover(out / f".other-jetson.tar.gz.partial-{dead}"),
             _leftover(tmpdir / f"packager-{dead}-work-abc_1234"),
             _leftover(tmpdir / f"packager-{dead}-int8-merged-zzzzzzzz")]
    kept = [
        _leftover(out / f".mm-rpi5.tar.gz.partial-{live_pid}"),       # a concurrent run's
        _leftover(tmpdir / f"packager-{live_pid}-work-abcd1234"),
        _leftover(out / f".mm-rpi5.tar.gz.partial-{dead}x"),          # not packager's pattern exactly
        _leftover(out / f"mm-rpi5.tar.gz.partial-{dead}"),
        _leftover(tmpdir / f"packager-{dead}-abc"),
        _leftover(tmpdir / f"packager-{dead}-work-abcd1234.tar"),
        _leftover(tmpdir / f"packager-{dead}-work-abcd12345"),
        _leftover(out / f".fresh-rpi5.tar.gz.partial-{dead}", age_s=0),  # written a moment ago (another namespace?)
    ]
    model = _tiny_onnx(tmp_path / "mm.onnx")
    proc = run_cli("package", str(model), "--target", "rpi5", "--out", str(out), env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stderr
    assert (out / "mm-rpi5.tar.gz").is_file()
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    # The run's own temporary folders are gone, and would have been sweepable by their names.
    assert sorted(p.name for p in tmpdir.glob("packager-*")) == sorted(p.name for p in kept if p.parent == tmpdir)


def test_each_temporary_name_matches_its_pattern_and_no_other(tmp_path: Path) -> None:
    work = work_folder("work")
    work.rmdir()
    with temp_folder("int8-merged") as tmp:
        scratch = Path(tmp).name
    names = [(CACHE_PARTIAL, cache_partial(tmp_path, "userland-").name),
             (BUNDLE_PARTIAL, bundle_partial(tmp_path / "mm-rpi5.tar.gz").name),
             (WORK_FOLDER, work.name), (WORK_FOLDER, scratch)]
    for pattern, name in names:
        match = pattern.fullmatch(name)
        assert match and int(match["pid"]) == os.getpid(), (pattern, name)
        assert [p for p in (CACHE_PARTIAL, BUNDLE_PARTIAL, WORK_FOLDER) if p.fullmatch(name)] == [pattern]
