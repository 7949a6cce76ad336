"""The layers of docs/architecture.md hold in the code: no import up the order, between peers, or in a circle."""

import ast
import re

from conftest import REPO

TIER = "unit"  # what the tests need: conftest.TIERS

PACKAGE = REPO / "sop_ros"


def layers() -> dict[str, int]:
    """Unit (a package folder or a top-level module of sop_ros, without .py) -> its layer, from the page's table."""
    table = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        match = re.fullmatch(r"\| (\d+) \| (.+?) \| .* \|", line)
        if match:
            for unit in re.findall(r"`([\w.]+)/?`", match[2]):
                table[unit.removesuffix(".py")] = int(match[1])
    return table


def unit_of(module: str) -> str:
    """sop_ros.learner.online -> learner; sop_ros.cli -> cli."""
    return module.split(".")[1]


def imports(path) -> set[str]:
    """The sop_ros modules a file imports, anywhere in it but under `if TYPE_CHECKING:` (never run)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sop_ros":  # from sop_ros import msg
                found |= {f"sop_ros.{alias.name}" for alias in node.names}
            elif node.module.startswith("sop_ros."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sop_ros.")}
    return found


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def test_every_package_has_a_layer():
    table = layers()
    units = {unit_of(m) for m in graph() if m != "sop_ros"}
    assert units - set(table) == set(), "add these to the layer table of docs/architecture.md"
    assert table["cli"] > table["fleet"] > table["learner"] > table["cloud"] > table["robot"] > table["configs"]


def test_no_import_runs_up_the_layers_or_between_peers():
    table = layers()
    wrong = []
    for module, imported in graph().items():
        if module == "sop_ros":
            continue
        here = unit_of(module)
        for target in imported:
            there = unit_of(target)
            if there != here and table[there] >= table[here]:
                kind = "up" if table[there] > table[here] else "between peers"
                wrong.append(f"{module} imports {target} ({kind}: layer {table[here]} -> {table[there]})")
    assert wrong == []


def test_no_modules_import_each_other_in_a_circle():
    edges = graph()
    modules = set(edges)

    def resolve(target: str) -> str | None:  # from sop_ros.model.vla import X: the module, or a package's __init__
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    done, on_path, circles = set(), [], []

    def visit(module: str) -> None:
        on_path.append(module)
        for target in sorted(filter(None, map(resolve, edges[module]))):
            if target == module:
                continue
            if target in on_path:
                circles.append(" -> ".join(on_path[on_path.index(target) :] + [target]))
            elif target not in done:
                visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(modules):
        if module not in done:
            visit(module)
    assert circles == []
