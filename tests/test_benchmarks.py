"""The benchmarks' shared timing helper and a smoke run of bench_scale at a tiny size.

Speed figures are not asserted here (they depend on the machine): the helper is driven by a
fake clock, so its interleaving order, medians and spreads are checked exactly.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # bench scripts import _timing as a sibling
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


timing = _load("_timing")


class FakeClock:
    """Time advances only when a callable 'runs': by its scripted duration for that call."""

    def __init__(self, durations: dict[str, list[float]]):
        self.now = 0.0
        self.durations = {label: list(values) for label, values in durations.items()}
        self.order: list[str] = []

    def __call__(self) -> float:
        return self.now

    def callable_for(self, label: str):
        def run():
            self.order.append(label)
            self.now += self.durations[label].pop(0)

        return run


def test_interleave_runs_round_robin_after_warmup_and_reports_median_and_range():
    durations = {"a": [100.0, 3.0, 1.0, 2.0], "b": [100.0, 10.0, 30.0, 20.0], "c": [9.0] * 4}
    clock = FakeClock(durations)
    result = timing.interleave(
        {label: clock.callable_for(label) for label in "abc"}, rounds=3, warmup=1, clock=clock
    )
    # warm-up a b c, then each round starts one label later: a b c, b c a, c a b
    assert clock.order == list("abc" + "abc" + "bca" + "cab")
    assert list(result) == ["a", "b", "c"]
    a, b, c = result["a"], result["b"], result["c"]
    assert a.samples == (3.0, 1.0, 2.0)  # the warm-up's 100 is not timed
    assert (a.median, a.low, a.high) == (2.0, 1.0, 3.0)
    assert (b.median, b.low, b.high) == (20.0, 10.0, 30.0)
    assert b.relative_spread == pytest.approx(1.0)
    assert c.relative_spread == 0.0


def test_interleave_without_warmup_times_every_call_and_rejects_zero_rounds():
    clock = FakeClock({"only": [5.0, 7.0]})
    result = timing.interleave({"only": clock.callable_for("only")}, rounds=2, warmup=0,
                               clock=clock)  # fmt: skip
    assert result["only"].samples == (5.0, 7.0)
    assert result["only"].median == 6.0
    with pytest.raises(ValueError, match="rounds=0"):
        timing.interleave({"only": lambda: None}, rounds=0)


def test_peak_rss_delta_sees_memory_touched_inside_the_call_only():
    size = 64 * 2**20
    held = []

    def allocate():
        held.append(b"\x01" * size)  # written bytes: resident, not lazily mapped zero pages

    used, how = timing.peak_rss_delta(allocate)
    assert used >= 0.9 * size, (used, how)
    idle, _ = timing.peak_rss_delta(lambda: None)  # the 64 MiB above is live but not new
    assert idle < size / 4, idle
    held.clear()


def test_run_child_returns_the_last_json_line_and_reports_failures():
    assert timing.run_child(["-c", "print('noise'); print('{\"bytes\": 3}')"]) == {"bytes": 3}
    with pytest.raises(RuntimeError, match="boom"):
        timing.run_child(["-c", "raise SystemExit('boom')"])


def _row_values(output: str, section: str, label: str) -> list[str]:
    block = output.split(section, 1)[1].split("\n## ", 1)[0]
    line = next(line for line in block.splitlines() if line.startswith(label))
    return line[len(label) :].split()


def test_bench_scale_quick_smoke_run_reports_costs_and_accurate_lambda(capsys):
    bench_scale = _load("bench_scale")
    bench_scale.main(
        ["--quick", "--model", "resnet", "--batch", "2", "--rounds", "1", "--warmup", "0",
         "--no-memory", "--accuracy-batch", "2", "--threads", "1"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert "## cost: resnet (quick)" in output and "EXTRAPOLATED" in output
    cost = _row_values(output, "## cost", "auto")
    assert cost[0] == "lanczos"  # auto picks Lanczos at K=100
    mean, maximum = cost[4].split("/")  # Lanczos iterations over the batch
    assert 1 <= float(mean) <= int(maximum) <= 100
    assert int(cost[5]) == int(maximum)  # batched products: the batch waits for its slowest
    accuracy = _row_values(output, "## accuracy", "auto")
    assert float(accuracy[0]) <= 1e-3  # lambda_max within tol of exact
    covered, total = map(int, accuracy[-1].split("/"))
    assert total == 2 and 0 <= covered <= 2
    assert re.search(r"rounds after 0 warm-up", output)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "auto,nope"], "unknown --rows nope"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--warmup", "-1"], "--warmup must be at least 0"),
        (["--device", "cuda", "--clock", "cpu"], "--clock cpu does not see GPU time"),
    ],
)
def test_bench_scale_refuses_bad_arguments_before_building_anything(argv, message, capsys):
    bench_scale = _load("bench_scale")
    with pytest.raises(SystemExit):
        bench_scale.parse_args(argv)
    assert message in capsys.readouterr().err
