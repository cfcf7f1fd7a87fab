"""A bundle given where a model is expected (`inspect`, `check`): its model file, what it was built
for, and the shapes of its own sample inputs. One reading of a bundle for every command that takes one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.archive import extract_bundle
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


@dataclass(frozen=True)
class BundleModel:
    model: Path                           # the bundle's model/model.onnx
    summary: dict[str, Any] | None        # name, target, recipe, runtime from its manifest; None without one
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)   # its first sample's input shapes
    values: dict[str, float] = field(default_factory=dict)             # its scalar inputs' values (sr=16000)


def is_bundle(path: Path) -> bool:
    """A bundle archive, or an unpacked bundle folder (model/model.onnx, or blobs/ for several models)."""
    if path.is_file():
        return path.name.endswith(ARCHIVE_SUFFIXES)
    return path.is_dir() and ((path / "model" / "model.onnx").is_file() or (path / "blobs").is_dir())


def open_bundle(path: Path, tmp: Path) -> BundleModel:
    """The model of the bundle at `path` (an archive is unpacked into `tmp`); refuses what has no
    single model.onnx to judge, with the fix."""
    folder = extract_bundle(path, tmp) if path.is_file() else path
    if (folder / "blobs").is_dir():
        raise PackagerError(f"{path}: a bundle of several models, whose files are in blobs/; unpack it and pass "
                            "one of them (models/<name>/manifest.json names each model's under runtime).",
                            ExitCode.BAD_INPUT)
    model = folder / "model" / "model.onnx"
    if not model.is_file() and list((folder / "model").glob("decoder_model*.onnx")):
        raise PackagerError(f"{path}: an encoder-decoder bundle, whose components are separate models; unpack it "
                            "and pass one of them: model/encoder_model.onnx or model/decoder_model_merged.onnx.",
                            ExitCode.BAD_INPUT)
    if not model.is_file():
        raise PackagerError(f"{path}: a bundle without model/model.onnx; rebuild it.", ExitCode.BAD_INPUT)
    shapes, values = _sample_inputs(folder / "samples" / "inputs.npz")
    return BundleModel(model, bundle_summary(folder / "manifest.json"), shapes, values)


def bundle_summary(manifest: Path) -> dict[str, Any] | None:
    """The bundle's name, target, recipe and runtime; None when it has no manifest. A manifest that is not
    JSON, or not of the shape packager writes, is a damaged bundle (exit 5), as everywhere else."""
    from packager.model_files import read_json

    if not manifest.is_file():
        return None
    rt = runner()
    try:
        m = rt.Manifest.from_dict(read_json(manifest, "the bundle is damaged: rebuild it"))
    except rt.ManifestError as e:
        raise PackagerError(f"{manifest.parent}: the bundle is damaged: {e}", ExitCode.BAD_INPUT) from None
    return {"name": m.name, "target": m.target, "recipe": m.recipe.name,
            "runtime": f"{m.runtime.package}=={m.runtime.version}"}


def _sample_inputs(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, float]]:
    """The shapes of the bundle's first sample (keys "0/<input>"), and the values of its scalar inputs:
    what its model was verified on, so that a check runs it on inputs it accepts."""
    import numpy as np

    if not path.is_file():
        return {}, {}
    try:
        with np.load(path, allow_pickle=False) as samples:
            first = {k.removeprefix("0/"): samples[k] for k in samples.files if k.startswith("0/")}
    except (OSError, ValueError):
        return {}, {}
    shapes = {name: tuple(int(d) for d in a.shape) for name, a in first.items() if a.ndim}
    values = {name: float(a) for name, a in first.items() if a.ndim == 0 and a.dtype.kind in "biuf"}
    return shapes, values
