"""The package's layers import only downward (docs/architecture.md): a lower layer that
imports a higher one fails here, naming the file, the line and the import."""
import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mace"

# Lowest first. A layer may import itself and any layer of a lower rank; layers of the
# same rank (cli, calculators) may not import each other. ``tools`` is upstream's face:
# it re-exports, and nothing of ours imports it.
LAYERS = {"core": 0, "data": 1, "modules": 2, "adapters": 3, "training": 4, "calculators": 5, "cli": 5, "tools": 6}


def layer_of_module(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """(line, module) of every import of ``mace.*`` anywhere in the file, functions included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if alias.name.startswith("mace."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mace":
                yield from ((node.lineno, f"mace.{alias.name}") for alias in node.names)
            elif node.module.startswith("mace."):
                yield node.lineno, node.module


def upward_imports(path: Path, root: Path = PACKAGE) -> List[str]:
    parts = path.relative_to(root).parts
    own = parts[0] if len(parts) > 1 else ""
    if own not in LAYERS:
        return []
    problems = []
    for line, module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
        target = layer_of_module(module)
        if target != own and target in LAYERS and LAYERS[target] >= LAYERS[own]:
            problems.append(f"{path.relative_to(root.parent)}:{line} ({own}) imports {module} ({target})")
    return problems


def test_every_file_of_the_package_is_in_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_layers_import_only_downward() -> None:
    problems = [problem for path in sorted(PACKAGE.rglob("*.py")) for problem in upward_imports(path)]
    assert problems == []


def test_the_check_sees_an_upward_import_even_inside_a_function(tmp_path: Path) -> None:
    bad = tmp_path / "mace" / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import mace.core.errors\n\ndef f():\n    from mace.cli.arg_parser import parse_args\n")
    assert upward_imports(bad, root=tmp_path / "mace") == [
        "mace/data/bad.py:4 (data) imports mace.cli.arg_parser (cli)"
    ]


@pytest.mark.parametrize("name", ["core", "data", "modules", "adapters", "training"])
def test_no_layer_below_the_command_line_reads_argparse(name: str) -> None:
    """Functions below cli take values and small dataclasses, never the argparse Namespace."""
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in (PACKAGE / name).rglob("*.py") if "argparse" in p.read_text()]
    assert offenders == []
