"""The import rules of billing_worker, checked by `make lint`.

- No import cycle among billing_worker modules (module-level imports; imports under
  `if TYPE_CHECKING:` and inside functions are what breaks a cycle, so they do not count).
- `billing_worker/settings.py` imports only the standard library, pydantic,
  pydantic-settings and billing_contracts: settings are read before anything else exists.

Exit 0 when the rules hold; otherwise one line per problem and exit 1.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "billing_worker"
SETTINGS_MAY_IMPORT = ("pydantic", "pydantic_settings", "billing_contracts")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Absolute names of what a module imports when it is loaded."""
    found: set[str] = set()
    here = module if is_package else module.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and not _type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    modules: dict[str, tuple[ast.Module, bool]] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        modules[module_name(path)] = (ast.parse(path.read_text()), path.name == "__init__.py")
    edges: dict[str, set[str]] = {}
    for name, (tree, is_package) in modules.items():
        edges[name] = {
            target
            for target in module_imports(tree, name, is_package)
            if target in modules and target != name
        }
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            connect(node)
    return groups


def settings_problems() -> list[str]:
    path = ROOT / PACKAGE / "settings.py"
    imported = module_imports(ast.parse(path.read_text()), f"{PACKAGE}.settings", False)
    stdlib = sys.stdlib_module_names
    return [
        f"{PACKAGE}/settings.py imports {name}: only the standard library, "
        f"{', '.join(SETTINGS_MAY_IMPORT)} are allowed"
        for name in sorted(imported)
        if name.split(".")[0] not in stdlib
        and name.split(".")[0] not in SETTINGS_MAY_IMPORT
        and name != "__future__"
    ]


def main() -> int:
    problems = [f"import cycle: {' -> '.join(group)}" for group in cycles(graph())]
    problems += settings_problems()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
