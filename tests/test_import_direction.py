"""Import direction inside babelora: a lower layer never imports a higher one, and no two modules
import each other, directly or round a loop.

Every module under src/babelora is read with `ast` (nothing is imported) and every static
import counts: at the top, inside functions, and under `if TYPE_CHECKING:` (a type-only import
still ties two modules together). `from pkg import name` counts as an import of the submodule
`pkg.name` where one exists, else of `pkg`. Imports made from strings (importlib) are not seen.

Layers, bottom to top (`LAYERS`; a module takes the layer of the longest entry that is it or a
package above it, and that entry is its unit):

    0  core: the package root (errors, config, languages)
    1  data
    2  adapters
    3  models
    4  decode, evaluate (one layer, two units: one may use the other, not both ways)
    5  train (the engine)
    6  the method packages (methods/experts, molora, speech_llm, finetune) and merging
    7  methods/registry.py and methods/loading.py, the only ways between method packages
    8  what drives the methods from above: their command-line entries (methods/*/cli.py),
       speech_llm/stages.py (chains training runs through the registry), export (writes
       trained models of any method through methods/loading.py) and serve (decodes them over
       HTTP the same way)
    9  cli

Rules: an import may not go up a layer; method packages do not import each other (the entries
of layer 8 included: they may use their own package and the registry); merging imports no
method; units do not import each other round a loop; modules do not either.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import babelora

PACKAGE = Path(babelora.__file__).resolve().parent
ROOT = "babelora"
ROOT_MODULES = {"babelora", "babelora.errors", "babelora.config", "babelora.languages"}

LAYERS: dict[str, int] = {
    "babelora": 0,
    "babelora.data": 1,
    "babelora.adapters": 2,
    "babelora.models": 3,
    "babelora.decode": 4,
    "babelora.evaluate": 4,
    "babelora.train": 5,
    "babelora.methods": 6,  # the package's __init__ only; each method package is its own unit
    "babelora.methods.experts": 6,
    "babelora.methods.molora": 6,
    "babelora.methods.speech_llm": 6,
    "babelora.methods.finetune": 6,
    "babelora.merging": 6,
    "babelora.methods.registry": 7,
    "babelora.methods.loading": 7,
    "babelora.methods.experts.cli": 8,
    "babelora.methods.molora.cli": 8,
    "babelora.methods.speech_llm.cli": 8,
    "babelora.methods.speech_llm.stages": 8,
    "babelora.export": 8,
    "babelora.serve": 8,
    "babelora.cli": 9,
}
METHOD_PACKAGES = {u for u in LAYERS if u.startswith("babelora.methods.") and LAYERS[u] == 6}

# Imports that break a rule today, each with what should change. The test fails when a new one
# appears and when one of these is gone (then delete its line here).
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

Graph = Mapping[str, Mapping[str, int]]  # importer -> {imported module: line of the import}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(module: str, path: Path, known: Iterable[str]) -> dict[str, int]:
    """First-party modules `module` imports (statically, anywhere in the file) -> first line."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        while name and name not in known:  # `import babelora.x.y` names a module; trim attrs
            name = name.rpartition(".")[0]
        if name and name != module:
            found.setdefault(name, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base != ROOT and not base.startswith(ROOT + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = source_modules()
    return {m: imported_names(m, p, modules) for m, p in modules.items()}


def unit_of(module: str) -> str:
    """The longest LAYERS entry that is `module` or a package above it."""
    matches = [u for u in LAYERS if module == u or module.startswith(u + ".")]
    if not matches:
        raise KeyError(module)
    return max(matches, key=len)


def method_package(module: str) -> str | None:
    return next((p for p in METHOD_PACKAGES if module == p or module.startswith(p + ".")), None)


def rule_broken(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when it may."""
    a, b = unit_of(importer), unit_of(imported)
    if LAYERS[b] > LAYERS[a]:
        return f"upward: layer {LAYERS[a]} ({a}) imports layer {LAYERS[b]} ({b})"
    pa, pb = method_package(importer), method_package(imported)
    if pa and pb and pa != pb:
        return f"method packages import each other ({pa} -> {pb}): go through the registry"
    if a == "babelora.merging" and b.startswith("babelora.methods"):
        return "merging imports a method"
    return None


def violations(graph: Graph) -> dict[tuple[str, str], str]:
    return {
        (m, dep): why
        for m, deps in graph.items()
        for dep in deps
        if (why := rule_broken(m, dep)) is not None
    }


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import loop (a -> b -> ... -> a) in `edges`, or None when there is none."""
    try:
        graphlib.TopologicalSorter({k: set(v) - {k} for k, v in edges.items()}).prepare()
    except graphlib.CycleError as err:
        return list(reversed(err.args[1]))  # graphlib lists it against the arrows
    return None


def unit_edges(graph: Graph) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for m, deps in graph.items():
        edges.setdefault(unit_of(m), set()).update(unit_of(d) for d in deps)
    return edges


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def describe(graph: Graph, pairs: Iterable[tuple[str, str]], why: Mapping) -> str:
    modules = source_modules()
    return "\n".join(
        f"{modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]}: {a} -> {b}: {why[a, b]}"
        for a, b in sorted(pairs)
    )


def test_the_walk_sees_every_module_and_kind_of_import(graph):
    """Guards the scanner itself: top-level, in-function and `from pkg import submodule`."""
    assert len(graph) > 100
    assert "babelora.methods.registry" in graph["babelora.cli.train"]  # inside a function
    assert "babelora.methods.experts.cli" in graph["babelora.cli.main"]  # from pkg import mod
    assert "babelora.evaluate.metrics" in graph["babelora.evaluate.report"]
    assert "babelora.errors" in graph["babelora"]


def test_every_module_has_its_own_layer_entry(graph):
    """A new top-level package or method package needs its line in LAYERS."""
    for module in graph:
        unit = unit_of(module)
        if unit == ROOT:
            assert module in ROOT_MODULES, f"{module}: add its package to LAYERS"
        if unit == "babelora.methods":
            assert module == unit, f"{module}: add its method package to LAYERS"
    assert set(LAYERS) <= {unit_of(m) for m in graph}, "LAYERS names a package that is gone"


def test_no_import_goes_up_or_across_method_packages(graph):
    found = violations(graph)
    new = set(found) - set(KNOWN_VIOLATIONS)
    assert not new, "imports against the layering:\n" + describe(graph, new, found)
    fixed = set(KNOWN_VIOLATIONS) - set(found)
    assert not fixed, f"no longer imported, delete from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_no_import_cycle_between_modules(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_units(graph):
    """e.g. decode and evaluate share a layer: one may import the other, not both ways."""
    cycle = find_cycle(unit_edges(graph))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_rules_catch_what_they_guard():
    """The checks on a made-up graph: an upward import, a cross-method import, a loop."""
    assert rule_broken("babelora.data.audio", "babelora.cli.main").startswith("upward")
    assert rule_broken("babelora.errors", "babelora.data.audio").startswith("upward")
    assert rule_broken("babelora.train.loop", "babelora.methods.registry").startswith("upward")
    assert "method packages" in rule_broken(
        "babelora.methods.molora.cli", "babelora.methods.experts.recipe"
    )
    assert rule_broken("babelora.merging.driver", "babelora.methods.experts.fusion")
    assert rule_broken("babelora.methods.registry", "babelora.methods.molora.recipe") is None
    assert rule_broken("babelora.methods.experts.cli", "babelora.methods.registry") is None
    assert rule_broken("babelora.decode.runner", "babelora.evaluate.metrics") is None
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(loop) in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b", "a"}, "b": set()}) is None
    edges = unit_edges(
        {
            "babelora.decode.runner": {"babelora.evaluate.report": 1},
            "babelora.evaluate.report": {"babelora.decode.search": 1},
        }
    )
    assert find_cycle(edges) is not None
