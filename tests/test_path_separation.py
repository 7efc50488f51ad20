"""Bernoulli path separation against hand counts, brute-force definitions and closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from hf_fisher.errors import InputError
from hf_fisher.path_separation import (
    PathSeparation,
    bernoulli_js,
    path_layers,
    path_separation,
    poisson_weights,
    split_halves,
    top_share_events,
)


def _js(p: float, q: float) -> float:
    """JS(Bern(p), Bern(q)) in nats as the mean KL to the mixture, in plain Python."""
    m = (p + q) / 2

    def kl(a: float, b: float) -> float:
        return sum(x * math.log(x / y) for x, y in ((a, b), (1 - a, 1 - b)) if x > 0)

    return (kl(p, m) + kl(q, m)) / 2


def _between_within(hits: dict, draws: dict) -> tuple[float, float]:
    """Brute force from per-(class, half) hit lists: explicit loops over pairs and edges."""
    theta = {key: [(k + 1) / (draws[key] + 2) for k in row] for key, row in hits.items()}

    def mean_js(a: tuple, b: tuple) -> float:
        return sum(_js(p, q) for p, q in zip(theta[a], theta[b], strict=True)) / len(theta[a])

    classes = sorted({c for c, _ in hits})
    within = sum(mean_js((c, 0), (c, 1)) for c in classes) / len(classes)
    pairs = list(itertools.combinations(classes, 2))
    between = sum(mean_js((c, h), (d, k)) for c, d in pairs for h in (0, 1) for k in (0, 1)) / (
        4 * len(pairs)
    )
    return between, within


def _ids_by_half(count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """The first ``count`` ids that ``split_halves`` puts in half 0 and in half 1."""
    halves = split_halves(range(200), seed).tolist()
    zero = [i for i, h in enumerate(halves) if h == 0][:count]
    one = [i for i, h in enumerate(halves) if h == 1][:count]
    return zero, one


# --- closed-form pieces ----------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.3, 0.5, 0.9, 1.0])
def test_top_share_events_match_the_definition_with_ties(gamma):
    generator = torch.Generator().manual_seed(1)
    contributions = torch.randint(-3, 6, (200, 7), generator=generator).double()  # many ties
    events = top_share_events(contributions, gamma)
    for row, got in zip(contributions.tolist(), events.tolist(), strict=True):
        total = sum(max(v, 0.0) for v in row)
        expected = [v > 0 and sum(w for w in row if w > v) < gamma * total for v in row]
        assert got == expected


def test_bernoulli_js_matches_the_mixture_kl():
    pairs = [(0.25, 0.5), (0.75, 0.25), (0.1, 0.9), (0.5, 0.5), (0.0, 1.0), (0.3, 0.0)]
    p, q = (torch.tensor(side, dtype=torch.float64) for side in zip(*pairs, strict=True))
    got = bernoulli_js(p, q)
    assert got.tolist() == pytest.approx([_js(p, q) for p, q in pairs], rel=1e-12, abs=1e-15)


def test_split_halves_depend_only_on_id_and_seed():
    ids = [5, 17, 3, 5, 1000003]
    together = split_halves(ids, seed=2).tolist()
    assert together == [split_halves([i], seed=2).item() for i in ids]
    assert together[0] == together[3]  # a repeated id stays in its half
    many = split_halves(range(20000), seed=0)
    assert abs(many.double().mean().item() - 0.5) < 0.01
    assert (many != split_halves(range(20000), seed=1)).double().mean().item() > 0.4


# --- a hand-computed network -----------------------------------------------------------------


def _hand_network() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[int]]:
    """Linear(2, 2), W = [[1, 1], [1, -1]], two classes of four samples, two per half.

    Events at gamma = 0.9: a = (9, 0): unit 0 -> (1, 0), unit 1 -> (1, 0); (3, 1): (1, 1),
    (1, 0); (0, 9): (0, 1), (0, 0); (1, 3): (1, 1), (1, 0).
    """
    layer = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    zero, one = _ids_by_half(4)
    rows = {  # (class, half) -> inputs
        (0, 0): [[9, 0], [9, 0]],
        (0, 1): [[9, 0], [3, 1]],
        (1, 0): [[0, 9], [0, 9]],
        (1, 1): [[0, 9], [1, 3]],
    }
    inputs, labels, ids = [], [], []
    used = {0: iter(zero), 1: iter(one)}
    for (cls, half), samples in rows.items():
        for sample in samples:
            inputs.append(sample)
            labels.append(cls)
            ids.append(next(used[half]))
    return layer, torch.tensor(inputs).double(), torch.tensor(labels), ids


HAND_EDGE_HITS = {  # edges (0,0), (0,1), (1,0), (1,1), counted by hand from the docstring
    (0, 0): [2, 0, 2, 0],
    (0, 1): [2, 1, 2, 0],
    (1, 0): [0, 2, 0, 0],
    (1, 1): [1, 2, 1, 0],
}
HAND_UNIT_HITS = {(0, 0): [2, 0], (0, 1): [2, 1], (1, 0): [0, 2], (1, 1): [1, 2]}


def test_hand_network_theta_and_separation_in_closed_form():
    layer, inputs, labels, ids = _hand_network()
    result = path_separation(layer, inputs, labels, sample_ids=ids, batch_size=3)
    draws = dict.fromkeys(HAND_EDGE_HITS, 2)
    between, within = _between_within(HAND_EDGE_HITS, draws)
    act_between, act_within = _between_within(HAND_UNIT_HITS, draws)
    (only,) = result.layers
    assert only.between == pytest.approx(between, rel=1e-12)
    assert only.within == pytest.approx(within, rel=1e-12)
    assert result.score == pytest.approx(between / within, rel=1e-12)
    assert only.activation_separation == pytest.approx(act_between / act_within, rel=1e-12)
    # theta = (hits + 1) / (2 + 2); the halves differ in 1 of 4 edges of class 0 and 2 of class 1,
    # each time 1/4 vs 1/2: within = (1/4 + 2/4) / 2 * JS(1/4, 1/2)
    assert only.within == pytest.approx(3 / 8 * _js(0.25, 0.5), rel=1e-12)
    assert (only.num_edges, only.num_units, only.edge_draws) == (4, 2, 8)


def test_conv_counts_match_a_naive_loop():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False).double()
    conv.weight.requires_grad_(False)
    inputs = torch.randn(10, 4, 5, 5, dtype=torch.float64).relu()
    labels = torch.arange(10) % 2
    result = path_separation(conv, inputs, labels)
    padded = nn.functional.pad(inputs, (1, 1, 1, 1))
    halves = split_halves(range(10), 0).tolist()
    hits = {(c, h): [0] * 12 for c in (0, 1) for h in (0, 1)}
    draws = dict.fromkeys(hits, 0)
    for n, y, x in itertools.product(range(10), range(3), range(3)):
        key = (int(labels[n]), halves[n])
        draws[key] += 1
        for o in range(6):
            group = o // 3
            window = padded[n, 2 * group : 2 * group + 2, 2 * y : 2 * y + 3, 2 * x : 2 * x + 3]
            e = [float((conv.weight[o, c] * window[c]).sum()) for c in range(2)]
            total = sum(max(v, 0.0) for v in e)
            for c in range(2):
                larger = sum(w for w in e if w > e[c])
                hits[key][2 * o + c] += int(e[c] > 0 and larger < 0.9 * total)
    between, within = _between_within(hits, draws)
    (only,) = result.layers
    assert only.between == pytest.approx(between, rel=1e-10)
    assert only.within == pytest.approx(within, rel=1e-10)
    assert (only.num_edges, only.edge_draws) == (12, 90)


# --- streaming, blocks, modes ----------------------------------------------------------------


def _cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 3 * 3, 3),
    ).double()


def test_streaming_equals_one_shot_and_blocks_do_not_matter():
    model = _cnn()
    torch.manual_seed(4)
    inputs = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,))
    one_shot = path_separation(model, inputs, labels, batch_size=40).to_json()
    sizes = [5, 13, 1, 21]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    stream = ((inputs[s : s + n], labels[s : s + n]) for s, n in zip(starts, sizes, strict=True))
    assert path_separation(model, stream).to_json() == one_shot
    blocked = path_separation(model, inputs, labels, batch_size=7, max_elements=10).to_json()
    assert blocked == one_shot


def test_model_mode_and_hooks_are_restored():
    model = _cnn().train()
    model[0].eval()
    inputs = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    path_separation(model, inputs, torch.arange(12) % 2)
    assert model.training and not model[0].training and model[2].training
    assert all(not m._forward_hooks for m in model.modules())


def test_conv1d_by_name_equals_the_linear_layer():
    class Conv1D(nn.Module):  # transformers' layout: weight (in, out), y = x W + b
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.weight = nn.Parameter(linear.weight.detach().t().clone())
            self.bias = nn.Parameter(linear.bias.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight + self.bias

    torch.manual_seed(5)
    linear = nn.Linear(6, 4).double()
    inputs = torch.randn(30, 2, 6, dtype=torch.float64)  # sequences: each position is a draw
    labels = torch.arange(30) % 3
    expected = path_separation(linear, inputs, labels).to_json()
    got = path_separation(Conv1D(linear), inputs, labels).to_json()
    assert got["layers"][0].pop("kind") == "conv1d"
    assert expected["layers"][0].pop("kind") == "linear"
    assert got == expected
    assert got["layers"][0]["edge_draws"] == 60


# --- what S claims ---------------------------------------------------------------------------


def test_random_labels_give_separation_near_one_and_clusters_far_above():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    centres = torch.randn(4, 8, dtype=torch.float64) * 3
    labels = torch.arange(800) % 4
    clustered = centres[labels] + torch.randn(800, 8, dtype=torch.float64)
    noise = torch.randn(800, 8, dtype=torch.float64)
    null = path_separation(model, noise, labels)
    assert 0.85 < null.score < 1.15
    assert 0.85 < null.activation_score < 1.15
    assert path_separation(model, clustered, labels).score > 10


def test_class_subset_and_json_round_trip():
    model = _cnn()
    inputs = torch.randn(60, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(60) % 3
    subset = path_separation(model, inputs, labels, classes=[0, 2], layers=["0", "5"])
    assert subset.settings["classes"] == [0, 2] and subset.settings["num_samples"] == 40
    assert [layer.name for layer in subset.layers] == ["0", "5"]
    alone = path_separation(model, inputs[labels != 1], labels[labels != 1], layers=["0", "5"])
    assert alone.score != subset.score  # ids (positions) differ, so the halves differ
    again = PathSeparation.from_json(subset.to_json())
    assert again.to_json() == subset.to_json()
    assert list(path_layers(model)) == ["0", "2", "5"]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 0.0}, r"gamma must be in \(0, 1\], got 0\.0"),
        ({"layers": ["nope"]}, r"layers=\['nope'\]: unknown or empty; choose names among 0, 2"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"classes": [0]}, r"at least two classes with samples in both random halves, got 1"),
    ],
)
def test_bad_knobs_raise(kwargs, match):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(InputError, match=match):
        path_separation(model, torch.randn(20, 3), torch.arange(20) % 2, **kwargs)


def test_mismatched_labels_and_layerless_models_raise():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(InputError, match=r"got 5 inputs, labels of shape \(4,\)"):
        path_separation(model, torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match=r"ReLU has no nn\.Linear, nn\.Conv2d or Conv1D layer"):
        path_separation(nn.ReLU(), torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match=r"pass either a tensor .* with labels="):
        path_separation(model, torch.randn(5, 3))


# --- bootstrap -------------------------------------------------------------------------------


def test_each_bootstrap_replicate_is_the_statistic_on_its_resample():
    model = _cnn()
    torch.manual_seed(7)
    inputs = torch.randn(30, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(30) % 3
    boot = path_separation(model, inputs, labels, bootstrap=4, seed=2)
    plain = path_separation(model, inputs, labels, seed=2)
    assert boot.score == plain.score and boot.layers == plain.layers
    weights = poisson_weights(range(30), seed=2, resamples=4)
    for replicate in (1, 4):
        counts = weights[:, replicate].long()
        rows = torch.arange(30).repeat_interleave(counts)  # each sample w times, same id
        resampled = path_separation(
            model, inputs[rows], labels[rows], sample_ids=rows.tolist(), seed=2
        )
        replicates = {
            key: values[replicate - 1] for key, values in boot.bootstrap["replicates"].items()
        }
        for key in ("excess_score", "activation_excess_score"):
            assert replicates[key] == pytest.approx(getattr(resampled, key), rel=1e-10)
        # ratios: the resample's excess over the full sample's within-class noise
        pairs = list(zip(resampled.layers, plain.layers, strict=True))
        expected = sum(1 + (r.between - r.within) / p.within for r, p in pairs) / len(pairs)
        assert replicates["score"] == pytest.approx(expected, rel=1e-10)
    low, high = boot.bootstrap["intervals"]["score"]
    assert low <= high and boot.bootstrap["resamples"] == 4
    assert PathSeparation.from_json(boot.to_json()).to_json() == boot.to_json()


def test_poisson_weights_have_mean_and_variance_one():
    weights = poisson_weights(range(4000), seed=0, resamples=5)
    assert (weights[:, 0] == 1).all()
    assert weights[:, 1:].mean().item() == pytest.approx(1.0, abs=0.03)
    assert weights[:, 1:].var().item() == pytest.approx(1.0, abs=0.06)
    assert torch.equal(poisson_weights([17, 3], 0, 5), weights[[17, 3]])


# --- pipeline: companion, results section, card, plot ----------------------------------------


@pytest.mark.slow
def test_companion_section_equals_the_api_and_renders(default_model_dir, tmp_path):
    from hf_fisher.adapters import load_classifier
    from hf_fisher.companions import CompanionOptions, run_companions
    from hf_fisher.digits import load_digits_dataset
    from hf_fisher.report.sections.path_separation import (
        card_path_separation,
        plot_path_separation,
    )

    classifier = load_classifier(default_model_dir)
    rows = load_digits_dataset("test").select(range(40))
    batch = classifier.prepare([row["image"] for row in rows])
    labels = torch.tensor(rows["label"])
    options = CompanionOptions(path_separation=True, path_bootstrap=3, path_gamma=0.8)
    section = run_companions(classifier, batch, labels, torch.ones(40), options, seed=4)[
        "path_separation"
    ]
    direct = path_separation(
        classifier.model,
        batch.inputs,
        labels,
        forward=classifier.logit_fn(batch),
        gamma=0.8,
        seed=4,
        bootstrap=3,
    )
    assert section == direct.to_json()
    assert [layer["kind"] for layer in section["layers"]] == ["conv2d"] * 7 + ["linear"]
    card = card_path_separation(section)
    assert "our reconstruction" in card and "classifier.1" in card and "γ = 0.8" in card
    assert "[95% interval, 3 resamples]" in card
    assert plot_path_separation(section, tmp_path / "p.png").stat().st_size > 1000
    from hf_fisher.headlines import path_separation_headline

    headline = path_separation_headline(section)
    low, high = section["bootstrap"]["intervals"]["score"]
    assert headline.values["score"] == section["score"]
    assert headline.values["score_ci"] == [low, high]
    assert f"path separation S {section['score']:.3g} [{low:.3g}, {high:.3g}] over 8 layers" in (
        headline.lines[0]
    )
    assert f"activation-only S {section['activation_score']:.3g}" in headline.lines[1]


@pytest.mark.slow
def test_cli_writes_a_valid_path_separation_section(tmp_path):
    import json

    from hf_fisher.cli import main
    from hf_fisher.results import validate_results

    out = tmp_path / "run"
    argv = ["evaluate", "--num-samples", "30", "--companion-samples", "30", "--path-separation"]
    assert main([*argv, "--out", str(out), "--no-progress"]) in (0, None)
    results = validate_results(json.loads((out / "results.json").read_text()))
    section = results["path_separation"]
    assert section["settings"]["num_samples"] == 30 and section["bootstrap"] is None
    assert results["settings"]["companions"]["path_separation"] is True
    assert section["score"] > 1  # a trained model separates held-out digit classes


def test_hugging_face_vit_with_keyword_inputs(vit_dir):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit_dir, dtype=torch.float64)
    torch.manual_seed(8)
    pixel_values = torch.randn(20, 3, 16, 16, dtype=torch.float64)
    labels = torch.arange(20) % 2
    result = path_separation(model, {"pixel_values": pixel_values}, labels, batch_size=6)
    draws = {layer.name: layer.edge_draws for layer in result.layers}
    patches = (16 // 4) ** 2
    assert draws["vit.embeddings.patch_embeddings.projection"] == 20 * patches  # conv positions
    assert draws["vit.layers.0.attention.q_proj"] == 20 * (patches + 1)  # tokens
    assert draws["classifier"] == 20  # the CLS token only
    assert math.isfinite(result.score) and model.training is False
