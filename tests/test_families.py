"""The Family seam: one class per model family, registered by the io kind a manifest names it with
(packager/families/), and the device side's own table of the same families (targets/runtime/families.py);
no code outside those two tests a model kind's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from packager.errors import ExitCode, PackagerError
from packager.families import FAMILIES, Family, family_for
from packager.paths import targets_dir
from packager.profiles import Accuracy
from packager.runtime_files import runner

ROOT = Path(__file__).resolve().parent.parent
# The only places a model kind's name may be tested: the two registries.
ALLOWED = (ROOT / "packager" / "families", ROOT / "targets" / "runtime" / "families.py")
# The kinds of an eval file (packager/evaluation.py) name families' cases: testing them is a kind test too.
EVAL_KINDS = {"encoder", "decoder"}


def _exported_kinds() -> set[str]:
    """The io kinds the exporter writes: the string values of every `"kind": ...` entry of a dict literal in
    packager's export modules (a literal, or either branch of a conditional)."""
    kinds: set[str] = set()
    for path in (ROOT / "packager").rglob("*.py"):
        if "export" not in path.relative_to(ROOT).as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "kind":
                    kinds |= {c.value for c in ast.walk(value) if isinstance(c, ast.Constant)
                              and isinstance(c.value, str)}
    return kinds


def test_the_registries_cover_every_kind_the_exporter_writes() -> None:
    exported = _exported_kinds()
    assert {"text", "tensor", "decoder", "seq2seq"} <= exported   # the scan finds what it looks for
    assert exported <= set(FAMILIES), f"no family for {sorted(exported - set(FAMILIES))}"
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
    assert family.run_arguments({"kind": name, "modality": "audio"}, "samples").strip()
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
