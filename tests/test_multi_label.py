"""Multi-label classifiers end to end: a label column of lists, from a save_pretrained directory.

The bernoulli Fisher itself is checked against dense truth in the case table (model
"bert-multilabel" in ``hf_fisher/testing/cases.py``); here: the three ways datasets hold
multi-label rows (lists of ``ClassLabel`` names, lists of strings, multi-hot vectors) give the
same class sets, and ``correct`` is an exact match with the classes whose sigmoid exceeds 1/2.
"""

import json
import subprocess
import sys

import datasets
import pytest
import torch

from hf_fisher import load_classifier
from hf_fisher.errors import DatasetError
from hf_fisher.labels import label_set
from hf_fisher.results import validate_results
from hf_fisher.runner import evaluate_robustness
from hf_fisher.testing.models import build_bert

TEXTS = ["a fine film", "awful", "the plot was slow", "great music, great cast"]
NAMES = ["action", "comedy", "drama"]  # the model's id2label
SETS = [[2], [0, 1], [], [0, 2]]  # class ids of each row


@pytest.fixture(scope="module")
def multi_label_dir(tmp_path_factory):
    from transformers import AutoConfig

    directory = tmp_path_factory.mktemp("multi")
    build_bert(directory, problem_type="multi_label_classification")
    config = AutoConfig.from_pretrained(directory)
    config.id2label = dict(enumerate(NAMES))
    config.label2id = {name: index for index, name in enumerate(NAMES)}
    config.save_pretrained(directory)
    return directory


def _columns():
    """The same label sets as ClassLabel-name lists (in another order), strings, multi-hot."""
    shuffled = [NAMES[2], NAMES[0], NAMES[1]]
    names = datasets.Sequence(datasets.ClassLabel(names=shuffled))
    return {
        "classlabel": (names, [[shuffled.index(NAMES[i]) for i in row] for row in SETS]),
        "strings": (None, [[NAMES[i] for i in row] for row in SETS]),
        "multi-hot": (None, [[float(i in row) for i in range(3)] for row in SETS]),
    }


def test_label_set_reads_multi_hot_vectors_and_class_ids():
    assert label_set([0, 1, 1], 3, multi_hot=True) == [1, 2]
    assert label_set([1, 0, 1], 3, multi_hot=False) == [0, 1]  # names mapped to ids, not bits
    assert label_set([2, 0, 2], 3, multi_hot=True) == [0, 2]
    with pytest.raises(DatasetError, match="holds \\[0.5\\]: pass class names, class ids"):
        label_set([0.5, 1.0], 3, multi_hot=True)


@pytest.mark.parametrize("kind", list(_columns()))
def test_list_labels_become_class_sets_and_exact_match_accuracy(multi_label_dir, kind):
    feature, labels = _columns()[kind]
    features = None
    if feature is not None:
        features = datasets.Features({"text": datasets.Value("string"), "labels": feature})
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "labels": labels}, features=features)
    report = evaluate_robustness(multi_label_dir, dataset, progress=False)
    results = validate_results(report.results)
    classifier = load_classifier(multi_label_dir)
    with torch.no_grad():
        batch = classifier.prepare(TEXTS)
        probabilities = torch.sigmoid(classifier(batch.inputs, **batch.context))
    for row, expected, probs in zip(results["per_sample"], SETS, probabilities, strict=True):
        assert row["label"] == expected
        assert row["predicted"] == (probs > 0.5).nonzero().flatten().tolist()
        assert row["correct"] == (row["predicted"] == expected)
    summary = results["summary"]
    assert summary["accuracy"] == pytest.approx(
        sum(row["correct"] for row in results["per_sample"]) / len(TEXTS)
    )
    assert summary["by_class"]["0"]["num_samples"] == 2  # rows 1 and 3 hold class 0
    # recorded, so that the leaderboard ranks multi-label runs apart from softmax ones
    assert results["settings"]["likelihood"] == "bernoulli"


def test_list_labels_for_a_single_label_model_are_refused(bert_dir):
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "labels": [[0], [1], [2], [0]]})
    with pytest.raises(DatasetError, match="lists of labels .* but the model is single-label"):
        evaluate_robustness(bert_dir, dataset, progress=False)


@pytest.mark.slow
def test_cli_evaluates_a_multi_label_directory_on_a_saved_dataset(multi_label_dir, tmp_path):
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "labels": _columns()["strings"][1]})
    datasets.DatasetDict({"test": dataset}).save_to_disk(tmp_path / "data")
    command = [
        sys.executable, "-m", "hf_fisher", "evaluate", str(multi_label_dir),
        "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    results = validate_results(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert [row["label"] for row in results["per_sample"]] == SETS
    assert results["dataset"]["label_mapping_source"] == "by-name"
    table = (tmp_path / "out" / "per_sample.csv").read_text()
    assert "[0, 1]" in table  # a multi-label row's classes, as a list
