"""The README's setup: the commands CI runs, the CPU build of torch, and the quick test loop."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

SLOW = {
    "test_minilm.py": "*",
    "test_distributed.py": "*",
    "test_metric.py": [
        "test_num_process_convention_two_processes",
        "test_bare_name_load_offline_from_any_directory",
    ],
    "test_metric_install.py": ["test_pip_install_leaves_the_metric_loadable_by_bare_name"],
    "test_resume.py": ["test_killed_cli_run_resumes_without_loss"],
    "test_runner.py": [
        "test_black_box_is_reproducible_and_seed_dependent",
        "test_exact_run_matches_dense_ground_truth",
    ],
    "test_cli.py": ["test_readme_command_through_the_module_entry_point"],
    "test_clever.py": ["test_weibull_fit_recovers_location_of_synthetic_samples"],
    "test_report_card.py": ["test_bundled_card_round_trips_and_rerun_is_byte_identical"],
    "test_blackbox_coverage.py": [
        "test_lambda_max_interval_covers_over_spectrum_table",
        "test_trace_interval_covers_and_trace_is_unbiased",
        "test_lambda_max_median_error_within_ten_percent",
        "test_flat_spectrum_bias_is_removed",
        "test_other_confidence_levels_are_honoured",
    ],
    "test_data_files.py": ["test_the_issue_command_from_a_fresh_interpreter"],
    "test_provenance.py": ["test_model_revision_selects_the_checkpoint_and_is_recorded"],
}
"""Tests that took > ~10 s each on 2 cores (``pytest --durations``), kept out of the quick loop."""


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` command in ``text`` (``&&`` chains split)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for command in line.split("&&"):
            words = shlex.split(command, comments=True)
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def test_quick_start_is_the_two_commands_ci_runs() -> None:
    quick_start = bash_blocks(README)[0].strip().splitlines()
    assert quick_start == [
        'pip install "torch==2.13.0" -e ".[test]" && hf-fisher evaluate --out runs/digits',
        "python -m pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    (ci_install,) = pip_installs(ci)
    assert [word for word in ci_install if word != "-q"] == pip_installs(quick_start[0])[0]
    assert "\npython -m pytest\n" in ci


def test_readme_says_how_to_get_the_cpu_build_anywhere() -> None:
    commands = [words for block in bash_blocks(README) for words in pip_installs(block)]
    separate = ["torch==2.13.0", "--index-url", CPU_INDEX]
    extra = ["torch==2.13.0", "-e", ".[test]", "--extra-index-url", CPU_INDEX]
    assert separate in commands and extra in commands


def marked_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(d) == "pytest.mark.slow" for d in decorators)


def test_slow_tests_are_marked_and_the_quick_loop_is_documented() -> None:
    for name, tests in SLOW.items():
        tree = ast.parse((REPO / "tests" / name).read_text(encoding="utf-8"))
        module_mark = any(
            isinstance(node, ast.Assign)
            and ast.unparse(node.targets[0]) == "pytestmark"
            and ast.unparse(node.value) == "pytest.mark.slow"
            for node in tree.body
        )
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        if tests == "*":
            assert module_mark, name
            continue
        for test in tests:
            assert marked_slow(functions[test].decorator_list), f"{name}::{test}"
    assert 'python -m pytest -m "not slow"' in README
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'markers = ["slow:' in pyproject  # registered: a typo in the mark would warn
