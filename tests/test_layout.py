"""The package's architecture, checked from its source: no import cycles between modules nor between packages
(module-level and function-level imports alike), the commands live in ltray.cli and ltray.distributed imports none
of them, the core never reaches Ray, pandas or matplotlib, and the commands that need no Ray never load it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ltray"
BOTTOM = ("ltray.core", "ltray.lap", "ltray.config", "ltray.data", "ltray.models", "ltray.training", "ltray.errors",
          "ltray.metrics")   # what the algorithm is made of: pure torch / numpy


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(ltray modules, other top-level packages) imported anywhere in the file, `if __name__ == "__main__"`
    blocks excepted (entry points)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            for n in ast.walk(node)}
    ours, others = set(), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ltray"):
                    ours.add(alias.name)
                else:
                    others.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            if not base.startswith("ltray"):
                others.add(base.split(".")[0])
                continue
            for alias in node.names:
                ours.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return ours, others


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_module_imports_itself_through_others():
    def visit(node, stack, done):
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(GRAPH.get(node, (set(), set()))[0]):
            if nxt != node:
                visit(nxt, stack + [node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(GRAPH):
        visit(name, [], done)
    assert "ltray.distributed.engine" in GRAPH["ltray.ensemble.units"][0]   # the parser sees imports in functions


def _package(module: str) -> str:
    """ltray.core.symmetry -> ltray.core; a top-level module is a package of its own (ltray.runs -> ltray.runs)."""
    return ".".join(module.split(".")[:2])


def _package_graph() -> dict[str, set[str]]:
    """Package -> the other packages its modules import. The entry points (`__main__` modules: `python -m ltray`,
    `python -m ltray.ensemble`) are left out: they sit above every package and nothing imports them, so their
    import of ltray.cli is no dependency of the package they are in."""
    graph: dict[str, set[str]] = {}
    for name, (ours, _) in GRAPH.items():
        if name.rsplit(".", 1)[-1] != "__main__":
            graph.setdefault(_package(name), set()).update(_package(o) for o in ours)
    return {p: deps - {p} for p, deps in graph.items()}


PACKAGES = _package_graph()
# Package cycles tolerated for now, each named with why it is not broken yet: none.
ALLOWED_PACKAGE_CYCLES: set[frozenset[str]] = set()


def _reach(package: str) -> set[str]:
    seen, todo = set(), list(PACKAGES.get(package, ()))
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += PACKAGES.get(p, ())
    return seen


def test_no_package_imports_itself_through_others():
    reach = {p: _reach(p) for p in PACKAGES}
    cycles = {frozenset({p} | {q for q in reach[p] if p in reach.get(q, ())}) for p in PACKAGES if p in reach[p]}
    assert not cycles - ALLOWED_PACKAGE_CYCLES, "package cycles: " + "; ".join(
        " <-> ".join(sorted(c)) for c in cycles - ALLOWED_PACKAGE_CYCLES)
    assert not ALLOWED_PACKAGE_CYCLES - cycles, "broken since: remove from ALLOWED_PACKAGE_CYCLES"
    assert {"ltray.distributed", "ltray.runs"} <= PACKAGES["ltray.cli"]   # the graph sees packages and modules


def test_commands_live_in_cli_and_distributed_knows_none_of_them():
    """ltray.distributed is a general executor (a cluster, the object store, tasks, their fan-out, Tune trials, the
    watchdog): the commands, the ensembles and the sweep use it, never the reverse."""
    from ltray.cli import COMMANDS

    assert all(target.startswith("ltray.cli.") for _, target, _, _ in COMMANDS.values())
    for name, (ours, _) in GRAPH.items():
        if name.startswith("ltray.distributed"):
            known = sorted(o for o in ours if _package(o) in ("ltray.cli", "ltray.ensemble", "ltray.sweep",
                                                              "ltray.analysis"))
            assert not known, f"{name} imports {known}"


def test_the_core_never_reaches_ray_pandas_or_matplotlib():
    bottom = [m for m in MODULES if m.startswith(BOTTOM)]
    for name in bottom:
        seen, todo = set(), [name]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            ours, others = GRAPH[m]
            assert not others & {"ray", "pandas", "matplotlib", "pyarrow"}, f"{m} (reached from {name}) imports " \
                f"{sorted(others & {'ray', 'pandas', 'matplotlib', 'pyarrow'})}"
            todo += [o for o in ours if o != "ltray"]


def test_only_the_distributed_package_imports_ray():
    users = sorted(m for m, (_, others) in GRAPH.items() if "ray" in others)
    assert users and all(m.startswith("ltray.distributed") for m in users), users


def test_no_module_is_much_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 410}
    assert not long


@pytest.mark.parametrize("argv", [
    ["train", "--help"],
    ["spec", "--help"],
    ["spec", "mlp", "--width", "8", "--in-channels", "1", "--image-size", "4"],
    ["train", "--width", "8", "--epochs", "1", "--no-progress", "--out", "{tmp}/train"],
    ["transfer", "--width", "8", "--epochs", "1", "--T", "1", "--methods", "naive", "--seeds", "1", "--no-progress",
     "--out", "{tmp}/transfer"],
])
def test_commands_without_ray_never_import_it(argv, tmp_path):
    code = ("import sys\nfrom ltray.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nprint(code, 'torch' in sys.modules, sorted(m for m in sys.modules if m == 'ray' or "
            "m.startswith(('ray.', 'tune'))))")
    done = subprocess.run([sys.executable, "-c", code, *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, timeout=300)
    exit_code, torch_loaded, ray_modules = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert exit_code == "0", done.stderr[-2000:]
    assert ray_modules == "[]"
    if argv[-1] == "--help":
        assert torch_loaded == "False"      # parsing arguments loads neither torch nor Ray
