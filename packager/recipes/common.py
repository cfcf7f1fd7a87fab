"""What every recipe shares: its options and result (packager/recipes/records.py, re-exported here), saving a
model (external data past 2 GiB), counting quantized nodes, and reading tensors out of external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx.numpy_helper import to_array

from packager.estimate import mapped_tables
from packager.graphs import all_graphs
from packager.recipes.records import RecipeOptions as RecipeOptions
from packager.recipes.records import RecipeResult as RecipeResult

# Kernels that mean a node now computes in a quantized form.
_QUANTIZED_OPS = {
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM", "QAttention", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization",
}
# Protobuf cannot hold more than 2 GiB: bigger models keep their weights in external data.
PROTO_LIMIT = 2**31 - 1


def needs_external_data(src: Path) -> bool:
    total = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.stem}*data*"))
    return total > PROTO_LIMIT


def save(model: onnx.ModelProto, dst: Path, external: bool) -> None:
    """Save, with the weights in `<dst name>.data` beside it when external: a fixed name (onnx.save names
    the file after a fresh uuid without one, which would differ in every bundle), written afresh
    (onnx.save appends to a data file that exists)."""
    if external:
        (dst.parent / f"{dst.name}.data").unlink(missing_ok=True)
        onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data")
    else:
        onnx.save(model, dst)


# onnxruntime memory-maps an external tensor whose offset is a multiple of this (64 KiB: Windows' allocation
# granularity, a multiple of every page size)
MAP_ALIGN = 65536


def embedding_file(model: Path) -> str:
    """The file of a tied decoder's embedding table, mapped (recipes/nbits.untie_embedding), beside `model`."""
    return f"{model.stem}.embedding.data"


def table_locations(model: onnx.ModelProto) -> dict[str, str]:
    """`model`'s memory-mapped lookup tables (estimate.mapped_tables) and the file each is in."""
    mapped = mapped_tables(model)
    return {t.name: {e.key: e.value for e in t.external_data}["location"] for t in model.graph.initializer
            if t.name in mapped}


def place_tables(path: Path, tables: dict[str, str]) -> None:
    """The initializers `tables` names (name -> file) moved into those files beside `path`, each at a MAP_ALIGN
    offset, and the model saved again with its other weights as needs_external_data says: a recipe writes the
    model its own way (inline, or one data file), and a lookup table the runtime maps must keep a file of its own
    (the E-class exporter's per-layer embeddings, a tied decoder's embedding; estimate.mapped_tables). The tables
    mapped already stay in their files."""
    if not tables:
        return
    tables = table_locations(onnx.load(path, load_external_data=False)) | tables
    model = onnx.load(path)
    moved = [t for t in model.graph.initializer if t.name in tables]
    if not moved:
        return
    for name in sorted(set(tables.values())):
        (path.parent / name).unlink(missing_ok=True)
    data: list[tuple[onnx.TensorProto, bytes]] = []
    for t in moved:
        data.append((t, t.raw_data or to_array(t).tobytes()))
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(field)
    external = sum(t.ByteSize() for t in model.graph.initializer) > PROTO_LIMIT
    save(model, path, external)
    if not external:   # the recipe's own data file (it kept the source's external data) holds nothing read now
        (path.parent / f"{path.name}.data").unlink(missing_ok=True)
    model = onnx.load(path, load_external_data=False)
    by_name = {t.name: t for t in model.graph.initializer}
    for original, raw in data:
        t = by_name[original.name]
        with open(path.parent / tables[t.name], "ab") as f:
            offset = -(-f.tell() // MAP_ALIGN) * MAP_ALIGN
            f.write(b"\0" * (offset - f.tell()) + raw)
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", tables[t.name]), ("offset", str(offset)), ("length", str(len(raw)))):
            t.external_data.add(key=key, value=value)
    onnx.save(model, path)


def count_ops(model: onnx.ModelProto, ops: set[str]) -> int:
    """Nodes of the given types, subgraphs (If/Loop/Scan bodies) included."""
    return sum(node.op_type in ops for g in all_graphs(model.graph) for node in g.node)



def drop_unused_opsets(path: Path) -> list[str]:
    """Remove the opset imports of domains no node uses (the quantizer declares ai.onnx.ml and its training,
    aten and preview domains whatever the graph holds; a pinned older runtime refuses some of them). ai.onnx
    stays. Only the graph is rewritten: external data stays where it is. Returns the domains dropped."""
    model = onnx.load(path, load_external_data=False)
    used = {n.domain for g in all_graphs(model.graph) for n in g.node}
    used |= {n.domain for f in model.functions for n in f.node} | {f.domain for f in model.functions}
    unused = [i for i in model.opset_import if i.domain not in ("", "ai.onnx") and i.domain not in used]
    if not unused:
        return []
    kept = [i for i in model.opset_import if i not in unused]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, path)
    return sorted(i.domain for i in unused)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and Constant nodes' tensors kept in external data (the exporter moves large
    constants there too), subgraphs included."""
    found = []
    for g in all_graphs(model.graph):
        found += list(g.initializer)
        found += [a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


def _locate_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Point each external tensor at its file by absolute path: the quantizer resolves locations
    from the current directory (onnx_ir with no base folder), not from the model's."""
    for t in _external_tensors(model):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = str((folder / entry.value).resolve())


def tensor_array(t: onnx.TensorProto, folder: Path | None = None) -> np.ndarray:
    """A tensor's values; external data (relative to `folder`, or at an absolute location) memory-mapped,
    not read."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        from onnx_ir import serde

        return serde.deserialize_tensor(t, str(folder or "")).numpy()
    from onnx.numpy_helper import to_array

    return to_array(t)


def load_tensors(model: onnx.ModelProto, names: set[str] | None) -> None:
    """Read these external tensors (all of them with None) into the model, from their files."""
    for t in _external_tensors(model):
        if names is not None and t.name not in names:
            continue
        info = {e.key: e.value for e in t.external_data}
        with open(info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            t.raw_data = f.read(int(info["length"])) if "length" in info else f.read()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


