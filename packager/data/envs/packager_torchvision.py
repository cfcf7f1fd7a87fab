"""Installed into an exporter environment's site-packages by packager (packager/exporter_envs.py), with a .pth line
that imports it at start-up: lets torchvision import where its compiled operators do not load.

PyPI's torchvision 0.28.0 is built for CUDA torch. Beside the CPU build of torch 2.13.0 its operators do not load,
and `import torchvision` then fails (`operator torchvision::nms does not exist`): its _meta_registrations.py
registers fakes for torchvision::nms and ::qnms without checking that the operators exist, as it checks for the
others. transformers imports torchvision wherever it is installed (every model's config), and timm needs it (Gemma
3n's vision encoder, timm's MobileNet-V5). Just before torchvision is first imported, this loads its operators as
torchvision does, and declares those two where they did not load; it imports torch only then, and nothing at all in
a process that never imports torchvision.
"""

import importlib.util
import sys
from typing import Any

LIBRARIES: list[Any] = []   # the declarations live as long as their Library objects


class _BeforeTorchvision:
    """A finder that finds nothing: on the first look for torchvision it makes its operators importable, once."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(cls)
            _declare()
        return None


def _declare() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        try:
            torch.ops.load_library(f"{folder}/_C.so")  # type: ignore[no-untyped-call]
            return   # its own operators load: nothing to declare
        except (OSError, RuntimeError):
            pass
    if hasattr(torch.ops.torchvision, "nms"):
        return   # declared already (by the process itself)
    library = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
    LIBRARIES.append(library)


sys.meta_path.insert(0, _BeforeTorchvision)
