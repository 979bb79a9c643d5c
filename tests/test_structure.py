"""The package's structure: no import cycles, the model knows nothing of training (STYLE rule 12), and every
package the source imports is declared in pyproject.toml.

The import graph is read from the source with `ast`: every `import ipae...` and `from ipae... import`,
at module level and inside functions (an import deferred into a function still ties the two modules).
`from package import name` depends on the submodule `package.name` where there is one, else on the package.
"""

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SRC = Path(importlib.util.find_spec("ipae").origin).parents[1]  # the source of the ipae that is imported, unimported


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports, for every .py file under root/package."""
    files = {_module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package that holds this module, `level` - 1 steps up
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    imported.add(submodule if submodule in files else source)
        graph[name] = {module for module in imported if module in files and module != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open": on the current path; "done": no cycle through it

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target, path)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC, "ipae")


def test_the_graph_reader_sees_every_kind_of_import_and_finds_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("import os\nA = 1\n\ndef f():\n    from pkg.sub import b\n")  # deferred into a function
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import c\nfrom . import d\n")  # relative
    (package / "sub" / "d.py").write_text("")
    (package / "c.py").write_text("import pkg.a as a\nfrom pkg import A\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c", "pkg.sub.d"},
        "pkg.sub.d": set(),
        "pkg.c": {"pkg.a", "pkg"},
    }
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.sub.b", "pkg.c", "pkg"]
    del graph["pkg.c"]
    assert find_cycle(graph) is None


def test_the_graph_covers_the_package(graph):
    assert {"ipae", "ipae.models", "ipae.train", "ipae.checkpoint", "ipae.data.mnist", "ipae.experiments.runs"} <= graph.keys()
    assert {"ipae.models", "ipae.train", "ipae.persistence"} <= graph["ipae"]
    assert "ipae.distributed" in graph["ipae.train"]  # `from ipae import distributed` is the submodule


def test_the_package_has_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("training", ["ipae.train", "ipae.checkpoint", "ipae.distributed", "ipae.fitting"])
def test_the_model_imports_nothing_of_training(graph, training):
    assert training not in graph["ipae.models"]
    assert training not in reachable(graph, "ipae.models"), (
        f"ipae.models reaches {training} through {sorted(reachable(graph, 'ipae.models'))}"
    )


# every package the source imports is declared


def _third_party_imports(root: Path) -> set[str]:
    """The top-level names of the modules outside the standard library and ipae that the source under root imports."""
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "ipae"}


def _declared() -> set[str]:
    """The distributions pyproject.toml's [project] dependencies and optional extras name, normalised (PEP 503)."""
    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    return {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements}


def test_every_imported_package_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()  # module name -> the distributions that install it
    imported = _third_party_imports(SRC / "ipae")
    assert {"torch", "numpy", "sklearn", "scipy"} <= imported  # the reader sees the imports
    undeclared = {
        name: distributions.get(name, [name]) for name in imported if not {d.lower() for d in distributions.get(name, [name])} & _declared()
    }
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


@pytest.mark.parametrize("training", ["ipae.train", "ipae.fitting", "ipae.estimators", "ipae.diagnostics"])
def test_the_training_loop_reaches_no_module_that_draws(graph, training):
    assert "ipae.plotting" not in reachable(graph, training), f"{training} reaches ipae.plotting"


def test_training_and_monitoring_load_no_plotting_library():
    code = "import sys, ipae.train, ipae.fitting, ipae.estimators; print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
