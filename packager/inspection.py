"""`packager inspect`: what one ONNX model is (signature, size, parameters, opsets, operators) and whether the
runtime of each target runs it (through the target's runtime: packager/runtimes/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.compat import Compatibility, ModelFacts, facts_of, parameters
from packager.model_files import read_onnx, signature
from packager.open_shapes import PickedShape, picked_shapes
from packager.profiles import Profile
from packager.runtimes import runtime_for


@dataclass(frozen=True)
class Inspection:
    """What `packager inspect` reports about one ONNX model."""

    model: str
    path: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parameters: int
    size_bytes: int
    facts: ModelFacts
    compatibility: list[Compatibility] = field(default_factory=list)
    # Inputs with open dimensions: the shape packager would first try for each, and why (packager/open_shapes.py)
    open_inputs: list[PickedShape] = field(default_factory=list)
    bundle: dict[str, Any] | None = None       # the bundle's manifest summary, when MODEL is a bundle

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": str(self.path),
            **({"bundle": self.bundle} if self.bundle else {}),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "open_inputs": [p.to_dict() for p in self.open_inputs],
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "ir_version": self.facts.ir_version,
            "opsets": self.facts.opsets,
            "operators": self.facts.histogram(),
            "contrib_ops": self.facts.contrib_ops(),
            "compatibility": [c.to_dict() for c in self.compatibility],
        }


def inspect(path: Path, profiles: list[Profile], model: str | None = None) -> Inspection:
    """Signature, size, parameters, opsets, operators, and compatibility with each profile's runtime."""
    # The refusals `packager package` gives (an empty graph, data outside the model's folder) come first.
    proto, files = read_onnx(path)
    facts = facts_of(proto, path.name)
    inputs, outputs = signature(path)
    size = sum(f.stat().st_size for f in files)   # the model file and the external data it reads
    return Inspection(model or str(path), path, inputs, outputs, parameters(proto), size, facts,
                      [runtime_for(p).check_facts(facts, p) for p in profiles], picked_shapes(proto, inputs))
