"""The layering of docs/design.md §10, checked on the source: every import of our
own modules (those inside functions included) points to the same layer or
one below, models/ imports nothing else of ours, and no modules import each
other in a cycle."""
import ast
import os

from conftest import ROOT

# Top-level package or folder -> layer; entry scripts (main_*.py) are scripts.
LAYERS = {"utils": 1, "models": 2, "pruner": 3, "kernels": 4, "app": 5, "bench": 5,
          "profile": 6, "experiments": 6}
SCRIPT_LAYER = 6


def source_modules():
    """{dotted name: path} of every non-test Python file of the repository."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d not in ("tests", "runs", "docs")]
        for name in files:
            if name.endswith(".py"):
                parts = [] if rel == "." else rel.split(os.sep)
                stem = name[:-3]
                dotted = ".".join(parts + ([] if stem == "__init__" else [stem]))
                found[dotted] = os.path.join(folder, name)
    return found


def our_imports(path, modules):
    """Our modules imported anywhere in the file at `path`."""
    roots = {name.split(".")[0] for name in modules}
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        targets.update(name for name in names if name.split(".")[0] in roots and name in modules)
    return targets


def layer_of(module):
    return LAYERS.get(module.split(".")[0], SCRIPT_LAYER)


def import_graph():
    modules = source_modules()
    return {name: our_imports(path, modules) for name, path in modules.items()}


def test_every_package_has_a_layer():
    packages = {name.split(".")[0] for name in source_modules() if "." in name}
    assert packages <= set(LAYERS), f"packages without a layer: {packages - set(LAYERS)}"


def test_imports_point_down_and_models_import_nothing_of_ours():
    upward = [f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, deps in import_graph().items() for b in deps
              if layer_of(b) > layer_of(a) or (a.startswith("models") and not b.startswith("models"))]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_checks_catch_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "pruner.mask" in graph["pruner.magnitude"] and "kernels.regrouped" in graph["kernels.permuted"]
    assert layer_of("models.resnet") < layer_of("pruner.slim") < layer_of("kernels.regrouped") < layer_of("main_imp")
