"""The package's import graph follows the layers of ARCHITECTURE.md and has no cycle, counting every
import statement (also those inside functions: a lazy import hides a cycle or an upward dependency
from Python, not from a reader).

The layer order is declared once, in ARCHITECTURE.md's "Layers" table, and read from there.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import augment

PACKAGE = Path(augment.__file__).resolve().parent
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"

#: Imports known to break the layer order (none: each entry is removed when its fix lands, and
#: test_known_exceptions_still_exist fails on an entry whose import is gone)
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the augment modules it imports (``from a import b`` counts a.b when b is a module)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


# ----------------------------------------------------------------------------------- the layers
def read_layers(text: str) -> list[list[str]]:
    """The module prefixes of each layer, top first, from the first fenced block under "## Layers".

    A line that starts a layer begins in column 0; its paths end at the first run of two spaces
    (or the line's end). The first path is written from the repository root, the others relative
    to ``augment/``; ``x.py`` is module ``augment.x``, ``x/`` the package ``augment.x`` and all in it.
    """
    section = text.split("\n## Layers", 1)[1]
    block = section.split("```", 2)[1].split("\n", 1)[1]
    layers = []
    for line in block.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        paths = [p.strip() for p in re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split(",")]
        names = []
        for path in [paths[0].removeprefix("augment/"), *paths[1:]]:
            path = path.removesuffix("/").removesuffix(".py").replace("/", ".")
            names.append("augment" if path == "__init__" else f"augment.{path}")
        layers.append(names)
    return layers


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The index of the layer whose path holds ``module`` (the longest matching path wins)."""
    best: tuple[int, int] | None = None
    for i, names in enumerate(layers):
        for name in names:
            if module == name or (name != "augment" and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), i)
    return None if best is None else best[1]


def layer_violations(graph: dict[str, set[str]], layers: list[list[str]],
                     allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    """One line per module in no layer and per import from a layer to one below it in the list."""
    def label(i: int) -> str:
        return f"layer {i + 1} ({', '.join(layers[i])})"

    problems = []
    for module in sorted(graph):
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module} is in no layer: add it to the Layers table of ARCHITECTURE.md")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > mine and (module, target) not in allowed:
                problems.append(f"{module} in {label(mine)} imports {target} in {label(theirs)}, "
                                "a layer below it")
    return problems


def architecture_layers() -> list[list[str]]:
    return read_layers(ARCHITECTURE.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ tests
def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_reads_the_package():
    graph = import_graph()
    assert "augment.cli.main" in graph["augment.cli"]
    assert "augment.io.rundir" in graph["augment.io.shards"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_table_is_read():
    layers = architecture_layers()
    assert layers[0] == ["augment", "augment.errors", "augment.resources", "augment.seeds"]
    assert layers[-1] == ["augment.cli", "augment.__main__"]
    order = [name for names in layers for name in names]
    for upper, lower in [("augment.config", "augment.io"), ("augment.io", "augment.datasets"),
                         ("augment.datasets", "augment.models"), ("augment.distributed", "augment.stage"),
                         ("augment.stage", "augment.verify"), ("augment.report", "augment.pipeline"),
                         ("augment.pipeline", "augment.cli")]:
        assert order.index(upper) < order.index(lower)
    assert layer_of("augment.distributed.pool", layers) == layer_of("augment.distributed", layers)
    assert layer_of("augment.models.embedded.build", layers) == layer_of("augment.models", layers)
    assert layer_of("augment", layers) == 0 and layer_of("augment.elsewhere", layers) is None


def test_imports_follow_the_layers():
    problems = layer_violations(import_graph(), architecture_layers(), ALLOWED_UPWARD)
    assert not problems, "\n".join(problems)


def test_known_exceptions_still_exist():
    """An allowlisted import that is gone must leave the allowlist too (else it would hide a new one)."""
    graph = import_graph()
    gone = [f"{a} -> {b}" for a, b in ALLOWED_UPWARD if b not in graph.get(a, ())]
    assert not gone, "remove from ALLOWED_UPWARD: " + ", ".join(gone)


def test_checker_names_an_upward_import_on_a_synthetic_graph():
    layers = [["augment", "augment.errors"], ["augment.io"], ["augment.cli"]]
    graph = {"augment.errors": set(), "augment.io.rundir": {"augment.errors"}, "augment.cli": {"augment.io.rundir"},
             "augment.io.shards": {"augment.cli"}}
    assert layer_violations(graph, layers) == [
        "augment.io.shards in layer 2 (augment.io) imports augment.cli in layer 3 (augment.cli), a layer below it"]
    assert layer_violations(graph, layers, {("augment.io.shards", "augment.cli")}) == []
    assert layer_violations({"augment.stray": set()}, layers) == [
        "augment.stray is in no layer: add it to the Layers table of ARCHITECTURE.md"]


def test_checker_finds_a_lazy_upward_import_planted_in_a_copy_of_the_package(tmp_path):
    copy = tmp_path / "augment"
    shutil.copytree(PACKAGE, copy, ignore=lambda folder, names: [  # the sources only
        n for n in names if n == "__pycache__" or (not n.endswith(".py") and not (Path(folder) / n).is_dir())])
    (copy / "io" / "planted.py").write_text(
        '"""An io module reaching up into the CLI, lazily."""\n\n\ndef f():\n'
        "    from augment.cli.options import command\n\n    return command\n", encoding="utf-8")
    layers = architecture_layers()
    before = set(layer_violations(import_graph(PACKAGE), layers, ALLOWED_UPWARD))
    problems = [p for p in layer_violations(import_graph(copy), layers, ALLOWED_UPWARD) if p not in before]
    io, cli = layer_of("augment.io", layers) + 1, layer_of("augment.cli", layers) + 1
    assert problems == [f"augment.io.planted in layer {io} (augment.io) imports augment.cli.options in layer {cli} "
                        "(augment.cli, augment.__main__), a layer below it"]
