"""The stage cache: a second target of an exported model skips the export; damaged entries are
rebuilt, never used; entries appear whole or not at all."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

import packager
from packager.cache import StageCache, key_of, open_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stage-cache")


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "export").iterdir() if not p.name.startswith(".")]
    return entry


@pytest.mark.integration
def test_a_second_target_reuses_the_export(tiny_bert: Path, cache: Path) -> None:
    first = packager.check(tiny_bert, "rpi5", measure=False, cache=cache)
    assert first.cache == {"export": "miss"}
    second = packager.check(tiny_bert, "phone", measure=False, cache=cache)
    assert second.cache == {"export": "hit"}
    assert second.timings_s["export"] < first.timings_s["export"]
    assert second.estimate["breakdown"]["weights_inline"] == first.estimate["breakdown"]["weights_inline"]
    entry = _entry(cache)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name == key_of(meta["inputs"])
    assert meta["inputs"]["source"]["sha256"] and meta["inputs"]["opset"] == 20
    assert {"torch", "transformers", "optimum-onnx", "onnx"} <= set(meta["inputs"]["tools"])
    assert meta["data"]["io"]["kind"] == "text" and "model.onnx" in meta["files"]
    assert packager.check(tiny_bert, "rpi5", measure=False, cache=False).cache == {"export": "off"}


@pytest.mark.integration
def test_a_damaged_entry_is_rebuilt_never_used(tiny_bert: Path, cache: Path, tmp_path: Path) -> None:
    packager.check(tiny_bert, "rpi5", measure=False, cache=cache)  # the entry exists (built above, or now)
    model = _entry(cache) / "files" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    model.write_bytes(bytes(data))
    result = packager.check(tiny_bert, "rpi5", measure=False, cache=cache)
    assert result.cache == {"export": "corrupt"}
    entry = _entry(cache)  # rebuilt in its place, whole again
    fetched = StageCache(cache).fetch("export", json.loads((entry / "meta.json").read_text())["inputs"], tmp_path / "x")
    assert fetched.status == "hit" and (tmp_path / "x" / "model.onnx").read_bytes() != bytes(data)


def _store(root: Path, tmp_path: Path, inputs: dict) -> StageCache:
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"weights" * 100)
    (folder / "sub" / "tok.json").write_text("{}")
    cache = StageCache(root)
    assert cache.store("export", inputs, folder, {"io": {"kind": "tensor"}}) == ""
    return cache


@pytest.mark.parametrize("damage", ["truncated", "meta-garbage", "meta-missing", "file-missing", "file-extra",
                                    "other-key"])
def test_damaged_entries_read_as_corrupt_and_are_removed(tmp_path: Path, damage: str) -> None:
    inputs = {"stage": "export", "opset": 17}
    cache = _store(tmp_path / "c", tmp_path, inputs)
    entry = cache.entry("export", key_of(inputs))
    if damage == "truncated":
        model = entry / "files" / "model.onnx"
        model.write_bytes(model.read_bytes()[:10])
    elif damage == "meta-garbage":
        (entry / "meta.json").write_text('{"key": ')
    elif damage == "meta-missing":
        (entry / "meta.json").unlink()
    elif damage == "file-missing":
        (entry / "files" / "sub" / "tok.json").unlink()
    elif damage == "file-extra":
        (entry / "files" / "planted.onnx").write_bytes(b"x")
    else:
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps(meta | {"key": "0" * 64}))
    fetched = cache.fetch("export", inputs, tmp_path / "dest")
    assert fetched.status == "corrupt" and fetched.problem
    assert not entry.exists() and not (tmp_path / "dest").exists()
    assert cache.fetch("export", inputs, tmp_path / "dest").status == "miss"


def test_a_whole_entry_round_trips(tmp_path: Path) -> None:
    inputs = {"stage": "export", "opset": 17}
    cache = _store(tmp_path / "c", tmp_path, inputs)
    fetched = cache.fetch("export", inputs, tmp_path / "dest")
    assert fetched.status == "hit" and fetched.data == {"io": {"kind": "tensor"}}
    assert (tmp_path / "dest" / "sub" / "tok.json").read_text() == "{}"
    assert cache.fetch("export", inputs | {"opset": 18}, tmp_path / "other").status == "miss"
    # Another run storing the same key later keeps the entry there (a reader may be copying it).
    meta = (cache.entry("export", key_of(inputs)) / "meta.json").read_bytes()
    assert cache.store("export", inputs, tmp_path / "dest", {"io": {"kind": "other"}}) == ""
    assert (cache.entry("export", key_of(inputs)) / "meta.json").read_bytes() == meta


def test_a_killed_runs_partial_entry_is_swept_and_a_failed_store_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    dead = root / "export" / ".partial-999999999-abc"  # no such process
    dead.mkdir(parents=True)
    (dead / "model.onnx").write_bytes(b"half")
    os.utime(dead, (time.time() - 120, time.time() - 120))  # untouched for over a minute (leftovers.py)
    _store(root, tmp_path, {"stage": "export"})
    assert not dead.exists()
    # A cache that cannot be written costs nothing but the reuse: the run goes on.
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    problem = StageCache(blocked).store("export", {"stage": "export"}, tmp_path / "out", {})
    assert "could not store it" in problem
    assert [p.name for p in (root / "export").iterdir() if p.name.startswith(".")] == []


def test_the_key_follows_the_opset_not_the_target(tmp_path: Path) -> None:
    from packager.context import Context, Source
    from packager.profiles import resolve_target
    from packager.stages.export import cache_inputs

    source = Source("huggingface", tmp_path, "m", (), "ab" * 32, task="feature-extraction", architecture="BertModel")

    def key(profile) -> str:
        ctx = Context("m", profile, "fp32", tmp_path, tmp_path)
        ctx.source = source
        return key_of(cache_inputs(ctx))

    rpi5, phone = resolve_target("rpi5"), resolve_target("phone")
    old_runtime = dataclasses.replace(rpi5, runtime=dataclasses.replace(rpi5.runtime, max_opset=17))
    assert key(rpi5) == key(phone) != key(old_runtime)
    other_source = dataclasses.replace(source, sha256="cd" * 32)
    ctx = Context("m", rpi5, "fp32", tmp_path, tmp_path)
    ctx.source = other_source
    assert key_of(cache_inputs(ctx)) != key(rpi5)


def test_the_key_follows_the_families_code_that_describes_the_io(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A cached export's meta.json holds the io its family described: an edit to any family module that
    # describes io must make a new key, or a hit would bring back the old description.
    from packager import families
    from packager.context import Context, Source
    from packager.profiles import resolve_target
    from packager.stages.export import cache_inputs

    ctx = Context("m", resolve_target("rpi5"), "fp32", tmp_path, tmp_path)
    ctx.source = Source("huggingface", tmp_path, "m", (), "ab" * 32, task="text-generation-with-past")
    before = key_of(cache_inputs(ctx))
    hashed = {Path(str(m.__file__)).name for m in families.io_modules()}
    assert {"__init__.py", "base.py", "decoder.py", "encoders.py", "seq2seq.py"} <= hashed
    for module in families.io_modules():
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_bytes(Path(str(module.__file__)).read_bytes() + b"\n# an edit\n")
        with monkeypatch.context() as patch:
            patch.setattr(module, "__file__", str(edited))
            assert key_of(cache_inputs(ctx)) != before, module.__name__
    assert key_of(cache_inputs(ctx)) == before


def test_open_cache_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKAGER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PACKAGER_NO_CACHE", raising=False)
    assert open_cache(True) == StageCache(tmp_path / "stages")  # beside emulate/, not inside it
    assert open_cache(False) is None
    assert open_cache(tmp_path / "x") == StageCache(tmp_path / "x")
    monkeypatch.setenv("PACKAGER_NO_CACHE", "1")
    assert open_cache(True) is None
