"""The README's examples run and print what they claim."""

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_prints_exact_spectra(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "method: exact"
    rows = [re.search(r"lambda_max\s+([\d.]+)\s+trace\s+([\d.]+)", line) for line in lines[1:]]
    assert len(rows) == 5 and all(rows)
    assert all(float(m.group(1)) <= float(m.group(2)) for m in rows)  # lambda_max <= trace


def test_text_and_black_box_agree_within_interval(capsys):
    runpy.run_path(str(EXAMPLES / "text_and_black_box.py"), run_name="__main__")
    found = re.findall(r"exact ([\d.e-]+)\s+black-box ([\d.e-]+) \[([\d.e-]+), ([\d.e-]+)\]",
                       capsys.readouterr().out)
    assert len(found) == 3
    covered = [float(low) <= float(exact) <= float(high) for exact, _, low, high in found]
    assert sum(covered) >= 2


def test_structured_outputs_writes_the_readme_models_and_datasets(tmp_path):
    """The README's structured-output runs start from these: each model loads as its task."""
    import datasets
    import numpy as np

    from hf_fisher.adapters import load_classifier

    runpy.run_path(str(EXAMPLES / "structured_outputs.py"))["main"](tmp_path)
    tasks = {name: load_classifier(tmp_path / name).source["task"]
             for name in ("tiny-lm", "tiny-ner", "tiny-segformer")}
    assert tasks == {"tiny-lm": "text-generation", "tiny-ner": "token-classification",
                     "tiny-segformer": "image-segmentation"}
    prompts = (tmp_path / "prompts" / "prompts.jsonl").read_text().splitlines()
    assert len(prompts) == 4 and all(line.startswith('{"text": ') for line in prompts)
    assert (tmp_path / "sentences" / "test.csv").read_text().splitlines()[0] == "sentence"
    scenes = datasets.load_from_disk(str(tmp_path / "street-scenes"))
    first = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    assert len(scenes) == 8 and np.array_equal(np.asarray(scenes[0]["image"]), first)


def test_the_test_tokenizer_is_the_same_on_every_build():
    """The tiny text models' tokenizer (README NER figures, the case table's BERT inputs).

    It was trained with ``WordPieceTrainer``, whose ties come out in hash order: five builds
    gave five vocabularies, so the tiny BERT's inputs and every figure built on them changed
    from run to run (a float32 multi-label case failed in CI only).
    """
    from hf_fisher.testing.models import TEXT_CORPUS, build_tokenizer

    builds = [build_tokenizer() for _ in range(3)]
    assert all(build.get_vocab() == builds[0].get_vocab() for build in builds)
    text = "the movie was wonderful, unseen!"
    assert len({tuple(build(text)["input_ids"]) for build in builds}) == 1
    tokens = builds[0].convert_ids_to_tokens(builds[0](text)["input_ids"])
    assert tokens[:6] == ["[CLS]", "the", "movie", "was", "wonderful", ","]
    assert tokens[6:9] == ["u", "##n", "##s"] and tokens[-2:] == ["[UNK]", "[SEP]"]
    for sentence in TEXT_CORPUS:  # every corpus word is one token
        words = sentence.replace(",", " ,").split()
        assert builds[0].tokenize(sentence) == words


def test_zero_shot_writes_the_readme_clip_and_class_folders(tmp_path):
    """The README's zero-shot run starts from these: a CLIP and 4 images per class folder."""
    import numpy as np
    from PIL import Image

    from hf_fisher.adapters import load_classifier

    runpy.run_path(str(EXAMPLES / "zero_shot.py"))["main"](tmp_path)
    classifier = load_classifier(tmp_path / "tiny-clip", candidate_labels=["cat", "dog", "bird"])
    assert classifier.source["task"] == "zero-shot-image-classification"
    folders = sorted(path.name for path in (tmp_path / "photos" / "train").iterdir())
    assert folders == ["bird", "cat", "dog"]
    assert all(len(list((tmp_path / "photos" / "train" / name).glob("*.png"))) == 4
               for name in folders)  # fmt: skip
    first = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    saved = np.asarray(Image.open(tmp_path / "photos" / "train" / "cat" / "0.png"))
    assert np.array_equal(saved, first)


@pytest.mark.parametrize(
    "name", ["quickstart.py", "text_and_black_box.py", "structured_outputs.py", "zero_shot.py"]
)
def test_examples_have_a_run_line(name):
    assert f"python examples/{name}" in (EXAMPLES / name).read_text()
