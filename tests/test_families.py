"""The Family seam: one class per model family, registered by the io kind a manifest names it with
(packager/families/), and the device side's own table of the same families (targets/runtime/families.py);
no code outside those two tests a model kind's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.families import FAMILIES, Family, family_for
from packager.paths import targets_dir
from packager.profiles import Accuracy
from packager.records import Io

ROOT = Path(__file__).resolve().parent.parent
# The only places a model kind's name may be tested: the two registries.
ALLOWED = (ROOT / "packager" / "families", ROOT / "targets" / "runtime" / "families.py")
# The kinds of an eval file (packager/evaluation.py) name families' cases: testing them is a kind test too.
EVAL_KINDS = {"encoder", "decoder"}


def _graph(folder: Path, inputs: dict[str, list[int | str]], outputs: list[str], tokenizer: bool) -> Path:
    """A one-node ONNX graph with these inputs (name -> shape) and outputs, in `folder`, with a tokenizer.json
    beside it when asked."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir()
    first = next(iter(inputs))
    graph = helper.make_graph([helper.make_node("Identity", [first], [o]) for o in outputs], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs])
    onnx.save(helper.make_model(graph), folder / "model.onnx")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_each_export_is_described_by_the_family_that_claims_it(tmp_path: Path) -> None:
    from packager.families import CLAIM_ORDER, Export, describe_io

    assert sorted(CLAIM_ORDER) == sorted(FAMILIES)   # every family is asked, in a fixed order
    past = {"past_key_values.0.key": [1, 2, "past", 4], "past_key_values.0.value": [1, 2, "past", 4]}
    cases = {
        "tensor": _graph(tmp_path / "tensor", {"x": [1, 3]}, ["y"], tokenizer=False),
        # token inputs without a tokenizer to make them: a tensor model
        "tensor ids": _graph(tmp_path / "ids", {"input_ids": [1, "n"]}, ["y"], tokenizer=False),
        "text": _graph(tmp_path / "text", {"input_ids": [1, "n"], "attention_mask": [1, "n"]},
                       ["last_hidden_state", "sentence_embedding"], tokenizer=True),
        "decoder": _graph(tmp_path / "decoder", {"input_ids": [1, "n"], **past}, ["logits"], tokenizer=True),
    }
    described = {name: describe_io(Export(folder, "", folder)) for name, folder in cases.items()}
    assert {name: io["kind"] for name, io in described.items()} == {
        "tensor": "tensor", "tensor ids": "tensor", "text": "text", "decoder": "decoder"}
    assert described["text"]["primary_outputs"] == ["sentence_embedding"]
    assert described["text"]["max_length"] == 512      # no configuration file says otherwise
    assert described["decoder"]["kv"] == {"layers": 1, "heads": 2, "head_dim": 4, "dtype": "float32"}
    assert [i["name"] for i in described["tensor"]["inputs"]] == ["x"]
    # An encoder-decoder is claimed by its task, before its graphs are read.
    assert FAMILIES["seq2seq"].claims(Export(tmp_path, "text2text-generation-with-past", tmp_path))
    assert not FAMILIES["seq2seq"].claims(Export(tmp_path, "text-generation-with-past", tmp_path))


def test_the_device_side_knows_every_family() -> None:
    assert set(runner().FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_answers_the_protocol(name: str) -> None:
    family = FAMILIES[name]
    assert isinstance(family, Family) and family.name == name and family_for(name) is family
    assert family.title.startswith(("a ", "an ")) and family.eval_fix
    assert family.metric in ("cosine", "token agreement")
    assert family.eval_cases in (None, *EVAL_KINDS)
    assert (targets_dir() / "families" / family.files).is_dir()
    assert bool(family.texts()) == (family.texts_file is not None)
    limits = family.smoke_limits(Accuracy(min_cosine=0.99))
    assert limits["expected"] and ("min_token_agreement" in limits) == family.generates
    io = Io(kind=name, inputs=[], outputs=[], checked_outputs=[], primary_outputs=[], modality="audio")
    assert family.run_arguments(io, "samples").strip()
    assert family.sample_note(["a sentence"]).strip()
    for method in ("make_samples", "verify"):
        assert callable(getattr(family, method))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_device_side_agrees_with_the_host_on_each_family(name: str) -> None:
    host, device = FAMILIES[name], runner().family({"kind": name})
    assert device.name == name
    assert device.tokenizer == host.needs_tokenizer
    assert device.decodes == host.generates
    assert device.media == host.has_components
    assert device.prompted == (host.eval_cases == "decoder")
    assert device.sentences == (host.texts_file is not None and not host.generates)


def test_an_unknown_kind_is_a_clean_error() -> None:
    with pytest.raises(PackagerError) as e:
        family_for("seq2sq")
    assert e.value.code == ExitCode.BAD_INPUT
    assert "'seq2sq'" in e.value.message and "seq2seq" in e.value.message
    with pytest.raises(ValueError, match="'vision'"):
        runner().family({"kind": "vision"})


def test_the_registry_loads_no_numpy() -> None:
    """The CLI's help and the profiles read the registry: the heavy steps import their modules when they run."""
    code = "import sys, packager.families; print('numpy' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def _kindish(node: ast.AST) -> bool:
    """`kind`, `x.kind`, `x["kind"]`, `x.get("kind")`."""
    if isinstance(node, ast.Name):
        return node.id == "kind"
    if isinstance(node, ast.Attribute):
        return node.attr == "kind"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "kind"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "kind"
    return False


def _names(node: ast.AST) -> set[str]:
    """The family (or eval kind) names a literal holds: a string, or the strings of a tuple, list or set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)} \
        & (set(FAMILIES) | EVAL_KINDS)


def kind_tests(source: str) -> list[int]:
    """The lines of `source` that test a kind against a family's name: a comparison, or a lookup in a dict
    literal keyed by family names."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_kindish(s) for s in sides) and any(_names(s) for s in sides):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Dict) and node.args and _kindish(node.args[0]):
            if any(k is not None and _names(k) for k in node.func.value.keys):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict) and _kindish(node.slice):
            if any(k is not None and _names(k) for k in node.value.keys):
                lines.append(node.lineno)
    return lines


def test_the_kind_test_finder_finds_kind_tests() -> None:
    planted = '''
if io["kind"] == "decoder": pass
if ctx.io.get("kind") in ("text", "seq2seq"): pass
if kind != "tensor": pass
what = {"decoder": "an LLM"}.get(io["kind"], "")
if source.kind == "huggingface": pass
'''
    assert sorted(kind_tests(planted)) == [2, 3, 4, 5]


def test_no_kind_string_tests_outside_the_families() -> None:
    """The Done-when of issue 18: a family's facts are asked of its class, never found by testing its name."""
    found = []
    for top in ("packager", "targets"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if any(path == a or a in path.parents for a in ALLOWED):
                continue
            found += [f"{path.relative_to(ROOT)}:{line}" for line in kind_tests(path.read_text(encoding="utf-8"))]
    assert not found, "ask the model's family (packager/families/, targets/runtime/families.py) instead: " \
        + ", ".join(found)
