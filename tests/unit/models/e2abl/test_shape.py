"""The shape a newcomer can change: a small constructor and short functions in ``models/e2abl/``."""

import ast
import inspect
from pathlib import Path

import e2abl_lightning.models.e2abl as package
from e2abl_lightning.models.e2abl import E2ABL

MAX_LINES = 60
MAX_INIT_ARGS = 10


def test_e2abl_takes_at_most_ten_arguments():
    params = [p for p in inspect.signature(E2ABL.__init__).parameters if p != "self"]
    assert len(params) <= MAX_INIT_ARGS, params


def test_no_function_in_the_e2abl_package_is_longer_than_sixty_lines():
    long = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long
