"""``--streaming`` and the prefetch thread: the same records as an in-memory, inline run.

The data are the bundled model's own digits, written the ways users keep images: a class-name
imagefolder and a parquet file. The model is the bundled digits ResNet with its classes named
"zero".."nine", so labels are matched by name and the folders' sorted order is not id order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

import hf_fisher.spectrum as spectrum_module
from hf_fisher.cli import main
from hf_fisher.companions import CompanionOptions
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.prefetch import WaitClock, prefetched, shard_of_stream, stream_batches
from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness
from hf_fisher.testing import tolerance_for

REPO = Path(__file__).resolve().parents[1]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COUNT = 14  # rows written
TAKEN = 10  # rows a streamed run takes (--num-samples)
BATCH = 4
RTOL = tolerance_for(torch.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The renamed model, a class-name imagefolder and a parquet file of the same digits."""
    root = tmp_path_factory.mktemp("streaming")
    model = root / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(NAMES)}
    config["label2id"] = {name: i for i, name in enumerate(NAMES)}
    (model / "config.json").write_text(json.dumps(config))
    rows = load_digits_dataset("test").select(range(COUNT))
    folder = root / "folder"
    for position, (image, digit) in enumerate(zip(rows["image"], rows["label"], strict=True)):
        (folder / NAMES[digit]).mkdir(parents=True, exist_ok=True)
        image.save(folder / NAMES[digit] / f"{position:02d}.png")
    named = datasets.Dataset.from_dict(
        {"image": rows["image"], "label": [NAMES[d] for d in rows["label"]]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    parquet = root / "digits.parquet"
    named.to_parquet(str(parquet))
    return SimpleNamespace(root=root, model=model, folder=folder, parquet=parquet)


def _cli(*args) -> dict:
    """``hf-fisher evaluate`` in-process into ``--out`` (the last argument); its results."""
    assert main(["evaluate", "--no-progress", "--batch-size", str(BATCH), *map(str, args)]) == 0
    return load_results(args[-1])


def _assert_same_rows(streamed: dict, full: dict) -> None:
    """The streamed run's records are the in-memory run's first rows, to float32 rounding."""
    records = full["per_sample"][: len(streamed["per_sample"])]
    assert len(streamed["per_sample"]) == TAKEN
    for key in ("index", "label", "predicted", "correct"):
        assert [r[key] for r in streamed["per_sample"]] == [r[key] for r in records], key
    for key in ("spectral_norm", "trace", "probability"):
        expected = [r[key] for r in records]
        assert [r[key] for r in streamed["per_sample"]] == pytest.approx(expected, rel=RTOL), key
    accuracy = sum(r["correct"] for r in records) / len(records)
    assert streamed["summary"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy > 0.8  # the real model on real digits: misaligned labels give ~0.1


@pytest.fixture(scope="module")
def folder_runs(data: SimpleNamespace) -> SimpleNamespace:
    """The imagefolder read whole in memory, and streamed (its first TAKEN rows)."""
    common = (data.model, "--dataset", data.folder, "--split", "train")
    full = _cli(*common, "--out", data.root / "full")
    streamed = _cli(*common, "--streaming", "--num-samples", TAKEN, "--out", data.root / "stream")
    return SimpleNamespace(full=full, streamed=streamed)


def test_streamed_imagefolder_matches_the_in_memory_run(folder_runs: SimpleNamespace) -> None:
    streamed, full = folder_runs.streamed, folder_runs.full
    _assert_same_rows(streamed, full)
    dataset = streamed["dataset"]
    assert dataset["streaming"] is True and dataset["sampling"] == "first-rows"
    assert dataset["indices"] == list(range(TAKEN))  # stream positions
    assert dataset["num_rows"] == COUNT  # the imagefolder's metadata counts its files
    assert "streaming" not in full["dataset"]
    # The ClassLabel names come from the stream's features: the same mapping, by name.
    assert dataset["label_mapping"] == full["dataset"]["label_mapping"]
    assert dataset["label_mapping_source"] == "by-name"
    assert all(NAMES[model_id] == name for name, model_id in dataset["label_mapping"].items())


@pytest.mark.slow
def test_streamed_parquet_through_the_command_line_matches(
    data: SimpleNamespace, tmp_path: Path
) -> None:
    out = tmp_path / "stream"
    command = [sys.executable, "-m", "hf_fisher", "evaluate", "--no-progress"]
    command += [str(data.model), "--dataset", str(data.parquet), "--streaming"]
    command += ["--num-samples", str(TAKEN), "--batch-size", str(BATCH), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    streamed = load_results(out)
    full = _cli(data.model, "--dataset", data.parquet, "--out", tmp_path / "full")
    _assert_same_rows(streamed, full)
    # String labels (no ClassLabel): the stream's label column is read over the rows taken.
    seen = {NAMES[r["label"]] for r in streamed["per_sample"]}
    assert set(streamed["dataset"]["label_mapping"]) == seen
    assert streamed["dataset"]["label_mapping"].items() <= full["dataset"]["label_mapping"].items()
    assert streamed["dataset"]["num_rows"] == TAKEN  # parquet states no count: the rows read


class Interrupted(Exception):
    """Stands in for a kill after some batches."""


class Counting:
    """Wraps ``spectrum_of_batch``: records the sample ids computed; fails after N batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.ids: list[int] = []
        self.batches = 0
        self.original = spectrum_module.spectrum_of_batch

    def __call__(self, *args, **kwargs):
        if self.batches == self.fail_after:
            raise Interrupted
        self.batches += 1
        self.ids += list(kwargs["sample_ids"])
        return self.original(*args, **kwargs)


def test_killed_streamed_run_resumes_by_position(
    data: SimpleNamespace, folder_runs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = data.root / "resumed"
    options = dict(split="train", streaming=True, num_samples=TAKEN, batch_size=BATCH)
    options.update(progress=False, out_dir=out)
    with monkeypatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", Counting(fail_after=1))
        with pytest.raises(Interrupted):
            evaluate_robustness(str(data.model), str(data.folder), **options)
    lines = (out / "partial" / "records-0.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(BATCH))
    counting = Counting()
    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", counting)
    resumed = evaluate_robustness(str(data.model), str(data.folder), resume=True, **options)
    assert counting.ids == list(range(BATCH, TAKEN))  # only the missing positions
    assert resumed.results["dataset"] == folder_runs.streamed["dataset"]
    assert resumed.per_sample == folder_runs.streamed["per_sample"]  # the same batches


def test_prefetch_gives_identical_records_streamed_and_in_memory(
    data: SimpleNamespace, folder_runs: SimpleNamespace
) -> None:
    inline = _cli(
        *(data.model, "--dataset", data.folder, "--split", "train", "--streaming"),
        *("--num-samples", TAKEN, "--prefetch", 0, "--out", data.root / "inline"),
    )
    assert inline["per_sample"] == folder_runs.streamed["per_sample"]  # bit for bit
    assert inline["environment"]["fisher_loop"]["prefetch"] == 0
    assert folder_runs.streamed["environment"]["fisher_loop"]["prefetch"] == 2
    options = dict(num_samples=6, batch_size=2, progress=False)
    ahead = evaluate_robustness(prefetch=3, **options).per_sample
    assert evaluate_robustness(prefetch=0, **options).per_sample == ahead


def test_data_wait_is_recorded_as_a_fraction_of_the_loop(folder_runs: SimpleNamespace) -> None:
    for results in (folder_runs.full, folder_runs.streamed):  # load_results checked the schema
        loop = results["environment"]["fisher_loop"]
        assert (
            0 <= loop["data_wait_s"] <= loop["wall_time_s"] <= results["environment"]["wall_time_s"]
        )
        assert 0 <= loop["data_wait_fraction"] <= 1
        assert loop["data_wait_fraction"] == pytest.approx(
            loop["data_wait_s"] / loop["wall_time_s"]
        )


def test_companions_read_the_first_rows_of_the_stream(data: SimpleNamespace) -> None:
    """Companions need their rows again after the Fisher pass: a stream is read up to them."""
    companions = CompanionOptions(kl_check=True, num_samples=3)
    options = dict(split="train", progress=False, companions=companions)
    streamed = evaluate_robustness(str(data.model), str(data.folder), streaming=True, **options)
    full = evaluate_robustness(str(data.model), str(data.folder), **options)
    assert streamed.results["kl_check"]["sample_indices"] == [0, 1, 2]
    assert streamed.results["kl_check"] == full.results["kl_check"]


@pytest.mark.slow
def test_two_processes_stream_the_single_process_rows(tmp_path: Path) -> None:
    """torchrun + gloo: each process keeps positions ``i % 2 == rank``; nothing lost or twice."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hf_fisher", "evaluate", "--streaming", "--num-samples", "7", "--batch-size", "2",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    many = load_results(out)
    one = evaluate_robustness(streaming=True, num_samples=7, batch_size=3, progress=False)
    assert many["environment"]["num_processes"] == 2
    assert many["dataset"]["indices"] == one.results["dataset"]["indices"] == list(range(7))
    for key in ("index", "label", "predicted"):
        assert [r[key] for r in many["per_sample"]] == [r[key] for r in one.per_sample]
    expected = [r["spectral_norm"] for r in one.per_sample]
    assert [r["spectral_norm"] for r in many["per_sample"]] == pytest.approx(expected, rel=RTOL)


# --- the prefetch machinery on its own ------------------------------------------------------


def test_prefetched_keeps_order_and_raises_the_producers_error_in_place() -> None:
    def items():
        yield from range(5)
        raise KeyError("row 5")

    seen = []
    with pytest.raises(KeyError, match="row 5"):
        for item in prefetched(items(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_a_prefetch_stops_its_thread() -> None:
    produced = []

    def endless():
        count = 0
        while True:
            produced.append(count)
            yield count
            count += 1

    before = threading.active_count()
    items = prefetched(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 1  # bounded: never more than depth ahead (+ one in hand)


def test_wait_clock_counts_a_slow_producer_not_the_consumer() -> None:
    def slow(count: int, pause: float):
        for item in range(count):
            time.sleep(pause)
            yield item

    clock = WaitClock()
    for _ in clock.timed(slow(4, 0.02)):
        pass
    assert clock.waited_s >= 4 * 0.02  # sleep lasts at least its time
    assert clock.waited_s <= clock.loop_s and clock.fraction <= 1
    busy = WaitClock()
    for _ in busy.timed(range(3)):
        time.sleep(0.02)  # the consumer's own work is loop time, not waiting
    assert busy.loop_s >= 3 * 0.02 and busy.waited_s < busy.loop_s
    assert WaitClock().fraction is None  # nothing was pending


def test_stream_shards_cover_every_pending_position_once() -> None:
    done = {2, 5}
    shards = [
        [p for p, _ in sum(stream_batches(enumerate(range(11)), keep, 9, 2), [])]
        for keep in (shard_of_stream(3, rank, done) for rank in range(3))
    ]
    assert sorted(sum(shards, [])) == [p for p in range(9) if p not in done]
    assert shards[1] == [1, 4, 7]
