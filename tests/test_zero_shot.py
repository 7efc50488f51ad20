"""Zero-shot image classification: a CLIP-style dual encoder scored against label prompts.

The Fisher engine's dense-truth suite covers the tiny CLIP through the case table
(``hf_fisher/testing/cases.py``, model "clip"); here: the logits are the model's own, the
prompts are fixed, bad options are refused before the weights load, and the command line runs
end to end from a save_pretrained directory on an imagefolder of class-name folders.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hf_fisher import InputError, load_classifier
from hf_fisher.results import validate_results
from hf_fisher.testing.models import CLIP_LABELS, build_clip
from hf_fisher.testing.tolerances import tolerance_for


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_clip(tmp_path_factory.mktemp("clip"))


def test_logits_are_the_models_scaled_similarities_to_fixed_prompts(clip_dir):
    classifier = load_classifier(clip_dir, candidate_labels=CLIP_LABELS, dtype=torch.float64)
    assert classifier.prompts == [f"This is a photo of {label}." for label in CLIP_LABELS]
    assert classifier.id2label == dict(enumerate(CLIP_LABELS))
    assert classifier.source["task"] == "zero-shot-image-classification"
    pixels = torch.rand(
        3, *classifier.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    encoding = classifier.tokenizer(classifier.prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = classifier.model(
            input_ids=encoding["input_ids"],
            attention_mask=encoding["attention_mask"],
            pixel_values=classifier.normalize(pixels),
        ).logits_per_image
        logits = classifier(pixels)
    torch.testing.assert_close(logits, expected, rtol=tolerance_for(torch.float64), atol=1e-12)
    assert logits.std(dim=1).min() > 1e-3  # the prompts give different classes


def test_the_template_shapes_the_prompts_and_the_logits(clip_dir):
    plain = load_classifier(clip_dir, candidate_labels=["cat", "dog"], hypothesis_template="{}")
    photo = load_classifier(clip_dir, candidate_labels=["cat", "dog"])
    assert plain.prompts == ["cat", "dog"]
    pixels = torch.rand(2, *plain.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(plain(pixels), photo(pixels))


def test_labels_are_checked_before_the_weights_load(clip_dir, monkeypatch):
    import hf_fisher.adapters.hub as hub

    def never(*args, **kwargs):
        raise AssertionError("the weights loaded before the options were checked")

    monkeypatch.setattr(hub, "_load_weights", never)
    with pytest.raises(InputError, match=r"no classification head.*--candidate-labels cat,dog"):
        load_classifier(clip_dir)
    with pytest.raises(InputError, match=r"\['cat'\] are repeated"):
        load_classifier(clip_dir, candidate_labels=["cat", "dog", "cat"])


def test_candidate_labels_are_refused_for_a_model_with_its_own_head(vit_dir):
    with pytest.raises(InputError, match="has its own classification head.*drop --candidate"):
        load_classifier(vit_dir, candidate_labels=["cat", "dog"])


def _imagefolder(root):
    """Class-name folders of PNGs, the way users make an imagefolder."""
    generator = np.random.default_rng(0)
    for label in ("bird", "cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(2):
            image = generator.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / label / f"{index}.png")
    return root


@pytest.mark.slow
def test_cli_evaluates_a_clip_directory_on_an_imagefolder_and_writes_a_card(clip_dir, tmp_path):
    data = _imagefolder(tmp_path / "data")
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "hf_fisher", "evaluate", str(clip_dir), "--dataset", str(data),
        "--split", "train", "--candidate-labels", "cat,dog,bird", "--out", str(out),
        "--no-progress", "--noise", "--companion-samples", "3",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    results = validate_results(json.loads((out / "results.json").read_text()))
    model = results["model"]
    assert model["task"] == "zero-shot-image-classification"
    assert model["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    assert model["hypothesis_template"] == "This is a photo of {}."
    assert results["dataset"]["label_mapping"] == {"bird": 2, "cat": 0, "dog": 1}
    assert results["dataset"]["label_mapping_source"] == "by-name"
    assert len(results["per_sample"]) == 6 and "noise_curves" in results
    card = tmp_path / "README.md"
    command = [sys.executable, "-m", "hf_fisher", "card", str(out / "results.json"),
               "--out", str(card)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "pipeline_tag: zero-shot-image-classification" in card.read_text()
