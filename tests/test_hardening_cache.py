"""Issue 17: a killed run's leftovers (a half-written bundle in --out, a work folder in TMPDIR) are
swept by the next run, a live run's never."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from packager.leftovers import (BUNDLE_PARTIAL, CACHE_PARTIAL, WORK_FOLDER, bundle_partial, cache_partial, temp_folder,
                                work_folder)

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
    stale = [_leftover(out / f".mm-rpi5.tar.gz.partial-{dead}"), _leftover(out / f".other-jetson.tar.gz.partial-{dead}"),
             _leftover(tmpdir / f"packager-{dead}-work-abc_1234"), _leftover(tmpdir / f"packager-{dead}-int8-merged-zzzzzzzz")]
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
