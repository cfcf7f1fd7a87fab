"""A multimodal decoder's encoders as the quantize and fit stages handle them, on small stand-in graphs: an encoder
whose weights lie in an external data file (the exporter writes one past 2 GiB: Gemma 3n E2B's audio encoder is 2.6
GB in fp32) keeps it at fp32, the manifest's on-demand size counts it, and each mode's estimate is the decoder held
plus the encoder's own."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.device_code import runner
from packager.estimate import Estimate, estimate, with_modes
from packager.fit_memory import on_demand, shared_bytes
from packager.profiles import resolve_target
from packager.stages.quantize import quantize_encoders

SOFT = {"encoders": {"audio": {"file": "encoders/audio.onnx"}}}


def encoder(path: Path, rows: int = 256) -> Path:
    """x [1, 8] @ W [8, rows]: W in audio.onnx.data beside the graph."""
    weight = numpy_helper.from_array(np.arange(8 * rows, dtype=np.float32).reshape(8, rows), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["soft_tokens"])], "encoder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("soft_tokens", TensorProto.FLOAT, [1, rows])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return path


def test_an_fp32_encoder_keeps_its_external_data_and_its_size_counts_it(tmp_path: Path) -> None:
    reference = tmp_path / "reference" / "model.onnx"
    encoder(reference.parent / "encoders" / "audio.onnx")
    ctx = SimpleNamespace(reference_model=reference, io=SimpleNamespace(soft=SOFT), recipe_name="fp32",
                          recipe_explicit=True, profile=resolve_target("rpi5"), progress=lambda line: None)
    stage = tmp_path / "stage"
    done = quantize_encoders(ctx, stage / "model")   # type: ignore[arg-type]
    assert done["audio"]["recipe"] == "fp32"
    packaged = stage / "model" / "encoders" / "audio.onnx"
    data = packaged.parent / "audio.onnx.data"
    assert data.read_bytes() == (reference.parent / "encoders" / "audio.onnx.data").read_bytes()
    onnx.checker.check_model(str(packaged))   # loads with its weights
    assert on_demand(stage, SOFT) == {"audio": {"file": "model/encoders/audio.onnx",
                                                "size_bytes": packaged.stat().st_size + data.stat().st_size}}


def test_each_modes_estimate_is_the_decoder_held_plus_the_encoders_own(tmp_path: Path) -> None:
    profile = resolve_target("rpi5")
    path = encoder(tmp_path / "encoders" / "audio.onnx", rows=4096)
    decoder = Estimate(100 * 2**20, 150 * 2**20, {"activations": 20 * 2**20}, 120 * 2**20, 150 * 2**20, 4096,
                       run_low_bytes=100 * 2**20)
    modes = with_modes(decoder, {"audio": path}, profile).modes
    own = estimate(path, profile, "tensor", {"x": (1, 8)}, once=True)
    shared = shared_bytes(profile)
    audio = modes["audio"]
    assert audio["encoder_high_bytes"] == own.high_bytes - shared
    assert audio["high_bytes"] == 150 * 2**20 + own.high_bytes - shared    # the decoder's run, its arena kept
    assert audio["low_bytes"] == 100 * 2**20 - int(20 * 2**20 * 0.75) + own.low_bytes - shared
    assert with_modes(decoder, {"audio": path}, profile).worst_high_bytes() == max(150 * 2**20, audio["high_bytes"])



def test_an_encoder_whose_processor_this_run_py_lacks_is_one_sentence_naming_the_fix(tmp_path: Path) -> None:
    """A bundle from a newer packager may name a processor this run.py does not compute: one sentence, before the
    file is read, and no encoder inputs made up from another family's processor."""
    on_demand_code = sys.modules[runner().mode_peaks.__module__]
    session = SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name="pixel_values", shape=[1, 3, 8, 8])])
    for mode, name in (("image", "cat.png"), ("audio", "clip.wav")):
        with pytest.raises(ValueError) as e:
            on_demand_code.encoder_inputs(mode, tmp_path / name, {"processor": "qwen2_vl"}, session)
        assert str(e.value) == (f"this bundle's {mode} encoder takes qwen2_vl's inputs, which this run.py does not "
                                "compute: package the model again with this packager")
