"""Label alignment: dataset label names matched to a model's id2label, given mappings, ids.

The end-to-end imagefolder runs are rows of tests/test_bad_input.py (DATA_CASES); these tests
cover the rules one by one and the Python entry points that take ``label_mapping``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import evaluate
import pytest

from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.errors import DatasetError
from hf_fisher.labels import align_labels, read_label_mapping
from hf_fisher.metric import fisher_evaluator, fisher_robustness_scores
from hf_fisher.runner import evaluate_robustness

REPO = Path(__file__).resolve().parents[1]
FASHION = {
    0: "T-shirt/top", 1: "Trouser", 2: "Pullover", 3: "Dress", 4: "Coat",
    5: "Sandal", 6: "Shirt", 7: "Sneaker", 8: "Bag", 9: "Ankle boot",
}  # fmt: skip
FOLDERS = sorted(name.replace("/", "_").replace(" ", "_") for name in FASHION.values())
"""What an imagefolder's ClassLabel holds: folder names, sorted (Ankle_boot, Bag, Coat, ...)."""


def test_folder_names_match_model_names_ignoring_case_and_punctuation() -> None:
    alignment = align_labels(FASHION, names=FOLDERS)
    assert alignment.source == "by-name"
    assert alignment.to_model == {0: 9, 1: 8, 2: 4, 3: 3, 4: 2, 5: 5, 6: 6, 7: 7, 8: 0, 9: 1}
    assert alignment.recorded["T-shirt_top"] == 0 and alignment.recorded["Ankle_boot"] == 9


def test_exact_match_wins_over_normalised_match() -> None:
    alignment = align_labels({0: "a-b", 1: "A B"}, names=["A B", "a-b"])
    assert alignment.to_model == {0: 1, 1: 0}


def test_model_names_equal_after_normalisation_need_an_exact_match() -> None:
    with pytest.raises(DatasetError, match=r"dataset labels \['ab'\] match none"):
        align_labels({0: "a-b", 1: "A B"}, names=["ab"])


def test_two_dataset_names_on_one_model_class_are_refused() -> None:
    with pytest.raises(DatasetError, match="dataset labels 'Bag' and 'bag' both match"):
        align_labels({0: "Bag", 1: "Coat"}, names=["Bag", "bag"])


def test_unmatched_names_are_listed_with_the_model_names() -> None:
    with pytest.raises(DatasetError) as error:
        align_labels(FASHION, names=[*FOLDERS[:-1], "Trousers"])
    message = str(error.value)
    assert "dataset labels ['Trousers'] match none of the model's labels ['T-shirt/top'" in message
    assert "--label-mapping" in message


def test_string_label_columns_are_matched_by_name() -> None:
    alignment = align_labels({0: "negative", 1: "positive"}, values=["POSITIVE", "Negative"])
    assert alignment.to_model == {"POSITIVE": 1, "Negative": 0}
    assert alignment.model_id("Negative") == 0
    with pytest.raises(DatasetError, match="label 'neutral' in column 'label' is not one of"):
        alignment.model_id("neutral", "label")


def test_integer_labels_without_names_are_ids() -> None:
    alignment = align_labels({0: "cat", 1: "dog"}, values=[1, 0])
    assert (alignment.source, alignment.to_model, alignment.recorded) == ("ids", None, None)
    assert alignment.model_id(1) == 1 and alignment.model_id(-1) == -1  # range-checked later


def test_generic_model_names_take_class_label_ids(caplog: pytest.LogCaptureFixture) -> None:
    generic = {i: f"LABEL_{i}" for i in range(3)}
    alignment = align_labels(generic, names=["cat", "dog", "emu"])
    assert (alignment.source, alignment.to_model) == ("ids", None)
    assert alignment.recorded == {"cat": 0, "dog": 1, "emu": 2}
    assert "labels are generic (LABEL_0, ...)" in caplog.text


def test_generic_model_names_match_integer_folder_names_by_number() -> None:
    """Folders "0".."11" sort as 0, 1, 10, 11, 2, ...: their names, not positions, are the ids."""
    generic = {i: f"LABEL_{i}" for i in range(12)}
    folders = sorted(str(i) for i in range(12))
    alignment = align_labels(generic, names=folders)
    assert alignment.source == "by-name"
    assert all(alignment.to_model[position] == int(name) for position, name in enumerate(folders))


def test_a_model_without_names_takes_class_label_ids_and_refuses_strings() -> None:
    assert align_labels({}, names=["cat", "dog"]).recorded == {"cat": 0, "dog": 1}
    with pytest.raises(DatasetError, match="the model has no label names .id2label. to match"):
        align_labels({}, values=["cat", "dog"])


def test_generic_model_names_do_not_match_string_columns() -> None:
    with pytest.raises(DatasetError, match="match none of the model's labels"):
        align_labels({0: "LABEL_0", 1: "LABEL_1"}, values=["cat", "dog"])


def test_given_mapping_goes_from_model_label_to_dataset_label_as_in_evaluate() -> None:
    alignment = align_labels(
        {0: "NEGATIVE", 1: "POSITIVE"},
        names=["neg", "pos"],
        label_mapping={"NEGATIVE": 0.0, "POSITIVE": "pos"},
    )
    assert alignment.source == "given"
    assert alignment.to_model == {0: 0, 1: 1}
    assert alignment.recorded == {"neg": 0, "pos": 1}


def test_given_mapping_completes_by_name() -> None:
    names = [*FOLDERS[:-1], "Trousers"]
    alignment = align_labels(FASHION, names=names, label_mapping={"Trouser": "Trousers"})
    assert alignment.recorded["Trousers"] == 1 and alignment.recorded["Bag"] == 8


def test_given_mapping_in_the_wrong_direction_says_so() -> None:
    with pytest.raises(DatasetError, match="'neg' is a dataset label: the mapping goes from"):
        align_labels({0: "NEGATIVE", 1: "POSITIVE"}, names=["neg", "pos"], label_mapping={"neg": 0})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"NEGATIVE": 2}, r"label_mapping\['NEGATIVE'\] = 2 is outside the dataset's ClassLabel"),
        ({"NEGATIVE": "bad"}, r"label_mapping\['NEGATIVE'\] = 'bad' is not one of the dataset's"),
        ({"NEGATIVE": 0, "POSITIVE": "neg"}, "sends both 'NEGATIVE' and 'POSITIVE' to the"),
        ({"NEGATIVE": [0]}, "values are the dataset's labels, as integer ids or names"),
        ({}, "must be a non-empty dict"),
    ],
    ids=["out-of-range", "unknown-name", "two-to-one", "bad-value", "empty"],
)
def test_bad_given_mappings_are_refused(mapping: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        align_labels({0: "NEGATIVE", 1: "POSITIVE"}, names=["neg", "pos"], label_mapping=mapping)


def test_given_mapping_targets_must_fit_the_label_kind() -> None:
    with pytest.raises(DatasetError, match="the dataset's labels are integers, so map to an"):
        align_labels({0: "a", 1: "b"}, values=[0, 1], label_mapping={"a": "x"})
    with pytest.raises(DatasetError, match=r"the dataset's labels are names \['x', 'y'\]"):
        align_labels({0: "a", 1: "b"}, values=["x", "y"], label_mapping={"a": 0})
    partial = align_labels({0: "a", 1: "b"}, values=["x"], label_mapping={"a": "x", "b": "z"})
    assert partial.to_model == {"x": 0, "z": 1}  # "z" is a label this batch does not hold


def test_given_mapping_must_cover_integer_labels() -> None:
    with pytest.raises(DatasetError, match=r"integer labels \['2'\] are not in label_mapping"):
        align_labels({0: "a", 1: "b", 2: "c"}, values=[0, 1, 2], label_mapping={"a": 1, "b": 0})


def test_read_label_mapping_from_json_text_and_file(tmp_path: Path) -> None:
    assert read_label_mapping('{"Bag": 3}') == {"Bag": 3}
    (tmp_path / "m.json").write_text('{"Bag": "bag"}')
    assert read_label_mapping(str(tmp_path / "m.json")) == {"Bag": "bag"}
    with pytest.raises(DatasetError, match="neither a JSON object nor an existing .json file"):
        read_label_mapping(str(tmp_path / "missing.json"))
    with pytest.raises(DatasetError, match="--label-mapping is not valid JSON"):
        read_label_mapping('{"Bag": }')
    with pytest.raises(DatasetError, match="must be a non-empty dict from the model's label"):
        read_label_mapping('[["Bag", 1]]')
    with pytest.raises(DatasetError, match="keys are the model's label names"):
        align_labels({0: "a"}, names=["a"], label_mapping={0: "a"})


# --- the Python entry points: runner, metric, evaluator -------------------------------------


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits ResNet with its classes renamed to Fashion-MNIST's (same weights)."""
    model = tmp_path_factory.mktemp("fashion") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in FASHION.items()}
    config["label2id"] = {name: i for i, name in FASHION.items()}
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return load_digits_dataset("test").select(range(12))


def folder_ids(labels: list[int]) -> list[int]:
    """The ids an imagefolder named by class would give these model ids (sorted folder order)."""
    folder_of = {i: name.replace("/", "_").replace(" ", "_") for i, name in FASHION.items()}
    return [FOLDERS.index(folder_of[label]) for label in labels]


def test_runner_maps_class_label_names(fashion_model: Path, digits: datasets.Dataset) -> None:
    named = digits.cast_column("label", datasets.Value("int64"))
    named = named.map(lambda row: {"label": folder_ids([row["label"]])[0]})
    named = named.cast_column("label", datasets.ClassLabel(names=FOLDERS))
    report = evaluate_robustness(str(fashion_model), named, progress=False)
    direct = evaluate_robustness(str(fashion_model), digits.remove_columns("label"), progress=False)
    assert [r["label"] for r in report.per_sample] == digits["label"]
    assert [r["predicted"] for r in report.per_sample] == [
        r["predicted"] for r in direct.per_sample
    ]
    assert report.results["dataset"]["label_mapping_source"] == "by-name"


def test_label_mapping_without_a_label_column_is_refused(digits: datasets.Dataset) -> None:
    with pytest.raises(DatasetError, match="label_mapping was given, but the dataset has no label"):
        evaluate_robustness(
            dataset=digits.remove_columns("label"), label_mapping={"0": 0}, progress=False
        )


def test_metric_and_evaluator_take_label_mapping(
    fashion_model: Path, digits: datasets.Dataset
) -> None:
    """References in a dataset's own ids are mapped like evaluate's evaluators map them."""
    mapping = {
        FASHION[i]: FOLDERS.index(FASHION[i].replace("/", "_").replace(" ", "_")) for i in FASHION
    }
    references = folder_ids(digits["label"])
    truth = fisher_robustness_scores(str(fashion_model), digits["image"], digits["label"])
    mapped = fisher_robustness_scores(
        str(fashion_model), digits["image"], references, label_mapping=mapping
    )
    unmapped = fisher_robustness_scores(str(fashion_model), digits["image"], references)
    assert mapped == truth and truth["accuracy"] > 0.9
    assert unmapped["accuracy"] < 0.5  # the silent misalignment label_mapping is there to fix
    fisher = evaluate.load(str(REPO / "metrics" / "fisher_robustness"))
    loaded = fisher.compute(
        model=str(fashion_model), inputs=digits["image"], references=references,
        label_mapping=mapping,
    )  # fmt: skip
    assert loaded == truth
    data = datasets.Dataset.from_dict({"image": digits["image"], "label": references})
    wrapped = fisher_evaluator("image-classification").compute(
        str(fashion_model), data, label_mapping=mapping
    )
    assert wrapped == truth
