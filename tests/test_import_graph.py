"""The import graph has layers that show: no cycle among packager's modules (imports inside functions count: they
run too; and none either counting the imports under `if TYPE_CHECKING:`, which a type checker follows), no import
from a higher layer than the importer's (scripts/import_graph.py's LAYERS), the stages no library of the CLI or the
API, and no module over the size the project keeps to."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


graph = _graph()


def test_no_import_cycle() -> None:
    assert graph.cycles(graph.edges()) == []


def test_no_cycle_even_counting_type_only_imports() -> None:
    # A type checker follows the imports under `if TYPE_CHECKING:` too: they must not close a cycle or run back
    # up the layers either (the families and runtimes see the Context through packager/context_view.py).
    type_edges = graph.edges(type_only=True)
    assert graph.cycles(type_edges) == []
    assert [f"{e.importer} -> {e.imported} (line {e.line})" for e in graph.upward(type_edges)] == []


def test_the_graph_sees_cycles_and_function_level_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    edges = graph.edges(tmp_path, "pkg")
    assert {(e.importer, e.imported, e.in_function) for e in edges} == {("pkg.a", "pkg.sub.b", False),
                                                                         ("pkg.sub.b", "pkg.a", True)}
    assert graph.cycles(edges) == [["pkg.a", "pkg.sub.b"]]
    typed = graph.edges(tmp_path, "pkg", type_only=True)
    assert {(e.importer, e.imported) for e in typed} - {(e.importer, e.imported) for e in edges} == {("pkg.c", "pkg.a")}


def test_no_import_runs_back_up_the_layers() -> None:
    assert [f"{e.importer} -> {e.imported} (line {e.line})" for e in graph.upward(graph.edges())] == []


def test_stages_import_neither_the_cli_nor_the_api() -> None:
    above = ("packager.cli", "packager.api")
    wrong = [f"{e.importer} -> {e.imported}" for e in graph.edges()
             if e.importer.startswith("packager.stages") and e.imported.startswith(above)]
    assert wrong == []


def test_only_the_orchestrators_import_a_stage() -> None:
    assert [f"{e.importer} -> {e.imported}" for e in graph.stage_imports(graph.edges())] == []


def test_imports_inside_functions_are_lazy_on_purpose() -> None:
    # No cycle to dodge any more: an import inside a function keeps a heavy dependency off a light path, and
    # scripts/import_graph.py says which (LAZY_IMPORTERS, LAZY_EDGES).
    assert [f"{e.importer} -> {e.imported} (line {e.line})" for e in graph.unexplained_lazy(graph.edges())] == []


def test_every_module_is_in_a_layer() -> None:
    for module in graph.modules():
        graph.layer(module)   # raises for a module that LAYERS does not place


def test_no_module_is_over_the_size_limit() -> None:
    # scripts/import_graph.py's SIZE_LIMIT (500): the project's "under about 500 lines".
    assert graph.big_modules() == {}
