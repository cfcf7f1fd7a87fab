"""The sizes packager gives a model's open input dimensions when --shape does not: from what the exporter
recorded in the model, else from what the graph looks like, else a plain default.

Exporters name an open dimension as they like (optimum `batch_size`, paddle2onnx `p2o.DynamicDimension.0`,
tf2onnx `unk__12`, others `?` or a dim_value of -1); packager treats every dimension without a positive size
as open. What they record about the sizes the model wants differs too:

- Ultralytics writes `imgsz` ("[640, 640]"), `batch` and `stride` (and `task`) into the ONNX metadata_props;
  YOLOv5's own export writes `stride` alone. Those sizes are the ones the model was trained and exported at.
- paddle2onnx, tf2onnx, YOLOX's and most authors' scripts record nothing about sizes.

Without a record, an image input (4 dimensions, 3 channels first or last, [N,3,H,W] or [N,H,W,3]) gets a
side that every usual downsampling divides: 224 (7 x 32: ImageNet classifiers' size, and a multiple of the
stride 32 that detectors and OCR backbones need; a side of 16 leaves a stride-32 network a feature map
smaller than one pixel, whose upsampled branches no longer line up), or 640 when the metadata says the
model is a detector (Ultralytics' own default). Any other open dimension gets the old defaults: 1 for the
first (a batch of one, as a device runs), 16 for the others (a short sequence).
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import onnx

OPEN_DIM_BATCH = 1     # the first open dimension: a batch of one, as a device runs
OPEN_DIM_OTHER = 16    # other open dimensions: a short sequence
IMAGE_SIDE = 224       # an image input's open height and width, with no record of its own
DETECTOR_SIDE = 640    # ... of a detector's (metadata task or stride), as Ultralytics exports by default
IMAGE_CHANNELS = 3     # what makes a 4-dimensional input an image: RGB (or BGR) first or last


@dataclass(frozen=True)
class SizeRecord:
    """What the exporter recorded about the input sizes the model wants (metadata_props)."""

    image: tuple[int, int] | None = None   # height, width
    batch: int | None = None
    stride: int | None = None
    task: str = ""
    source: str = ""                       # who recorded it: "Ultralytics metadata (imgsz [320, 320], ...)"
    images: bool = True                    # False: image inputs get the plain defaults too (the last resort)

    @property
    def unit_pixels(self) -> bool:
        """Whether the exporter's models take pixels in [0, 1] (Ultralytics'), not ImageNet-normalized ones."""
        return self.source.startswith("Ultralytics")


@dataclass(frozen=True)
class PickedShape:
    """One input with open dimensions: the shape packager runs it at, and why."""

    name: str
    declared: list[Any]            # the model's dims: sizes, and names or None where open
    shape: tuple[int, ...]
    why: str                       # "Ultralytics metadata (imgsz [320, 320])", "an image input: 224 ...", ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "declared": self.declared, "shape": list(self.shape), "why": self.why}

    def option(self) -> str:
        """The --shape line that gives this input its shape."""
        return f"--shape {self.name}={','.join(str(d) for d in self.shape)}"


def is_open(dim: Any) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def size_record(model: onnx.ModelProto) -> SizeRecord:
    """The sizes the exporter wrote into the model's metadata_props (Ultralytics, YOLOv5), or an empty record."""
    props = {p.key: p.value for p in model.metadata_props}
    image, batch, stride = _side_pair(props.get("imgsz")), _positive(props.get("batch")), _stride(props.get("stride"))
    if image is None and batch is None and stride is None:
        return SizeRecord()
    who = "Ultralytics" if "ultralytics" in props.get("author", "").lower() or "imgsz" in props else "the exporter's"
    said = ", ".join(f"{k} {props[k]}" for k in ("imgsz", "batch", "stride") if k in props)
    return SizeRecord(image, batch, stride, props.get("task", ""), f"{who} metadata ({said})")


def _literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _positive(value: str | None) -> int | None:
    found = _literal(value)
    return found if isinstance(found, int) and not isinstance(found, bool) and 0 < found <= 2**16 else None


def _stride(value: str | None) -> int | None:
    """Ultralytics writes one stride ("32"); some exports write the list of a detector's strides."""
    found = _literal(value)
    if isinstance(found, (list, tuple)) and found:
        found = max(found) if all(isinstance(s, int) for s in found) else None
    return _positive(str(found)) if found is not None else None


def _side_pair(value: str | None) -> tuple[int, int] | None:
    """imgsz is one side (320) or [height, width]."""
    found = _literal(value)
    if isinstance(found, (list, tuple)) and len(found) == 1:
        found = found[0]
    if isinstance(found, int):
        found = [found, found]
    if isinstance(found, (list, tuple)) and len(found) == 2:
        sides = [_positive(str(s)) for s in found]
        if sides[0] is not None and sides[1] is not None:
            return sides[0], sides[1]
    return None


def image_axes(dims: list[Any]) -> tuple[int, int] | None:
    """The height and width axes of an image input ([N,3,H,W] or [N,H,W,3]), or None."""
    if len(dims) != 4:
        return None
    if dims[1] == IMAGE_CHANNELS and dims[3] != IMAGE_CHANNELS:
        return 2, 3
    if dims[3] == IMAGE_CHANNELS and dims[1] != IMAGE_CHANNELS:
        return 1, 2
    return None


def _open_image(dims: list[Any]) -> bool:
    """An image input whose height or width is open (packager guesses its side)."""
    axes = image_axes(dims)
    return axes is not None and any(is_open(dims[a]) for a in axes)


def pick(inputs: list[dict[str, Any]], record: SizeRecord, given: Collection[str] = ()) -> list[PickedShape]:
    """The shape of each input with an open dimension that --shape (`given`) does not set."""
    return [_pick_one(i, record) for i in inputs
            if i["name"] not in given and i["dtype"] != "unknown" and any(is_open(d) for d in i["shape"])]


def _pick_one(inp: dict[str, Any], record: SizeRecord) -> PickedShape:
    dims = list(inp["shape"])
    shape = [d if not is_open(d) else (OPEN_DIM_BATCH if axis == 0 else OPEN_DIM_OTHER) for axis, d in enumerate(dims)]
    reasons = []
    axes = image_axes(dims)
    if axes is not None and record.images and _open_image(dims):
        side, why = _image_side(record)
        for axis, value in zip(axes, side):
            if is_open(dims[axis]):
                shape[axis] = value
        reasons.append(why)
    if is_open(dims[0]) and record.batch is not None and len(dims) > 1:
        shape[0] = record.batch
        if not reasons:
            reasons.append(record.source)
    if not reasons:
        reasons.append(f"packager's defaults ({OPEN_DIM_BATCH} for a first open dimension, {OPEN_DIM_OTHER} for "
                       "the others)")
    return PickedShape(inp["name"], dims, tuple(shape), reasons[0])


def _image_side(record: SizeRecord) -> tuple[tuple[int, int], str]:
    if record.image is not None:
        return record.image, record.source
    detector = record.stride is not None or record.task in ("detect", "segment", "pose", "obb")
    side = DETECTOR_SIDE if detector else IMAGE_SIDE
    stride = record.stride or 1
    side = -(-side // stride) * stride   # the next multiple of the model's stride
    if record.source:
        return (side, side), f"an image input of a detector: {side}, a multiple of its stride ({record.source})"
    return (side, side), f"an image input: {side} on each side, which strides up to 32 divide"


def picked_shapes(model: onnx.ModelProto, inputs: list[dict[str, Any]]) -> list[PickedShape]:
    """What packager first tries for each open input of `model` (`packager inspect` shows it)."""
    return pick(inputs, size_record(model))


def candidates(record: SizeRecord, inputs: list[dict[str, Any]], given: Collection[str]) -> list[SizeRecord]:
    """The records to size the inputs by, in the order to try them: the model's own; where an image input's
    side was a guess (no imgsz), then a detector's 640, which strides up to 128 divide, and last the plain
    defaults, which some models take and no image size does (a text recognizer whose height pools to 1)."""
    if record.image is not None or not any(_open_image(p.declared) for p in pick(inputs, record, given)):
        return [record]
    larger = [] if _image_side(record)[0][0] == DETECTOR_SIDE else [
        replace(record, image=(DETECTOR_SIDE, DETECTOR_SIDE), source=f"a second guess: {DETECTOR_SIDE}")]
    return [record, *larger, replace(record, images=False)]
