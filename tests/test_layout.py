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
