"""Size limits that keep every piece of the package readable by one person (the design notes).

No module of the installed package over 500 lines, no class over 300 lines, every method
module (camssl/methods/*.py) under 200 lines; and no code outside a method tests a
method's name (methods declare what the trainer, sweeps and tables need).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import camssl

PACKAGE = Path(camssl.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_modules_and_classes_stay_small():
    too_long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert not too_long, f"modules over 500 lines: {too_long}"
    big = {}
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                big[f"{p.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not big, f"classes over 300 lines: {big}"
    methods = {p.name: n for p in (PACKAGE / "methods").glob("*.py") if (n := len(p.read_text().splitlines())) >= 200}
    assert not methods, f"method modules of 200 lines or more: {methods}"


def test_no_code_outside_the_methods_tests_a_method_name():
    from camssl.methods import METHODS

    names = "|".join(map(re.escape, METHODS))
    pattern = re.compile(rf"""method\.name\s*(==|!=|in)\s*[\[(]?\s*["']({names})["']""")
    hits = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES if "methods" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


# ---------------------------------------------------------------- dependencies and function size

ROOT = PACKAGE.parents[1]


def _module_names() -> dict[str, Path]:
    names = {}
    for p in MODULES:
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = p
    return names


def import_graph() -> dict[str, set[str]]:
    """camssl module -> the camssl modules it imports, every import counted: top-level, inside
    functions (lazy) and under ``if TYPE_CHECKING`` alike. ``from P import X`` depends on P
    (and on P.X when that is a module); ``import P.Q`` on P.Q."""
    names = _module_names()

    def known(name: str) -> str:
        while name not in names and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in names}
    for m, path in names.items():
        package = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {known(a.name) for a in node.names if a.name.startswith("camssl")}
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                if not mod.startswith("camssl"):
                    continue
                graph[m].add(known(mod))
                graph[m] |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in names}
        graph[m].discard(m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_camssl():
    found = cycles(import_graph())
    assert not found, f"import cycles (lazy and TYPE_CHECKING imports count): {found}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code of a function: its docstring, blank lines and comment lines not counted."""
    first = fn.body[0]
    doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
        and isinstance(first.value.value, str)
    skip = range(first.lineno, first.end_lineno + 1) if doc else range(0)
    return sum(1 for i in range(fn.lineno, fn.end_lineno + 1)
               if i not in skip and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def test_no_function_over_80_lines_of_code():
    long = {}
    for p in MODULES:
        text = p.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := _code_lines(node, lines)) > 80:
                long[f"{p.relative_to(PACKAGE)}:{node.name}"] = n
    assert not long, f"functions over 80 lines of code: {long}"


def test_bench_and_scripts_test_no_method_name_either():
    from camssl.methods import METHODS

    names = "|".join(map(re.escape, METHODS))
    pattern = re.compile(rf"""(method\.name|kind|key)\s*(==|!=|in)\s*[\[(]?\s*["']({names})["']""")
    files = [*(PACKAGE / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
