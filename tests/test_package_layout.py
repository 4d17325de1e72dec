"""The product is flo_seg, batch, streaming and schemas; the local stack (devstack) ships with none of it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("flo_seg", "batch", "streaming", "schemas")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_product_never_imports_the_local_stack() -> None:
    importers = {
        str(path.relative_to(REPO))
        for package in PRODUCT
        for path in (REPO / package).rglob("*.py")
        if any(name.split(".")[0] == "devstack" for name in imported_modules(path))
    }
    assert importers == set()


def test_the_wheel_holds_the_product_packages_only() -> None:
    """setuptools' own package discovery, with the project's include list, as `pip wheel .` runs it."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = set(find_packages(where=str(REPO), include=find["include"]))
    assert packages == set(PRODUCT)
    assert (REPO / "devstack" / "stack.py").is_file()  # so the check above would see it, were it included
