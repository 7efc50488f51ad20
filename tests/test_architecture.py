"""Dependency rules of the package, checked on the source so that they cannot regress.

Measurements compute; reports render. ``hf_fisher/report`` may import the measurement modules
(its section renderers read their constants), never the other way round: a measurement module
that imports the report drags matplotlib, Hub and card code into every computation and creates
import cycles (``report/plots.py`` names the section renderers by dotted string).
"""

import ast
from pathlib import Path

import pytest

from hf_fisher.report.plots import REPORT_REGISTRY

PACKAGE = Path(__file__).resolve().parents[1] / "hf_fisher"
REPORT = "hf_fisher.report"
# The command line is the one surface that wires every part of the package together: cli.py
# registers the report's subcommands (hf-fisher card / leaderboard / submit) and draws the
# frequency comparison; __main__.py only runs cli.main. Neither is imported by a measurement.
EXEMPT = {"hf_fisher/cli.py", "hf_fisher/__main__.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_report(name: str) -> bool:
    return name == REPORT or name.startswith(REPORT + ".") or name.startswith(REPORT + ":")


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *ast.walk(tree)]
    owners = [n for n in nodes if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
    return {
        id(owner.body[0].value)
        for owner in owners
        if owner.body
        and isinstance(owner.body[0], ast.Expr)
        and isinstance(owner.body[0].value, ast.Constant)
    }


def report_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every way ``source`` (module ``module``) reaches hf_fisher.report, as readable strings.

    Covers ``import``, ``from ... import`` (absolute or relative, at module level or inside a
    function) and string literals naming a report module (``importlib.import_module``, dotted
    ``"module:function"`` registries); docstrings are prose, not imports.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _is_report(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            if any(_is_report(t) for t in targets):
                found.append(f"from {'.' * node.level}{node.module or ''} import ...")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _is_report(node.value)
        ):
            found.append(f"string {node.value!r}")
    return found


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if relative.startswith("hf_fisher/report/") or relative in EXEMPT:
            continue
        yield relative, path


def test_no_module_outside_report_imports_report():
    offenders = {}
    for relative, path in _sources():
        found = report_imports(
            path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"
        )
        if found:
            offenders[relative] = found
    assert not offenders, (
        f"modules outside hf_fisher/report import it: {offenders}; move the rendering into "
        "hf_fisher/report/sections/ (measurements return data with to_json(), reports render it)"
    )
    assert len(list(_sources())) > 30  # the walk really covers the package


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import hf_fisher.report.card", "hf_fisher.noise", False, 1),
        ("from hf_fisher.report.badge import format_sig", "hf_fisher.noise", False, 1),
        ("from hf_fisher import report", "hf_fisher.noise", False, 1),
        ("def f():\n    from hf_fisher.report import card", "hf_fisher.noise", False, 1),
        ("from .report.card import md_escape", "hf_fisher.noise", False, 1),
        ("from . import report", "hf_fisher.noise", False, 1),
        ("from ..report import plots", "hf_fisher.attacks.gradient", False, 1),
        ("from .report import x", "hf_fisher.attacks", True, 0),  # hf_fisher.attacks.report
        ("from .cross_check import x", "hf_fisher.attacks", True, 0),
        ("import_module('hf_fisher.report.card')", "hf_fisher.noise", False, 1),
        ("X = 'hf_fisher.report.sections.attacks:card_attacks'", "hf_fisher.noise", False, 1),
        ('"""See hf_fisher.report.sections.frequency."""', "hf_fisher.frequency", False, 0),
        ("import hf_fisher.reporting", "hf_fisher.noise", False, 0),
        ("from hf_fisher.attacks import pgd", "hf_fisher.noise", False, 0),
    ],
)
def test_the_checker_sees_every_kind_of_import(source, module, is_package, expected):
    assert len(report_imports(source, module, is_package)) == expected


def test_registry_names_only_section_renderers():
    """Plots and card subsections of the measurements live in report/sections, nowhere else."""
    for section, entry in REPORT_REGISTRY.items():
        for dotted in (entry.plotter, entry.card):
            module = dotted.partition(":")[0]
            assert module.startswith("hf_fisher.report.sections."), (section, dotted)
            assert (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file()


MAX_COMPLEXITY = 15
MAX_CODE_LINES = 80  # lines of a function's body, its docstring excluded
# (module, function) -> why it may exceed the limits; empty means every function fits.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _function_sizes(path: Path) -> dict[str, int]:
    """Lines of code of every function in a module, docstrings excluded."""
    sizes = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if ast.get_docstring(node, clean=False) is not None:
                lines -= first.end_lineno - first.lineno + 1
            sizes[node.name] = max(lines, sizes.get(node.name, 0))
    return sizes


def test_no_function_is_too_complex_or_too_long():
    """Every function in hf_fisher/ stays small: radon complexity <= 15, <= 80 lines of code."""
    from radon.complexity import cc_visit

    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        sizes = _function_sizes(path)
        for block in cc_visit(path.read_text(encoding="utf-8")):
            if block.complexity > MAX_COMPLEXITY and (module, block.name) not in EXCEPTIONS:
                too_big.append(f"{module}:{block.name} has complexity {block.complexity}")
        for name, lines in sizes.items():
            if lines > MAX_CODE_LINES and (module, name) not in EXCEPTIONS:
                too_big.append(f"{module}:{name} has {lines} lines of code")
    assert not too_big, "split these into named helpers:\n" + "\n".join(too_big)
