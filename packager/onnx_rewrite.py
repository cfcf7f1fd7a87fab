"""Rewrites of an exported ONNX file that keep its meaning and change its layout, done from the files, a slice at
a time, so a model larger than memory can take them: the per-tensor files of torch.onnx merged into one data file,
transposed weights folded into tables of their own, a tied lm_head named as the one the recipes look for, and a
shared weight's Identity read as the weight itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from packager.decoder_config import LAST_POSITION
from packager.graphs import all_graphs
from packager.recipes.nbits import find_tied_embedding


def _tensors_with_data(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and Constant nodes' tensors, of the graph and its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found.append(attr.t)
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += _tensors_with_data(g)
    return found


def merge_external_data(model: onnx.ModelProto, path: Path, location: str, size_threshold: int = 1024) -> None:
    """Save `model` (loaded without its external data) as `path` with every tensor's bytes in one file,
    `location`, beside it: each external tensor copied from its own file, and inline tensors over
    `size_threshold` bytes moved there, one at a time (tensors of 1 MiB and more page-aligned, as onnx
    aligns them). The files the tensors came from are left for the caller to remove."""
    folder = path.parent
    with open(folder / location, "wb") as data:
        for t in _tensors_with_data(model.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                source = folder / info["location"]
                start = int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else source.stat().st_size - start
                if length >= 2**20:
                    data.write(b"\0" * (-data.tell() % 4096))
                offset = data.tell()
                with open(source, "rb") as src:
                    src.seek(start)
                    left = length
                    while left:   # 64 MiB at a time: a 1 GB embedding table is never read whole
                        chunk = src.read(min(left, 64 * 2**20))
                        if not chunk:
                            raise OSError(f"{source} ends before its tensor {t.name} does")
                        data.write(chunk)
                        left -= len(chunk)
            elif t.HasField("raw_data") and len(t.raw_data) > size_threshold:
                if len(t.raw_data) >= 2**20:
                    data.write(b"\0" * (-data.tell() % 4096))
                offset = data.tell()
                data.write(t.raw_data)
            else:
                continue
            t.ClearField("raw_data")
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(data.tell() - offset))):
                t.external_data.add(key=key, value=value)
    onnx.save(model, path)


def name_tied_lm_head(path: Path) -> None:
    """Name a tied lm_head's weight as optimum's deduplication (skipped: no_post_process) and then
    fold_transposed_weights named it: `<embedding table>_transposed`, last among the initializers.
    The exporter writes a tied lm_head as its own initializer, the embedding table transposed;
    optimum replaced it with Transpose(table), which the fold made a table again under that name.
    Only the name and the order change (the graph file; the weights stay where they are), so the
    reference, and every recipe's output, is what it was with the deduplication."""
    model = onnx.load(path, load_external_data=False)
    tied = find_tied_embedding(model, path.parent)
    if tied is None:
        return
    gather = next(n for n in model.graph.node if n.name == tied[0])
    head, name = tied[1], f"{gather.input[0]}_transposed"
    if head == name or any(i.name == name for i in model.graph.initializer):
        return
    index = next(i for i, t in enumerate(model.graph.initializer) if t.name == head)
    tensor = model.graph.initializer[index]
    moved = onnx.TensorProto()
    moved.CopyFrom(tensor)
    moved.name = name
    del model.graph.initializer[index]
    model.graph.initializer.append(moved)
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            if value == head:
                node.input[i] = name
    onnx.save(model, path)


def bypass_identities(path: Path) -> int:
    """Each Identity of an initializer read as the initializer itself, the Identity gone: torch's exporter writes
    one for a weight that two calls share (Gemma 3n's AltUp router, in predict and in correct), and the quantizers
    take only an initializer as a weight (recipes/prepare.py's hidden_weights). Only the graph file changes; the
    weights stay where they are. Returns how many."""
    model = onnx.load(path, load_external_data=False)
    stored = {i.name for i in model.graph.initializer}
    outputs = {o.name for g in all_graphs(model.graph) for o in g.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in stored and n.output[0] not in outputs}
    if not alias:
        return 0
    for g in all_graphs(model.graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                node.input[i] = alias.get(name, name)
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, path)
    return len(alias)


def fold_transposed_weights(path: Path, progress: Callable[[str], None] | None = None) -> None:
    """Give a MatMul fed by Transpose(weight) the transposed weight itself, as a constant.

    Applied to every reference model (exported, or an .onnx given). optimum writes a tied embedding /
    lm_head once when the two copies it exported are equal (with `accelerate` installed), and feeds
    the lm_head's MatMul a Transpose of the embedding table: it does so for checkpoints stored in fp32
    (a merged LoRA adapter's, a tiny test model's), not for the fp16-stored sample:tiny-llama. The
    quantizers only quantize a MatMul whose weight is a constant, and the int4 recipe keeps a tied pair
    as one 4-bit weight only when it sees both copies: folded, the graph is the one every recipe
    expects. The runtime folds that Transpose at load anyway (constant folding), so the memory at run
    time is the same; the fp32 file holds the copy it would have held without the deduplication."""
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folds = [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers
             and len(initializers[n.input[0]].dims) == 2 and n.output[0] not in {o.name for o in graph.output}
             and all(c.op_type == "MatMul" for c in consumers.get(n.output[0], []))
             and all(list(a.ints) in ([], [1, 0]) for a in n.attribute if a.name == "perm")]
    if not folds:
        return
    locations = sorted({e.value for i in graph.initializer for e in i.external_data if e.key == "location"})
    folded = {n.output[0]: n.input[0] for n in folds}   # output names are unique (SSA); node names need not be
    if locations:
        _fold_external(model, path, folded, progress)
        return
    model = onnx.load(path)   # small: everything in memory, rewritten below
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for output, weight in folded.items():
        table = onnx.numpy_helper.to_array(initializers[weight])
        graph.initializer.append(onnx.numpy_helper.from_array(table.T.copy(), output))
    _drop_transposes(graph, folded)
    onnx.save(model, path)


def _drop_transposes(graph: onnx.GraphProto, folded: dict[str, str]) -> None:
    """Remove the folded Transposes, and the weights that only they read (an external weight's bytes
    stay in its data file, unread)."""
    kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for g in all_graphs(graph) for n in g.node for i in n.input} | {o.name for o in graph.output}
    weights = set(folded.values())
    initializers = [t for t in graph.initializer if t.name in used or t.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


# Bytes of a transposed table written at a time: bounded memory whatever the table's size.
FOLD_CHUNK_BYTES = 64 * 2**20


def _fold_external(model: onnx.ModelProto, path: Path, folded: dict[str, str],
                   progress: Callable[[str], None] | None = None) -> None:
    """fold_transposed_weights for a model with external data (a 1B model's is 5 GB): each transposed
    table is appended to the weight's own data file, a slice at a time, read memory-mapped; nothing
    else is read or rewritten, and the graph is saved without its weights."""
    initializers = {i.name: i for i in model.graph.initializer}
    first = len(model.graph.initializer)
    for output, weight in folded.items():
        tensor = initializers[weight]
        info = {e.key: e.value for e in tensor.external_data}
        data_file = path.parent / info["location"]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        rows, cols = (int(d) for d in tensor.dims)
        table = np.memmap(data_file, dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=(rows, cols))
        with open(data_file, "ab") as f:
            f.seek(0, 2)
            offset = -(-f.tell() // 4096) * 4096   # page-aligned, as onnx writes external data
            f.write(b"\0" * (offset - f.tell()))
            # rows of the transposed table at a time: 512 at most, which transposes fastest (cache-sized tiles)
            step = max(1, min(512, FOLD_CHUNK_BYTES // (rows * table.itemsize)))
            for c in range(0, cols, step):
                f.write(np.ascontiguousarray(table[:, c:c + step].T).data)
            length = f.tell() - offset
        del table
        t = onnx.TensorProto(name=output, data_type=tensor.data_type, dims=[cols, rows],
                             data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", info["location"]), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=key, value=value)
        model.graph.initializer.append(t)
        if progress is not None:
            progress(f"folded {len(model.graph.initializer) - first}/{len(folded)} transposed weights")
    _drop_transposes(model.graph, folded)
    onnx.save(model, path)


# Ops between the lm_head's MatMul and the logits output that act on each position alone (Gemma 2's softcap: Div,
# Tanh, Mul; a Cast): slicing the MatMul's input to the last position leaves them as they are.
_PER_POSITION = {"Div", "Tanh", "Mul", "Add", "Cast", "Identity", "Softcap"}


def last_position_logits(path: Path) -> bool:
    """A decoder's logits for the last position of a pass only: its lm_head MatMul reads the last position's
    hidden state (a Slice on the sequence axis), so a pass over a prompt allocates [1, 1, vocab] of logits, not
    [1, tokens, vocab] (a 128K vocabulary at a 4K prompt: 2 GB), and the device prefills the prompt in chunks
    (run.py's Decoder, io.logits = "last"), as the E-class exporter's graphs do. False where the graph's logits do
    not come from a MatMul of a constant weight through per-position ops (left as exported)."""
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if "logits" not in outputs:
        return False
    producers = {out: n for n in graph.node for out in n.output}
    # Constant nodes' outputs are constants too (the exporter writes a softcap's or a scale's scalar as one)
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                        for o in n.output}
    node, between = producers.get("logits"), []
    while node is not None and not (node.op_type == "MatMul" and node.input[1] in constants):
        if node.op_type not in _PER_POSITION:
            return False
        between.append(node)
        varying = [i for i in node.input if i and i not in constants and i in producers]
        node = producers.get(varying[0]) if len(varying) == 1 else None
    if node is None:
        return False
    hidden = node.input[0]
    last = f"{hidden}{LAST_POSITION}"
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array([-1], np.int64), f"{last}/starts"),
                              onnx.numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64),
                                                           f"{last}/ends"),
                              onnx.numpy_helper.from_array(np.array([1], np.int64), f"{last}/axes")])
    index = list(graph.node).index(node)
    graph.node.insert(index, onnx.helper.make_node("Slice", [hidden, f"{last}/starts", f"{last}/ends", f"{last}/axes"],
                                                   [last], name=f"{node.name or 'lm_head'}{LAST_POSITION}"))
    node.input[0] = last
    # The shapes recorded between the MatMul and the output had the sequence axis: dropped, inferred again at load
    stale = {o for n in [node, *between] for o in n.output}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    dims = outputs["logits"].type.tensor_type.shape.dim
    if len(dims) >= 2:
        dims[1].Clear()
        dims[1].dim_value = 1
    onnx.save(model, path)
    return True
