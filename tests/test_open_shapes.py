"""Open input dimensions (issue 21): sized from what the exporter recorded, else from the graph, else the plain
defaults; a model that runs at none of them is a bad input (exit 5) naming --shape, never a tool failure."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from conftest import run_cli
from exporter_traits import STRIDE, fixed_height_model, stride_model
from packager.context import InputSpec
from packager.errors import ExitCode, PackagerError
from packager.model_files import signature
from packager.open_shapes import DETECTOR_SIDE, IMAGE_SIDE, OPEN_DIM_OTHER, candidates, pick, size_record
from packager.sample_inputs import model_inputs

ULTRALYTICS = {"author": "Ultralytics", "task": "detect", "imgsz": "[64, 96]", "batch": "1", "stride": "32"}


def _inputs(path: Path) -> list[dict]:
    return signature(path)[0]


def test_ultralytics_metadata_sizes_the_image(tmp_path: Path) -> None:
    path = stride_model(tmp_path / "yolo.onnx", ["batch", 3, "height", "width"], ULTRALYTICS)
    record = size_record(onnx.load(path))
    assert (record.image, record.batch, record.stride, record.task) == ((64, 96), 1, 32, "detect")
    [picked] = pick(_inputs(path), record)
    assert picked.shape == (1, 3, 64, 96)
    assert "Ultralytics metadata" in picked.why and "imgsz [64, 96]" in picked.why
    assert picked.option() == "--shape images=1,3,64,96"


def test_a_stride_alone_makes_a_detector_side_that_it_divides(tmp_path: Path) -> None:
    path = stride_model(tmp_path / "v5.onnx", ["batch", 3, "height", "width"], {"stride": "[8, 16, 64]"})
    [picked] = pick(_inputs(path), size_record(onnx.load(path)))
    assert picked.shape[2] == picked.shape[3] >= DETECTOR_SIDE and picked.shape[2] % 64 == 0


@pytest.mark.parametrize("dims", [
    ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"],   # paddle2onnx
    [-1, 3, "?", "?"],                                                                   # -1 and ?
    ["unk__12", "unk__13", "unk__14", 3],                                                # tf2onnx, channels last
])
def test_other_exporters_open_dims_make_an_image_side(tmp_path: Path, dims: list) -> None:
    path = stride_model(tmp_path / "m.onnx", dims) if dims[1] == 3 else None
    inputs = _inputs(path) if path else [{"name": "images", "dtype": "float32", "shape": dims}]
    [picked] = pick(inputs, size_record(onnx.load(path)) if path else size_record(onnx.ModelProto()))
    sides = picked.shape[1:3] if dims[3] == 3 else picked.shape[2:]
    assert picked.shape[0] == 1 and sides == (IMAGE_SIDE, IMAGE_SIDE) and IMAGE_SIDE % STRIDE == 0
    assert "image input" in picked.why


def test_inputs_that_are_no_image_keep_the_plain_defaults() -> None:
    inputs = [{"name": "audio", "dtype": "float32", "shape": ["batch", "samples"]},
              {"name": "fixed", "dtype": "float32", "shape": [1, 3, 8, 8]},
              {"name": "given", "dtype": "float32", "shape": ["n", 3, "h", "w"]}]
    picked = pick(inputs, size_record(onnx.ModelProto()), given={"given"})
    assert [(p.name, p.shape) for p in picked] == [("audio", (1, OPEN_DIM_OTHER))]
    assert "defaults" in picked[0].why


def test_unreadable_metadata_is_no_record(tmp_path: Path) -> None:
    path = stride_model(tmp_path / "m.onnx", ["b", 3, "h", "w"], {"imgsz": "__import__('os')", "batch": "-3",
                                                                  "stride": "lots"})
    assert size_record(onnx.load(path)).source == ""


def test_a_guessed_side_that_fails_makes_way_for_the_next(tmp_path: Path) -> None:
    path = stride_model(tmp_path / "m.onnx", ["b", 3, "h", "w"])
    tried = candidates(size_record(onnx.load(path)), _inputs(path), given=())
    assert [c.image for c in tried] == [None, (DETECTOR_SIDE, DETECTOR_SIDE), None] and not tried[-1].images
    # Only a guessed side has a next guess: a fixed image size, or one the metadata gives, is tried once.
    fixed = [{"name": "images", "dtype": "float32", "shape": ["batch", 3, 64, 64]}]
    assert len(candidates(size_record(onnx.load(path)), fixed, given=())) == 1
    ultralytics = stride_model(tmp_path / "yolo.onnx", ["b", 3, "h", "w"], ULTRALYTICS)
    assert len(candidates(size_record(onnx.load(ultralytics)), _inputs(ultralytics), given=())) == 1
    samples = model_inputs(path, _inputs(path), InputSpec())
    assert samples[0]["images"].shape == (1, 3, IMAGE_SIDE, IMAGE_SIDE)


def test_a_model_that_runs_at_no_size_tried_names_shape(tmp_path: Path) -> None:
    path = fixed_height_model(tmp_path / "rec.onnx", height=48)
    with pytest.raises(PackagerError) as caught:
        model_inputs(path, _inputs(path), InputSpec())
    message = caught.value.message
    assert caught.value.code == ExitCode.BAD_INPUT
    assert "x [p2o.DynamicDimension.0, 3, ?, p2o.DynamicDimension.1]" in message
    assert f"x 1,3,{IMAGE_SIDE},{IMAGE_SIDE}" in message and f"x 1,3,{DETECTOR_SIDE},{DETECTOR_SIDE}" in message
    assert "--shape x=1,3,D3,D4" in message
    # The size it takes, given, runs.
    assert model_inputs(path, _inputs(path), InputSpec({"x": (1, 3, 48, 200)}))[0]["x"].shape == (1, 3, 48, 200)


def test_the_trial_run_takes_the_profiles_session_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open sizes are tried in a session set up as the device's (run.py's session_options over the profile's
    [session]), not with onnxruntime's defaults."""
    import dataclasses

    import onnxruntime as ort

    from packager.profiles import resolve_target
    from packager.runtime_files import runner

    session = resolve_target("rpi5").session
    options = runner().session_options(dataclasses.asdict(session), log_level=4)
    seen: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def spy(path: str, so: ort.SessionOptions, **kwargs: object) -> ort.InferenceSession:
        seen.append(so)
        return real(path, so, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    path = stride_model(tmp_path / "m.onnx", ["b", 3, "h", "w"])
    model_inputs(path, _inputs(path), InputSpec(), session_options=options)
    assert seen and all(so is options for so in seen)
    assert options.intra_op_num_threads == session.intra_op_threads
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.integration
def test_check_of_an_ultralytics_style_model_needs_no_shape(tmp_path: Path) -> None:
    # At the old default of 16 the stride-32 model fails to run: exit 10 from the fit stage.
    path = stride_model(tmp_path / "yolo.onnx", ["batch", 3, "height", "width"], ULTRALYTICS)
    proc = run_cli("check", str(path), "--target", "rpi5", "--recipe", "fp32", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fits"] is True
    bad = run_cli("check", str(fixed_height_model(tmp_path / "rec.onnx")), "--target", "rpi5", "--no-measure")
    assert bad.returncode == ExitCode.BAD_INPUT and "--shape x=1,3,D3,D4" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_inspect_shows_the_open_inputs_and_the_pick(tmp_path: Path) -> None:
    path = stride_model(tmp_path / "yolo.onnx", ["batch", 3, "height", "width"], ULTRALYTICS)
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)["open_inputs"]
    assert entry["name"] == "images" and entry["shape"] == [1, 3, 64, 96]
    assert entry["declared"] == ["batch", 3, "height", "width"] and "Ultralytics" in entry["why"]
    text = run_cli("inspect", str(path))
    assert "open input images: packager runs it at 1,3,64,96" in text.stdout
