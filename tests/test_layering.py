"""The package's layering stays one way: no import cycle between phd_jax's files, lazy imports
inside functions included, and no module past the size where it usually holds two ideas.

Layers, bottom up: errors and config; masks; attention; the model; decode and sampling; train,
data, evaluation, interop; the command lines. A cycle means a lower layer reaches up.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "phd_jax")
MAX_LINES = 500


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every file of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(path: str, module: str, known: set[str]) -> set[str]:
    """The package modules a file imports anywhere (top level, functions, TYPE_CHECKING blocks aside)."""
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    found = set()

    def add(name: str):
        # `from phd_jax.train import cli` may name a module or a package attribute: take the longest known prefix.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            type_checking.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                add(f"{prefix}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(p, m, known) for m, p in modules.items()}
    # Importing `phd_jax.a.b` runs `phd_jax/a/__init__.py` first: a package's init is a dependency too.
    for m, deps in graph.items():
        for d in list(deps):
            parts = d.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in known and parent != m and not m.startswith(parent + "."):
                    deps.add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read():
    graph = _graph()
    assert "phd_jax.model" in graph and "phd_jax.config" in graph["phd_jax.model"]
    # a lazy import inside a function counts
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_between_package_files():
    graph = _graph()
    cycles = _cycles(graph)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_the_package_root_imports_only_what_it_names():
    """`import phd_jax` resolves its public names lazily: it imports none of its modules itself."""
    graph = _graph()
    assert graph["phd_jax"] == set(), graph["phd_jax"]


def test_no_module_is_longer_than_the_limit():
    long = {m: n for m, p in _modules().items() if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
