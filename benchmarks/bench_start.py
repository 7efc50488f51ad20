"""Start-up of a run: imports, ``load_classifier`` on the bundled model, the default CLI job.

Run: ``PYTHONPATH=. python benchmarks/bench_start.py [--rounds 3] [--before /path/to/checkout]``.

Each round starts fresh interpreters for every checkout (``--before`` is an older checkout to
compare with; this one is "after"), interleaved so that a busy spell of the machine hits both
alike, and reports the median and the range over the rounds. One interpreter measures, in order:

- ``import torch, transformers``: the libraries every run needs (transformers lazily: this
  loads little of it);
- ``load_classifier(bundled)``, first call: CPU (``time.process_time``) and wall time. Most of
  it is transformers importing its model stack on first use (``modeling_utils`` pulls in
  ``torch._dynamo``, ``torch.distributed.tensor``, ``scipy.optimize`` and accelerate), which
  hf-fisher cannot avoid while it loads checkpoints with transformers;
- the determinism probe inside that call (two forward passes of 2 random inputs);
- ``load_classifier(bundled)`` again in the same process: its own work with every import done
  (config, processor and weights read, model built, probe). This is the figure the 1 s CPU
  target of issue 14 applies to;
- the modules the first call imported that a run does not need to load a model (datasets,
  evaluate, matplotlib, scikit-learn).

``--threads N`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) in every child: on a shared
machine more threads than free cores waste CPU time in their synchronisation, which swamps
every other difference. Then ``hf-fisher evaluate --out DIR --no-progress`` (the default job:
the bundled model on its 360 held-out digits) runs as a fresh process: wall time and the
child's CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time
def now():
    return time.process_time(), time.perf_counter()
def since(start):
    cpu, wall = now()
    return {"cpu": cpu - start[0], "wall": wall - start[1]}
out = {}
start = now()
import torch, transformers
out["import torch+transformers"] = since(start)
from hf_fisher.adapters import hub, load_classifier
from hf_fisher.digits import DEFAULT_MODEL_DIR
probe = {"cpu": 0.0, "wall": 0.0}
check = hub._determinism_check
def timed_check(*args, **kwargs):
    begun = now()
    try:
        return check(*args, **kwargs)
    finally:
        for key, value in since(begun).items():
            probe[key] += value
hub._determinism_check = timed_check
before = set(sys.modules)
start = now()
load_classifier(DEFAULT_MODEL_DIR)
out["load_classifier, first call"] = since(start)
out["determinism probe (first call)"] = dict(probe)
new = set(sys.modules) - before
start = now()
load_classifier(DEFAULT_MODEL_DIR)
out["load_classifier, again (imports done)"] = since(start)
unneeded = ("datasets", "evaluate", "matplotlib", "sklearn", "scipy.stats")
out["modules"] = {"imported by first call": len(new), "unneeded": sorted(set(unneeded) & new)}
print("RESULT" + json.dumps(out))
"""


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for the children, when --threads is given


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "TRANSFORMERS_VERBOSITY": "error", **THREADS}


def measure_load(tree: Path) -> dict:
    """One fresh interpreter's import / load_classifier / probe figures for ``tree``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        cwd=tree,
        env=environment(tree),
        check=True,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def measure_job(tree: Path) -> dict:
    """Wall and CPU seconds of the default CLI job (bundled model and digits) from ``tree``."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "hf_fisher", "evaluate", "--out", f"{scratch}/run"]
        cpu, wall = child_cpu(), time.perf_counter()
        subprocess.run(
            [*command, "--no-progress"],
            capture_output=True,
            cwd=tree,
            env=environment(tree),
            check=True,
        )
        return {"wall": time.perf_counter() - wall, "cpu": child_cpu() - cpu}


def spread(values: list[float]) -> str:
    """Median [min-max] of ``values``."""
    return f"{statistics.median(values):6.3f} [{min(values):.3f}-{max(values):.3f}]"


def report(runs: dict[str, list[dict]]) -> None:
    """One row per figure, one column per checkout."""
    labels = list(runs)
    print(f"{'figure (seconds)':<48}" + "".join(f"{label:>28}" for label in labels))
    first = runs[labels[0]][0]
    for name in [key for key in first if key != "modules"]:
        for unit in ("cpu", "wall"):
            cells = [spread([run[name][unit] for run in runs[label]]) for label in labels]
            print(f"{name + ', ' + unit:<48}" + "".join(f"{cell:>28}" for cell in cells))
    for label in labels:
        print(f"{label}: modules imported by the first load: {runs[label][-1]['modules']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="an older checkout to compare with")
    parser.add_argument("--no-job", action="store_true", help="skip the default CLI job")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every child")
    args = parser.parse_args()
    if args.threads is not None:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    trees = {"after": HERE} if args.before is None else {"before": args.before, "after": HERE}
    runs: dict[str, list[dict]] = {label: [] for label in trees}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for label, tree in trees.items():
            figures = measure_load(tree)
            if not args.no_job:
                figures["hf-fisher evaluate (default job)"] = measure_job(tree)
            runs[label].append(figures)
    print(
        f"{os.cpu_count()} CPUs, load average {load:.2f} -> {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} interleaved rounds, torch threads {args.threads or 'default'}; "
        "median [min-max]"
    )
    report(runs)


if __name__ == "__main__":
    main()
