"""Start-up cost: ``import hf_fisher``, ``hf-fisher --help`` and an argument error.

Run: ``PYTHONPATH=. python benchmarks/bench_imports.py [--runs 5] [--top 8]``.

Each command runs ``--runs`` times in a fresh interpreter; the table gives the median wall time
and the median CPU time (user + system of the child, from ``resource.getrusage``), next to the
targets of issue 12: 2 s CPU for the import (metric install included), 1.5 s for the CLI. CPU
time is the figure to compare on a shared machine: wall time grows with the load, CPU time much
less. Then ``python -X importtime`` lists the slowest imports (cumulative) of each command.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cli_command() -> list[str]:
    """The installed ``hf-fisher`` script beside this interpreter (not a pyenv shim)."""
    script = Path(sys.executable).with_name("hf-fisher")
    if script.exists():
        return [str(script)]
    found = shutil.which("hf-fisher")
    return [found] if found else [sys.executable, "-m", "hf_fisher"]


def commands() -> list[tuple[str, list[str], float]]:
    """(label, argv, CPU-seconds target) of each measured command."""
    python = sys.executable
    return [
        ('python -c "import hf_fisher"', [python, "-c", "import hf_fisher"], 2.0),
        ("python -m hf_fisher --help", [python, "-m", "hf_fisher", "--help"], 1.5),
        (
            "hf-fisher evaluate --batch-size 0",
            [*cli_command(), "evaluate", "--batch-size", "0"],
            1.5,
        ),
    ]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``runs`` fresh runs, and the last exit code."""
    walls, cpus = [], []
    code = 0
    for _ in range(runs):
        cpu, wall = child_cpu(), time.perf_counter()
        code = subprocess.run(argv, capture_output=True, check=False).returncode
        walls.append(time.perf_counter() - wall)
        cpus.append(child_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus), code


def import_times(argv: list[str], top: int) -> list[tuple[float, str]]:
    """The ``top`` slowest imports of ``argv`` by cumulative time (seconds, module)."""
    python, *rest = argv
    if python != sys.executable:  # the console script: time the equivalent ``-m`` run
        rest = ["-m", "hf_fisher", *rest]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *rest], capture_output=True, text=True, check=False
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="importtime entries per command")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.runs} runs each")
    print(f"{'command':<36} {'wall s':>7} {'CPU s':>7} {'target':>7}  exit")
    for label, argv, target in commands():
        wall, cpu, code = measure(argv, args.runs)
        verdict = "ok" if cpu <= target else "OVER"
        print(f"{label:<36} {wall:>7.2f} {cpu:>7.2f} {target:>6.1f}s  {code}  {verdict}")
    for label, argv, _ in commands():
        print(f"\npython -X importtime, {label}: top {args.top} by cumulative time")
        for seconds, name in import_times(argv, args.top):
            print(f"  {seconds:7.3f} s  {name}")


if __name__ == "__main__":
    main()
