"""The package's structure: no import cycles, the model knows nothing of training (STYLE rule 12), and every
package the source imports is declared in pyproject.toml.

The import graph is read from the source with `ast`: every `import ipae...` and `from ipae... import`,
at module level and inside functions (an import deferred into a function still ties the two modules).
`from package import name` depends on the submodule `package.name` where there is one, else on the package.
"""

import ast
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
from collections import Counter
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
    assert {"ipae", "ipae.models", "ipae.training", "ipae.checkpoint", "ipae.data.mnist", "ipae.experiments.runs"} <= graph.keys()
    assert {"ipae.models", "ipae.training", "ipae.checkpoint", "ipae.persistence"} <= graph["ipae"]
    assert "ipae.distributed" in graph["ipae.training"]  # `from ipae import distributed` is the submodule


def test_the_package_has_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("training", ["ipae.training", "ipae.checkpoint", "ipae.distributed", "ipae.fitting"])
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


REPORTING = {"ipae.reporting", "ipae.plotting"}  # the modules that write tables and draw figures


@pytest.mark.parametrize("training", ["ipae.training", "ipae.fitting", "ipae.estimators", "ipae.diagnostics"])
def test_the_training_loop_reaches_no_module_that_reports(graph, training):
    assert not REPORTING & reachable(graph, training), f"{training} reaches {sorted(REPORTING & reachable(graph, training))}"


def test_the_reporting_modules_exist(graph):  # else the test above would pass for want of them
    assert REPORTING <= graph.keys()


def test_training_and_monitoring_load_no_reporting_or_plotting_module():
    shown = f"m.split('.')[0] == 'matplotlib' or m in {sorted(REPORTING)!r}"
    code = f"import sys, ipae.training, ipae.fitting, ipae.estimators\nprint(sorted(m for m in sys.modules if {shown}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_module_is_named_after_a_function_it_holds():
    """`import ipae.train` gave the function `train` (the package's attribute hid the module of that name)."""
    import ipae

    for name in ipae.__all__:
        assert importlib.util.find_spec(f"ipae.{name}") is None or not callable(getattr(ipae, name)), name


# the public face (STYLE rule 19): every module's __all__, together


def _modules() -> list[str]:
    import ipae

    return ["ipae", *(info.name for info in pkgutil.walk_packages(ipae.__path__, "ipae."))]


def _public_names() -> list[tuple[str, str, object]]:
    """(module, name, value) of every name in the `__all__` of ipae and each of its modules."""
    found = []
    for module_name in _modules():
        module = importlib.import_module(module_name)
        found += [(module_name, name, getattr(module, name)) for name in getattr(module, "__all__", ())]
    return found


def _variable_docstring(module_name: str, name: str) -> str | None:
    """The string literal right after `name = ...` at the top of the module, as pdoc reads it, or None."""
    body = ast.parse(Path(importlib.import_module(module_name).__file__).read_text()).body
    for statement, following in zip(body, body[1:], strict=False):
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                return following.value.value
    return None


def test_the_public_face_is_about_sixty_names_each_listed_once():
    names = _public_names()
    assert 40 <= len(names) <= 60, f"{len(names)} names in the modules' __all__s"
    listed = Counter(name for _, name, _ in names)
    assert not [name for name, count in listed.items() if count > 1], "a name in two __all__s"
    assert {"train", "TrainConfig", "AutoEncoder", "mutual_information", "MLP", "Conv", "IPAE"} <= set(listed)


def test_every_public_name_has_a_docstring():
    for module_name, name, value in _public_names():
        if name.startswith("__"):
            continue
        if inspect.isclass(value) or inspect.isroutine(value):
            doc = value.__doc__ if not inspect.isclass(value) or "__doc__" in vars(value) else None
        else:  # a constant: documented by a string literal under its assignment, where it is assigned
            doc = next(filter(None, (_variable_docstring(home, name) for home in _modules())), None)
        assert doc and len(doc.split()) >= 5, f"{module_name}.{name} has no docstring"


def test_dir_lists_the_lazily_imported_names():
    import ipae

    assert set(ipae.__all__) <= set(dir(ipae))
    assert {"IPAE", "BetaVAE", "plot_runs"} <= set(dir(ipae))


def test_the_package_says_it_is_typed():
    assert (SRC / "ipae" / "py.typed").is_file()
    setuptools = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["ipae"]


def test_the_code_fingerprint_covers_the_modules_that_train_and_measure(graph):
    """A run record's "code" hashes CODE_FILES: each must exist, and the training loop's own modules are among them."""
    from ipae.experiments.runs import CODE_FILES

    package = SRC / "ipae"
    assert all((package / name).is_file() for name in CODE_FILES)
    hashed = {"ipae." + name.removesuffix(".py").replace("/", ".") for name in CODE_FILES}
    assert {"ipae.training", "ipae.runtime", "ipae.data.sources", "ipae.diagnostics", "ipae.models", "ipae.rates"} <= hashed
