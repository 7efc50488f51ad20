import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import parse_eval_result_entries

from hf_fisher.report import eval_results
from hf_fisher.report.results_io import load_reportable_results

FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"


@pytest.fixture(scope="module")
def results():
    return load_reportable_results(FIXTURE)


def test_eval_results_file_round_trips(tmp_path, results):
    entries = eval_results.build_eval_result_entries(results)
    path = eval_results.write_eval_results(results, tmp_path)
    assert path == tmp_path / ".eval_results" / "hf-fisher.yaml"
    assert eval_results.read_eval_results(path) == entries
    raw = yaml.safe_load(path.read_text())
    assert parse_eval_result_entries(raw) == entries
    by_task = {e.task_id: e for e in entries}
    assert set(by_task) == {
        "fisher_robustness/kl_radius",
        "fisher_robustness/spectral_norm",
        "fisher_robustness/trace",
    }
    kl = by_task["fisher_robustness/kl_radius"]
    assert kl.value == results["summary"]["metrics"]["kl_radius"]["median"]
    assert kl.dataset_id == "sklearn-digits" and kl.date == results["created"]
    assert "estimator=exact" in kl.notes and "40 samples" in kl.notes
    assert raw[0]["source"] == {"url": eval_results.SOURCE_URL, "name": "hf-fisher"}


def test_numpy_values_become_plain_floats_and_nan_is_dropped(results):
    data = copy.deepcopy(results)
    data["summary"]["metrics"]["kl_radius"]["median"] = np.float64(0.25)
    data["summary"]["metrics"]["trace"]["median"] = float("nan")
    text = eval_results.eval_results_yaml(data)
    assert "!!" not in text
    entries = parse_eval_result_entries(yaml.safe_load(text))
    assert [e.task_id.split("/")[1] for e in entries] == ["kl_radius", "spectral_norm"]
    assert type(entries[0].value) is float and entries[0].value == 0.25
    model_index = eval_results.build_eval_results(data)
    assert [r.metric_config for r in model_index] == ["kl_radius", "spectral_norm"]
    assert all(type(r.metric_value) is float for r in model_index)


def test_model_index_entries_share_one_group(results):
    entries = eval_results.build_eval_results(results)
    assert len({r.unique_identifier for r in entries}) == 1
    assert len({(r.dataset_name, r.source_url, r.source_name, r.task_name) for r in entries}) == 1
    assert {r.metric_type for r in entries} == {"fisher_robustness"}
