"""House rules a reader relies on, checked on the source (AST, no imports):
- product code never imports from tests/ (nor loads it by path);
- product modules stay under ~400 lines, operator functions under ~80."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("operator/stoker", "worker/stoker", "common/stoker", "devcluster/stoker")
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
MAX_MODULE_LINES = 400
MAX_OPERATOR_FUNCTION_LINES = 80


def product_modules() -> list[Path]:
    return sorted(p for root in PRODUCT for p in (REPO / root).rglob("*.py") if not p.name.endswith(GENERATED))


def test_there_is_product_code_to_check():
    assert len(product_modules()) > 50


@pytest.mark.parametrize("path", product_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_product_module_imports_from_tests(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        assert not [n for n in names if n == "tests" or n.startswith("tests.")], \
            f"{path.relative_to(REPO)}:{node.lineno} imports from tests/"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # loading a test file by path (importlib.util.spec_from_file_location("tests/...")) counts too
            assert "tests/" not in node.value or not node.value.rstrip().endswith(".py"), \
                f"{path.relative_to(REPO)}:{node.lineno} refers to a file under tests/: {node.value!r}"


def test_product_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for p in product_modules()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by what they do): {big}"


def test_operator_functions_stay_short():
    long = {}
    for p in (REPO / "operator" / "stoker" / "operator").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_OPERATOR_FUNCTION_LINES:
                    long[f"{p.relative_to(REPO)}:{node.name}"] = n
    assert not long, f"operator functions over {MAX_OPERATOR_FUNCTION_LINES} lines (name their steps): {long}"
