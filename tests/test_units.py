"""Fast unit tests: archives, comparison, sample inputs, source resolution."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.archive import extract_bundle, write_archive
from packager.context import InputSpec
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.open_shapes import IMAGE_SIDE, OPEN_DIM_OTHER, SizeRecord
from packager.sample_inputs import make_inputs
from packager.stages.source import resolve, task_for


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "b-rpi5"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "m.onnx").write_bytes(b"weights")
    (folder / "run.py").write_text("print('hi')\n")
    (folder / "run.py").chmod(0o755)
    return folder


def test_archive_is_byte_identical_across_runs(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_archive(folder, tmp_path / "a.tar.gz")
    (folder / "model" / "m.onnx").touch()  # a newer mtime must not matter
    write_archive(folder, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["b-rpi5/run.py"].mode == 0o755 and members["b-rpi5/model/m.onnx"].mode == 0o644
    assert {m.uid for m in members.values()} == {0} and {m.mtime for m in members.values()} == {0}


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("make", [
    lambda: tarfile.TarInfo("b/../../escape.txt"),
    lambda: tarfile.TarInfo("/etc/owned"),
])
def test_extract_refuses_paths_that_leave(tmp_path: Path, make) -> None:
    info = make()
    info.size = 1
    with pytest.raises(PackagerError) as e:
        extract_bundle(_tar_with(tmp_path, info, b"x"), tmp_path / "out")
    assert e.value.code == ExitCode.BAD_INPUT
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_links(tmp_path: Path) -> None:
    info = tarfile.TarInfo("b/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    with pytest.raises(PackagerError, match="link or device"):
        extract_bundle(_tar_with(tmp_path, info), tmp_path / "out")


def test_compare_flags_drift_and_handles_small_outputs() -> None:
    compare = runner().compare
    rng = np.random.default_rng(0)
    expected = [{"emb": rng.standard_normal(384).astype(np.float32),
                 "p": np.array([[0.9]], np.float32)} for _ in range(4)]
    same = compare(expected, expected, ["emb", "p"])
    assert same["min_cosine"] == pytest.approx(1.0) and same["max_abs_diff"] == 0.0
    noisy = [{"emb": e["emb"] + rng.standard_normal(384).astype(np.float32), "p": e["p"]} for e in expected]
    assert compare(expected, noisy, ["emb"])["min_cosine"] < 0.9
    # A one-value output is compared across samples, so a flipped probability shows.
    flipped = [{"emb": e["emb"], "p": np.array([[0.1 if i % 2 else 0.9]], np.float32)} for i, e in enumerate(expected)]
    assert compare(expected, flipped, ["p"])["min_cosine"] < 0.95
    nan = [{"emb": np.full(384, np.nan, np.float32), "p": e["p"]} for e in expected]
    assert compare(expected, nan, ["emb"])["min_cosine"] == 0.0


def test_sample_inputs_follow_signature_and_overrides() -> None:
    inputs = [{"name": "x", "dtype": "float32", "shape": [None, 3, "h", 8]},
              {"name": "sr", "dtype": "int64", "shape": []},
              {"name": "mask", "dtype": "bool", "shape": [1, 4]}]
    samples = make_inputs(inputs, InputSpec(shapes={"x": (2, 3, 5, 8)}, values={"sr": 8000}, count=3))
    assert len(samples) == 3
    assert samples[0]["x"].shape == (2, 3, 5, 8) and samples[0]["x"].dtype == np.float32
    assert samples[0]["sr"].shape == () and int(samples[0]["sr"]) == 8000
    assert samples[0]["mask"].dtype == np.bool_
    assert not np.array_equal(samples[0]["x"], samples[1]["x"])
    assert np.array_equal(make_inputs(inputs, InputSpec(count=1))[0]["x"],
                          make_inputs(inputs, InputSpec(count=1))[0]["x"])
    # x looks like an image ([N,3,H,W]): its open height gets an image side (packager/open_shapes.py)
    assert make_inputs(inputs, InputSpec(count=1))[0]["x"].shape == (1, 3, IMAGE_SIDE, 8)
    assert make_inputs([{"name": "t", "dtype": "float32", "shape": [None, 4, "n"]}],
                       InputSpec(count=1))[0]["t"].shape == (1, 4, OPEN_DIM_OTHER)
    with pytest.raises(PackagerError, match="not a model input"):
        make_inputs(inputs, InputSpec(values={"rate": 1}))
    with pytest.raises(PackagerError, match="3 dimensions"):
        make_inputs(inputs, InputSpec(shapes={"x": (1, 2, 3)}))


def test_image_inputs_get_pictures_not_noise() -> None:
    """A 3-channel image input gets pictures (packager/sample_images.py): a text detector answers ~0 everywhere
    on noise, so a recipe's cosine there says nothing (PP-OCRv4 det, int8-dynamic: 0.0138 on noise). Pictures
    are smooth between edges, deterministic per seed, ImageNet-normalized (Ultralytics: [0, 1]) and in either
    layout; what is no picture (a tiny map, a 3-vector, audio) stays noise."""
    nchw = [{"name": "x", "dtype": "float32", "shape": [1, 3, 64, 96]}]
    nhwc = [{"name": "x", "dtype": "float32", "shape": [1, 64, 96, 3]}]
    [first, second] = make_inputs(nchw, InputSpec(count=2))
    x = first["x"]
    assert x.shape == (1, 3, 64, 96) and x.dtype == np.float32
    assert np.array_equal(x, make_inputs(nchw, InputSpec(count=1))[0]["x"]) and not np.array_equal(x, second["x"])
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    pixels = x[0] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Neighbours agree (noise's differ by ~0.56 of its spread): most of a picture is flat or smooth.
    assert np.median(np.abs(np.diff(pixels, axis=2))) < 0.02
    assert pixels.min() < 0.3 and pixels.max() > 0.7   # dark strokes on light ground: edges to detect
    layout = make_inputs(nhwc, InputSpec(count=1))[0]["x"]
    assert layout.shape == (1, 64, 96, 3) and np.allclose(layout, x.transpose(0, 2, 3, 1))
    unit = make_inputs(nchw, InputSpec(count=1), record=SizeRecord(source="Ultralytics metadata (imgsz [64, 96])"))
    assert np.allclose(unit[0]["x"], pixels, atol=1e-5)
    for shape in ([1, 3, 4, 4], [1, 3], [1, 16000]):
        noise = make_inputs([{"name": "t", "dtype": "float32", "shape": shape}], InputSpec(count=1))[0]["t"]
        assert noise.min() < 0 < noise.max() and np.median(np.abs(np.diff(noise.reshape(-1)))) > 0.1


def test_task_from_architectures(tmp_path: Path) -> None:
    assert task_for(["BertModel"], tmp_path) == ("feature-extraction", "BertModel")
    assert task_for(["DistilBertForSequenceClassification"], tmp_path)[0] == "text-classification"
    assert task_for(["LlamaForCausalLM"], tmp_path)[0] == "text-generation-with-past"
    assert task_for(["GPT2LMHeadModel"], tmp_path)[0] == "text-generation-with-past"
    assert task_for(["WhisperForConditionalGeneration"], tmp_path, "whisper")[0] == \
        "automatic-speech-recognition-with-past"
    assert task_for(["VisionEncoderDecoderModel"], tmp_path, "vision-encoder-decoder")[0] == "image-to-text-with-past"
    assert task_for(["T5ForConditionalGeneration"], tmp_path, "t5")[0] == "text2text-generation-with-past"
    with pytest.raises(PackagerError, match="encoder-decoder model of a type"):
        task_for(["LlavaForConditionalGeneration"], tmp_path, "llava")
    with pytest.raises(PackagerError, match="no `architectures`"):
        task_for([], tmp_path)


def test_source_hash_covers_content(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    first = resolve(str(tiny_bert))
    assert first.kind == "huggingface" and first.task == "feature-extraction"
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    assert resolve(str(copy)).sha256 == first.sha256
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert resolve(str(copy)).sha256 != first.sha256


def test_a_model_given_by_a_relative_path_is_read_by_its_absolute_one(tiny_bert: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps that read the model run in other folders (the genai builder's child, the tokenizer loader): a relative
    path there names another file, or a hub id. Named and hashed as before."""
    monkeypatch.chdir(tiny_bert.parent)
    source = resolve(tiny_bert.name)
    assert source.path == tiny_bert.absolute() and source.name == resolve(str(tiny_bert)).name
    assert source.sha256 == resolve(str(tiny_bert)).sha256


def test_every_python_package_is_installed_by_the_wheel() -> None:
    """pyproject lists its packages by hand (profiles/ and targets/ install under other names): a new
    subpackage missing from the list imports in an editable install and not from a wheel."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "packager").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_kv_cache_counts_a_genai_graphs_symbolic_head_size_as_its_size_not_the_context() -> None:
    """onnxruntime-genai's builder writes past_key_values as [batch_size, heads, past_sequence_length,
    kv_cache_dim]: the head size is a symbol too. The estimate's KV cache takes the context on the sequence axis
    only (it took it on both: a 1B model's 256 MiB cache at 4K estimated at 16 GiB)."""
    import onnx
    from onnx import TensorProto, helper

    from packager.estimate_activations import kv_cache_bytes

    pasts = [helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT,
                                           ["batch_size", 2, "past_sequence_length", "kv_cache_dim"])
             for i in range(3) for kv in ("key", "value")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", [pasts[0].name], ["y"])], "g", pasts, [out])
    model = helper.make_model(graph)
    step = {p.name: (1, 2, 99, 16) for p in pasts}   # a decode step: 99 past tokens, heads of 16
    assert kv_cache_bytes(model, 100, step) == 6 * 2 * 100 * 16 * 4
    # an exported graph's fixed head size needs no step shapes
    fixed = onnx.helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["b", 2, "p", 16])
    model.graph.ClearField("input")
    model.graph.input.append(fixed)
    assert kv_cache_bytes(model, 100) == 2 * 100 * 16 * 4


def test_a_sliding_layers_cache_counts_its_window_not_the_context() -> None:
    """The E-class exporter's sliding layers keep window - 1 past positions (their length axis "window",
    io.kv.window): the estimate's step and KV cache take min(context, window) positions for them, as plan does,
    and the context for the full layers."""
    from onnx import TensorProto, helper

    from packager.decoder_config import WINDOW_AXIS
    from packager.estimate import step_shapes
    from packager.estimate_activations import kv_cache_bytes

    axes = {"past_key_values.0": WINDOW_AXIS, "past_key_values.1": "past"}
    names = [f"{layer}.{kv}" for layer in axes for kv in ("key", "value")]
    pasts = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2, axes[n.rsplit(".", 1)[0]], 16])
             for n in names]
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", [names[0]], ["y"])], "g", pasts,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))
    io = {"inputs": [{"name": "input_ids", "shape": ["batch", "sequence"]},
                     *({"name": p.name, "shape": ["batch", 2, axes[p.name.rsplit(".", 1)[0]], 16]} for p in pasts)],
          "kv": {"layers": 2, "heads": 2, "head_dim": 16, "window": 8}}
    step = step_shapes(io, 100)
    assert step["past_key_values.0.key"] == (1, 2, 7, 16) and step["past_key_values.1.value"] == (1, 2, 99, 16)
    assert kv_cache_bytes(model, 100, step) == 2 * 2 * 16 * 4 * (8 + 100)
    short = step_shapes(io, 5)   # a context within the window: both hold the context
    assert short["past_key_values.0.key"] == (1, 2, 4, 16)
    assert kv_cache_bytes(model, 5, short) == 2 * 2 * 16 * 4 * (5 + 5)
    # a past without the window axis (every other decoder's) takes the context, whatever the config's window
    io["inputs"][1]["shape"][2] = "past"
    assert step_shapes(io, 100)["past_key_values.0.key"][2] == 99
    # a prompt's chunk: its tokens new, the full layers' cache the context less them
    chunk = step_shapes(io, 100, 30)
    assert chunk["input_ids"] == (1, 30) and chunk["past_key_values.1.key"] == (1, 2, 70, 16)


def test_the_loop_feeds_each_tokens_row_read_from_the_tables_file(tmp_path: Path) -> None:
    """run.py's RowFeeds reads, for token t, row t of each table the model's metadata names (row 0 past the
    table's rows), at the table's offset in its file, shaped [batch, sequence, *row] in the table's dtype; a model
    without the record feeds nothing, and a file cut short is one sentence, not numpy's error."""
    import importlib

    session = importlib.import_module(runner()._package.__name__ + ".session")
    table = np.arange(10 * 6, dtype=np.float32).reshape(10, 3, 2)
    scales = np.arange(10, dtype=np.float16).reshape(10, 1)
    (tmp_path / "t.data").write_bytes(b"\0" * 4096 + table.tobytes() + scales.tobytes())

    class Meta:
        custom_metadata_map = {session.ROWS_KEY: json.dumps([
            {"input": "rows", "file": "t.data", "offset": 4096, "row_bytes": 24, "rows": 10, "dtype": "float32",
             "row": [3, 2]},
            {"input": "scales", "file": "t.data", "offset": 4096 + table.nbytes, "row_bytes": 2, "rows": 10,
             "dtype": "float16", "row": [1]}])}

    class Session:
        def get_modelmeta(self) -> Meta:
            return Meta()

    feeds = session.RowFeeds(Session(), tmp_path)
    ids = np.array([[3, 0, 9, 12]])
    got = feeds.feeds(ids)
    assert got["rows"].shape == (1, 4, 3, 2) and got["rows"].dtype == np.float32
    np.testing.assert_array_equal(got["rows"][0], table[[3, 0, 9, 0]])   # 12 is past the table: row 0
    np.testing.assert_array_equal(got["scales"][0], scales[[3, 0, 9, 0]])
    assert set(feeds.complete({"input_ids": ids, "rows": got["rows"]})) == {"input_ids", "rows", "scales"}

    class Plain:
        def get_modelmeta(self) -> Any:
            return type("M", (), {"custom_metadata_map": {}})()

    assert session.RowFeeds(Plain(), None).feeds(ids) == {}
    with pytest.raises(ValueError, match="folder"):
        session.RowFeeds(Session(), None)
    (tmp_path / "t.data").write_bytes(b"\0" * 4096 + table.tobytes()[:100])
    with pytest.raises(ValueError, match="ends before row 9 of rows"):
        session.RowFeeds(Session(), tmp_path).feeds(np.array([[9]]))


def test_a_sliding_layers_window_slides_along_its_buffer() -> None:
    """run.py's cache for a sliding layer: after each step its past is the last `window` positions of everything
    written, a view of one buffer (no array of its own a step), moved back to the buffer's front once in its spare
    positions, not at every step; a full layer's past grows into a larger buffer when its own is full."""
    import importlib

    session = importlib.import_module(runner()._package.__name__ + ".session")
    window, room = 5, 4
    past = session.cache_buffer((1, 0, 1, 2), np.dtype(np.float32), window + room)
    buffer, written, moves = past.base, np.zeros((1, 0, 1, 2), np.float32), 0
    for step in range(40):
        new = np.full((1, 3 if step < 2 else 1, 1, 2), step, np.float32)
        before = session.holder(past)[1]
        past = session.appended(past, new, window)
        written = np.concatenate([written, new], axis=1)
        np.testing.assert_array_equal(past, written[:, -window:])
        assert past.base is buffer   # the same buffer throughout: no copy of its own
        start = session.holder(past)[1]
        moves += start < before
    assert 3 <= moves <= 40 // room   # the window went back to the front once in `room` steps at most
    full = session.cache_buffer((1, 0, 1, 2), np.dtype(np.float32), 4)
    for step in range(6):
        full = session.appended(full, np.full((1, 1, 1, 2), step, np.float32))
    assert full.shape[1] == 6 and list(full[0, :, 0, 0]) == list(range(6))


def test_the_device_reads_the_record_the_packager_writes() -> None:
    """The metadata key is one fact in two places (the device code imports no packager)."""
    from packager.device_code import runner
    from packager.row_tables import ROWS_KEY

    assert runner().RowFeeds.feeds.__globals__["ROWS_KEY"] == ROWS_KEY


def test_the_device_prefills_in_the_chunks_the_estimate_counts() -> None:
    """run.py's chunk and the host's figure for it are one fact in two places (the device code imports no packager)."""
    from packager.decoder_config import LAST_ONLY_CHUNK
    from packager.device_code import runner

    assert runner().Decoder.prefill.__globals__["PREFILL_CHUNK"] == LAST_ONLY_CHUNK
    # and the same smaller chunks at a longer context (64 to 4,096 positions, 32 at 8K, 16 from 16K)
    from packager.decoder_config import prefill_chunk

    contexts = (1, 64, 4096, 4097, 8192, 8193, 16384, 131072)
    assert [runner().prefill_chunk(c) for c in contexts] == [prefill_chunk(c) for c in contexts] == \
        [64, 64, 64, 32, 32, 16, 16, 16]


def test_a_long_prompt_goes_in_smaller_passes_as_the_cache_grows() -> None:
    """run.py's prefill: 64 tokens a pass while a pass's scores (its tokens x the positions it attends to) stay
    within 64 x 4,096, then 32, then 16; no pass holds more scores than the last one, which fills the context with
    prefill_chunk(context) tokens (what the estimate and measure count), and every token goes in once, in order."""
    from packager.decoder_config import CHUNK_SCORES, prefill_chunk

    rt = runner()
    decoder = rt.Decoder(None, {"inputs": [], "kv": {"heads": 1, "head_dim": 1, "dtype": "float32"},
                                "logits": "last"})
    passes: list[tuple[int, int]] = []

    def step(ids: list[int], past: dict, start: int) -> tuple[np.ndarray, dict]:
        passes.append((start, len(ids)))
        return np.zeros((1, 1)), past

    decoder.step = step   # type: ignore[method-assign]
    decoder.prefill(list(range(8192)))
    assert [n for _, n in passes][:64] == [64] * 64 and passes[64] == (4096, 32)
    assert passes[-1] == (8160, 32) == (8192 - prefill_chunk(8192), decoder.chunk_at(8192))
    assert all(n * (start + n) <= CHUNK_SCORES for start, n in passes)
    assert [start for start, _ in passes] == [sum(n for _, n in passes[:i]) for i in range(len(passes))]
    assert sum(n for _, n in passes) == 8192
    passes.clear()
    decoder.prefill(list(range(100)))   # a short prompt: the full chunk, whatever the deployment's context
    assert passes == [(0, 64), (64, 36)]


# Run in a fresh process: glibc's threshold is process-wide. A mapped 16 MiB block freed raises glibc's mmap threshold
# to 16 MiB; 64 blocks of 1 MiB then come from the heap, and freeing all but the last leaves them there (the heap's
# top cannot shrink past the last), unless the threshold is held.
HEAP_PROBE = """
import ctypes, importlib.util, sys
from pathlib import Path
from typing import Any
spec = importlib.util.spec_from_file_location("peak", Path(sys.argv[1]) / "runtime" / "peak.py")
peak = importlib.util.module_from_spec(spec); spec.loader.exec_module(peak)
held = peak.fix_mmap_threshold() if sys.argv[2] == "held" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))
before = peak.rss_bytes()
blocks = [libc.malloc(1 << 20) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in blocks[:-1]:
    libc.free(b)
print(held, peak.rss_bytes() - before)
"""


def test_the_device_code_keeps_the_heap_from_holding_freed_blocks() -> None:
    """glibc raises its mmap threshold as mapped blocks are freed, and the heap then keeps what a model's load frees
    (20-140 MiB after loading E2B's-table bundle, a different amount each run); run.py's Runner holds the threshold
    (peak.fix_mmap_threshold) before it makes a session."""
    import os
    import subprocess
    import sys

    from packager.paths import targets_dir

    try:
        glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        glibc = False
    if not glibc:
        pytest.skip("the mmap threshold is glibc's")

    def kept(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, str(targets_dir()), mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], int(out[1])

    (held, held_bytes), (_, default_bytes) = kept("held"), kept("default")
    assert held == "True" and held_bytes < 8 << 20       # each block mapped, and handed back when freed
    assert default_bytes > 48 << 20                      # without it, the heap kept them


def test_the_int4_block_fits_the_shortest_quantized_axis(tmp_path: Path) -> None:
    """A block longer than a weight's quantized axis (rpi5's decoders' 128 on a tiny model's 64-wide layers) is
    shortened to the largest power of two that fits every weight, 16 at least; a model wide enough keeps the
    profile's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from packager.recipes.nbits import fitting_block

    def model(k: int, table_width: int) -> Path:
        inits = [numpy_helper.from_array(np.zeros((k, 32), np.float32), "w"),
                 numpy_helper.from_array(np.zeros((100, table_width), np.float32), "table")]
        nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k]),
                                               helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        path = tmp_path / f"m{k}-{table_width}.onnx"
        onnx.save(helper.make_model(graph), path)
        return path

    assert fitting_block(model(2048, 2048), 128) == 128
    assert fitting_block(model(64, 2048), 128) == 64
    assert fitting_block(model(2048, 48), 128) == 32      # the embedding table's width too
    assert fitting_block(model(8, 2048), 32) == 16        # MatMulNBits' smallest block


def test_a_drifting_recipe_is_told_the_more_precise_ones_only() -> None:
    """verify's remedy names the recipes more precise than the one that drifted, never that one."""
    from packager.recipes import remedy

    assert remedy("int4").endswith("a more precise recipe (int8-dynamic, fp16 or fp32)")
    assert remedy("int8-dynamic") == "a more precise recipe (fp16 or fp32)"
    assert remedy("fp16") == "a more precise recipe (fp32)"
    assert "most precise" in remedy("fp32")
    assert remedy("int8-dynamic", True).endswith("fp32, for the component that drifts: --recipe NAME=R)")
