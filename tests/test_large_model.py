"""A model over 2 GiB: protobuf cannot hold it, so its weights live in external data through
export, quantize, verify, the memory check and the bundle."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli

pytestmark = pytest.mark.integration

WIDTH, LAYERS = 8192, 9          # 9 x 8192 x 8192 fp32 = 2.25 GiB
# Measured: the run's disk use peaks 6.8 GiB above the start (the source, the export's reference copy, the
# packaged copy); the test needs that much free beside the suite's other folders.
DISK_NEEDED = 8 * 2**30


def _big_model(folder: Path) -> Path:
    """Zero weights: the test is about sizes and layout, and zeros compress in no time."""
    folder.mkdir()
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        inits.append(numpy_helper.from_array(np.zeros((WIDTH, WIDTH), np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, WIDTH])], inits)
    path = folder / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=True, location="big.onnx.data")
    return path


def test_model_over_2gb_keeps_external_data_end_to_end(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < DISK_NEEDED:   # a full disk tells nothing about external data; packager's own refusal is tested apart
        pytest.skip(f"{tmp_path.anchor}: {free / 2**30:.1f} GiB free, this test writes {DISK_NEEDED / 2**30:.0f} GiB")
    model = _big_model(tmp_path / "src")
    assert (tmp_path / "src" / "big.onnx.data").stat().st_size > 2**31
    out = tmp_path / "dist"
    proc = run_cli("package", str(model), "--target", "jetson-agx-orin", "--recipe", "fp32", "--out", str(out),
                   "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    with tarfile.open(summary["archive"]) as tar:
        sizes = {m.name.split("/", 1)[1]: m.size for m in tar.getmembers() if m.isfile()}
    assert sizes["model/model.onnx"] < 2**20 and sizes["model/big.onnx.data"] > 2**31
    est = summary["memory"]["estimate"]
    assert est["breakdown"]["weights_external"] > 2**31 and est["breakdown"]["weights_inline"] < 2**20
    assert 0 < summary["memory"]["measured_peak_bytes"] <= summary["memory"]["budget_bytes"]
