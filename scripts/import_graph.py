"""packager's import graph: cycles, imports that run back up the layers, imports inside functions, big modules.

    python scripts/import_graph.py            # the numbers, and each finding
    python scripts/import_graph.py --edges    # every edge, for a look by hand
    python scripts/import_graph.py --type-only   # the same with the imports under `if TYPE_CHECKING:`

Stdlib only (ast), so it runs without the project's dependencies; tests/test_import_graph.py loads this file and
asserts on the same functions. An edge is one `import packager.x` / `from packager.x import y` (y counts as the
module packager.x.y when that file exists), module-level or inside a function: both run, so both close a cycle.
Imports under `if TYPE_CHECKING:` never run and are left out, unless --type-only asks for the graph a type
checker walks (which must have no cycle either: tests/test_import_graph.py). Importing packager.x.y also runs
packager/x/__init__.py, but the edge goes to packager.x.y alone (as grimp and import-linter count it): a package's
__init__ that re-exports its own modules is not a cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE_LIMIT = 500  # lines: the project's rule, "under about 500"

# The layers, lowest first: a module may import from its own layer and those below it. The longest prefix that
# matches a module names its layer ("packager.stages" matches packager.stages and packager.stages.export).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # facts with no project dependency: errors, paths, names, progress lines, archives, the stage cache, ONNX
    # graph walking, the version
    ("core", ("packager.version", "packager.errors", "packager.paths", "packager.names", "packager.labels",
              "packager.progress", "packager.archive", "packager.graphs", "packager.leftovers", "packager.cache",
              "packager.interrupts",
              # the device-side code as the host imports it (targets/run.py, loaded on first use)
              "packager.device_code",
              # modules an exporter environment imports at start-up, copied there (packager/exporter_envs.py)
              "packager.data")),
    # what the target is and what runs on it: profiles and settings, the recipes' registry, the runtimes and the
    # checks they answer with (compatibility, memory estimate, phones, GPUs), the device files and their signing
    ("target", ("packager.profile_types", "packager.context_view", "packager.profiles", "packager.config",
                "packager.options",
                "packager.recipes", "packager.runtimes", "packager.compat", "packager.estimate",
                "packager.estimate_activations", "packager.estimate_prepack", "packager.bandwidth", "packager.mobile",
                # the record of the lookup tables a model takes as inputs (the estimate reads it)
                "packager.row_tables",
                "packager.mobile_examples",
                "packager.mobile_genai",
                "packager.gpu",
                "packager.runtime_files", "packager.signing", "packager.records",
                # a decoder's shape from its config and the peak rule that plan and the estimate share
                "packager.decoder_config", "packager.decoder_peak",
                # the model families' facts (the profiles ask them); their steps sit in the model layer below
                "packager.families")),
    # the model at hand: its files, its export and rewrites, the recipes' code, samples, calibration and
    # measurements, the run's Context and the manifest made from it
    ("model", ("packager.context", "packager.model_files", "packager.adapter", "packager.export_process",
               "packager.onnx_rewrite", "packager.row_feed", "packager.recipes.common", "packager.recipes.dense",
               "packager.recipes.nbits",
               "packager.recipes.layers", "packager.recipes.prepare", "packager.coverage", "packager.samples",
               "packager.sample_models",
               "packager.sample_inputs", "packager.sample_images", "packager.open_shapes",
               "packager.calibration", "packager.evaluation", "packager.smoothing", "packager.fusion",
               "packager.mixed", "packager.manifest", "packager.inspection", "packager.families.verification",
               "packager.families.media", "packager.families.soft_verification",
               # what one model's bundle and a bundle of several both write and measure
               "packager.bundle_files", "packager.fit_memory")),
    # the pipeline's steps, one module each with its `run(ctx)`: what they share lives below them
    ("stages", ("packager.stages",)),
    # what runs the steps (the orchestrator, the searches, several models), and what reads, plans, runs or
    # reports on a bundle
    ("pipeline", ("packager.stage_runner", "packager.mixed_search", "packager.fit_auto", "packager.pipeline",
                  "packager.suite", "packager.plan", "packager.plan_notes", "packager.plan_types", "packager.bundles",
                  # a multimodal config's encoders as plan counts them
                  "packager.plan_encoders",
                  "packager.bundle_check", "packager.emulate",
                  "packager.emulate_qemu",
                  "packager.emulate_userland", "packager.smoke", "packager.report", "packager.report_view",
                  "packager.report_markdown", "packager.report_html", "packager.exporter_envs",
                  # the E-class exporter: runs in the genai environment (the stages name its steps)
                  "packager.eclass",
                  # the runtimes' steps (named "module:function" by packager/runtimes/, as the families' are)
                  "packager.runtime_steps",
                  # `packager bench`: a bundle's device code timed in a child (the child's code is a string)
                  "packager.bench", "packager.bench_child")),
    # packager/__init__.py: the front door, which names the API (loaded on first use) and nothing imports
    ("api", ("packager", "packager.api", "packager.results")),
    ("cli", ("packager.cli", "packager.cli_common", "packager.cli_print", "packager.cli_targets", "packager.cli_env",
             "packager.cli_bundle", "packager.cli_bench",
             "packager.__main__")),
]

# The modules that may import a stage (packager.stages.*): the stages are the pipeline's steps, not a library. The
# orchestrators run them; suite.py (several models) and the CLI (check_output_dir, before any work) still take a
# few helpers of stages/bundle.py and stages/fit.py, which a later step moves below the stages.
STAGE_USERS = ("packager.stage_runner", "packager.pipeline", "packager.fit_auto")

# Imports of packager modules that stay inside functions on purpose, with why. The CLI and the API import what a
# command needs when it runs (`packager --help` and `import packager` stay fast: `python -X importtime -c "import
# packager.cli"`); the others would pull a heavy dependency into a module that is light without it.
LAZY_IMPORTERS = ("packager.cli", "packager.cli_common", "packager.cli_print", "packager.cli_targets",
                  "packager.cli_env", "packager.cli_bundle", "packager.cli_bench", "packager.api")
LAZY_EDGES = {
    ("packager.adapter", "packager.model_files"): "onnx and numpy, which adapter.py loads for nothing else",
    ("packager.bundles", "packager.model_files"): "onnx and numpy, for a bundle's manifest (smoke, inspect, plan)",
    ("packager.samples", "packager.sample_models"): "onnx and transformers, for a sample built at first use",
    ("packager.smoke", "packager.signing"): "cryptography, for a signed bundle only",
    ("packager.results", "packager.signing"): "cryptography, for a signed bundle's fingerprint only",
}

# Imports of other packages that stay inside functions on purpose: the CLI and `import packager` load these only
# when a command needs them (`python -X importtime -c "import packager.cli"`; `packager --help` must stay fast).
# torch, transformers, optimum, peft, safetensors and tokenizers take seconds (export and samples need them); onnx and
# onnxruntime about 0.3 s (only export, quantize, verify and the checks of a packaged model); typer is the CLI's own.
LAZY_THIRD_PARTY = ("torch", "transformers", "optimum", "peft", "safetensors", "tokenizers", "onnx", "onnx_ir",
                    "onnxruntime", "numpy", "typer",
                    # the E-class exporter's siblings, imported where the multimodal export needs them (genai
                    # environment): the encoders, and Gemma 3n's
                    "eclass_encoders", "eclass_encoders_3n")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    in_function: bool


def lazy_imports(root: Path = ROOT, package: str = "packager") -> list[tuple[str, str, int]]:
    """The imports of other packages inside functions: (module, the top-level name imported, line)."""
    found = []
    for module, path in modules(root, package).items():
        for node, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if in_function and not getattr(node, "level", 0) and top != package:
                    found.append((module, top, node.lineno))
    return found


def modules(root: Path = ROOT, package: str = "packager") -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(tree: ast.AST, in_function: bool = False, type_only: bool = False
             ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import under `tree`, and whether it sits in a function; those under `if TYPE_CHECKING:` only with
    `type_only` (they never run, but a type checker follows them)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            branches = node.body + node.orelse if type_only else node.orelse
            yield from _imports(ast.Module(body=branches, type_ignores=[]), in_function, type_only)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function
        yield from _imports(node, in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda),
                            type_only)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level-1 more
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def edges(root: Path = ROOT, package: str = "packager", type_only: bool = False) -> list[Edge]:
    """Each import of a package module by a package module, module-level and inside functions; with `type_only`,
    the imports under `if TYPE_CHECKING:` too (the graph a type checker walks)."""
    known = modules(root, package)
    found: list[Edge] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, in_function in _imports(tree, type_only=type_only):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target == package or target.startswith(package + "."):
                    found.append(Edge(module, target, node.lineno, in_function))
    return found


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in graph_edges:
        if edge.importer != edge.imported:
            graph.setdefault(edge.importer, set()).add(edge.imported)
            graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components, key=len, reverse=True)


def layer(module: str) -> int:
    """The index in LAYERS of the module's layer; a module no layer names is an error (a new module says where)."""
    matches = [(len(prefix), number) for number, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (module.startswith(prefix + ".") and prefix != "packager")]
    if matches:
        return max(matches)[1]
    raise KeyError(f"{module} is in no layer of scripts/import_graph.py's LAYERS: add it where it belongs")


def upward(graph_edges: list[Edge]) -> list[Edge]:
    """The imports from a module of a higher layer than the importer's."""
    return [edge for edge in graph_edges if layer(edge.imported) > layer(edge.importer)]


def stage_imports(graph_edges: list[Edge]) -> list[Edge]:
    """The imports of a stage by a module that is neither a stage nor one of STAGE_USERS."""
    return [edge for edge in graph_edges if edge.imported.startswith("packager.stages.")
            and not edge.importer.startswith("packager.stages") and edge.importer not in STAGE_USERS]


def unexplained_lazy(graph_edges: list[Edge]) -> list[Edge]:
    """The imports of packager modules inside functions that neither LAZY_IMPORTERS nor LAZY_EDGES explain."""
    return [edge for edge in graph_edges if edge.in_function and edge.importer not in LAZY_IMPORTERS
            and (edge.importer, edge.imported) not in LAZY_EDGES]


def big_modules(limit: int = SIZE_LIMIT, root: Path = ROOT, folders: tuple[str, ...] = ("packager", "targets")
                ) -> dict[str, int]:
    """The modules over the limit, by path, with their line counts."""
    sizes = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            count = len(path.read_text(encoding="utf-8").splitlines())
            if count > limit:
                sizes[str(path.relative_to(root))] = count
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", action="store_true", help="print every edge")
    parser.add_argument("--type-only", action="store_true",
                        help="count the imports under `if TYPE_CHECKING:` too (the graph a type checker walks)")
    args = parser.parse_args()
    graph_edges = edges(type_only=args.type_only)
    if args.edges:
        for edge in graph_edges:
            where = "  (in a function)" if edge.in_function else ""
            print(f"{edge.importer} -> {edge.imported}  line {edge.line}{where}")
    components = cycles(graph_edges)
    print(f"strongly connected components (size > 1): {len(components)}")
    for component in components:
        print(f"  {len(component)} modules: {', '.join(component)}")
    ups = upward(graph_edges)
    print(f"imports that run back up the layers: {len(ups)}")
    for edge in ups:
        print(f"  {edge.importer} ({LAYERS[layer(edge.importer)][0]}) -> {edge.imported} "
              f"({LAYERS[layer(edge.imported)][0]})  line {edge.line}")
    stray_stages = stage_imports(graph_edges)
    print(f"imports of a stage from outside the stages and STAGE_USERS: {len(stray_stages)}")
    for edge in stray_stages:
        print(f"  {edge.importer} -> {edge.imported}  line {edge.line}")
    inside = [edge for edge in graph_edges if edge.in_function]
    unexplained = unexplained_lazy(graph_edges)
    print(f"imports of packager modules inside functions: {len(inside)} "
          f"(in {len({edge.importer for edge in inside})} modules; not explained by LAZY_IMPORTERS or LAZY_EDGES: "
          f"{len(unexplained)})")
    for edge in unexplained:
        print(f"  {edge.importer} -> {edge.imported}  line {edge.line}")
    lazy = lazy_imports()
    stray = sorted({top for _, top, _ in lazy if top not in LAZY_THIRD_PARTY and top not in sys.stdlib_module_names})
    print(f"imports of other packages inside functions: {len(lazy)} "
          f"({sum(top in LAZY_THIRD_PARTY for _, top, _ in lazy)} heavy ones loaded lazily on purpose, "
          f"{sum(top in sys.stdlib_module_names for _, top, _ in lazy)} of the standard library)"
          + (f"; not in LAZY_THIRD_PARTY: {', '.join(stray)}" if stray else ""))
    sizes = big_modules()
    print(f"modules over {SIZE_LIMIT} lines: {len(sizes)}")
    for path, count in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {count:5d} {path}")
    return 1 if components or ups or stray_stages or unexplained or sizes else 0


if __name__ == "__main__":
    sys.exit(main())
