"""Model-level ranking: does an hf-fisher summary order models the way robust accuracy does?

Trains a zoo of small plain-torch models on the train split of scikit-learn's digits (8x8 pixels
in [0, 1]): MLPs of three widths, two CNNs, a ResNet, a ViT, Gaussian-noise training and L2 PGD
adversarial training. On the first ``--samples`` rows of the test split it measures, per model,
clean accuracy, L2 PGD robust accuracy at three budgets and the median minimal PGD epsilon
(hf_fisher.attacks.attack_report), and hf-fisher's medians of lambda_max, kl_radius and the flip
radius (hf_fisher.fisher_spectrum, the public API on the nn.Module). Then it rank-correlates each
summary with robust accuracy across models (bootstrap CI resampling models) and writes the
per-sample correlation table (minimal epsilon vs flip radius and first-order estimate) for the
bundled digits ResNet (through evaluate_robustness with the attacks companion) and every zoo
model. Nothing is tuned on the test rows; nothing is cached.

Fashion-MNIST is used in addition when its idx files are in /usr/share/datasets/fashion-mnist/
(Debian ``dataset-fashion-mnist``); otherwise the script says so and skips it.

    python scripts/model_zoo_ranking.py            # 1-3 min per model on a busy 2-core box
    python scripts/model_zoo_ranking.py --quick    # smoke run: 2 models, few samples

Writes docs/zoo/ranking.md (tables), docs/zoo/ranking.json and docs/zoo/ranking.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_fisher import fisher_spectrum
from hf_fisher.attacks import attack_report, pgd
from hf_fisher.correlation import rank_correlation
from hf_fisher.flip import flip_radii, kl_to_flip
from hf_fisher.summary import kl_radius

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "docs" / "zoo"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
EPSILONS = (0.25, 0.5, 1.0)  # L2 budgets in [0, 1] pixel units on 64 pixels
KL_TAU = 0.01
SEED = 0
SUMMARIES = {  # name -> (description, expected sign of its correlation with robust accuracy)
    "median_spectral_norm": ("median λ_max (current leaderboard's inverse)", -1),
    "median_kl_radius": ("median kl_radius = √(2τ/λ_max) (current default key)", 1),
    "median_flip_radius": ("median flip radius √(2 KL_flip/λ_max)", 1),
    "median_first_order": ("median first-order distance (baseline, not hf-fisher)", 1),
    "clean_accuracy": ("clean accuracy (baseline)", 1),
}


# ---------------------------------------------------------------------------------------------
# Models (inputs (N, 1, 8, 8), pixels in [0, 1]).


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 10),
    )  # fmt: skip


def cnn(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 16, 10),
    )  # fmt: skip


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def resnet(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), Block(channels), Block(channels),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10),
    )  # fmt: skip


class TinyViT(nn.Module):
    """2x2 patches (16 tokens), learned positions, pre-norm encoder layers, mean pooling."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.position = nn.Parameter(torch.zeros(1, 16, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.encoder(tokens).mean(dim=1))


@dataclass
class Recipe:
    name: str
    build: object
    epochs: int = 20
    noise: float = 0.0  # Gaussian data augmentation, per-pixel std
    pgd_epsilon: float = 0.0  # L2 PGD adversarial training budget (5 steps)


ZOO = [
    Recipe("mlp-32", lambda: mlp(32)),
    Recipe("mlp-128", lambda: mlp(128)),
    Recipe("mlp-512", lambda: mlp(512)),
    Recipe("cnn-8", lambda: cnn(8)),
    Recipe("cnn-32", lambda: cnn(32)),
    Recipe("resnet-16", lambda: resnet(16)),
    Recipe("vit-32", TinyViT, epochs=30),
    Recipe("mlp-128+noise0.3", lambda: mlp(128), noise=0.3),
    Recipe("cnn-16+noise0.3", lambda: cnn(16), noise=0.3),
    Recipe("mlp-128+pgd0.5", lambda: mlp(128), pgd_epsilon=0.5),
    Recipe("cnn-16+pgd0.5", lambda: cnn(16), pgd_epsilon=0.5),
]


# ---------------------------------------------------------------------------------------------
# Data and training.


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """hf_fisher.digits' stratified split at the native 8x8 resolution, pixels in [0, 1]."""
    from hf_fisher.digits import load_digits_dataset

    rows = load_digits_dataset(split, upsample=8)
    images = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in rows["image"]])
    return torch.from_numpy(images)[:, None], torch.tensor(list(rows["label"]))


def train(recipe: Recipe, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(SEED)
    model = recipe.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            inputs, labels = x[batch], y[batch]
            if recipe.noise:
                inputs = inputs + recipe.noise * torch.randn(inputs.shape, generator=generator)
            if recipe.pgd_epsilon:
                model.eval()
                inputs = pgd(model, inputs, labels, recipe.pgd_epsilon, steps=5, clip=(0.0, 1.0),
                             generator=generator).adversarial.detach()  # fmt: skip
            model.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Measurement.


def paired_difference(section: dict, *, num_bootstrap: int = 1000) -> list[float]:
    """Spearman(flip radius) - Spearman(first-order) with the minimal epsilon, and a paired
    percentile bootstrap 95% CI resampling the correctly classified samples."""
    from scipy.stats import rankdata

    per_sample = section["per_sample"]
    keep = np.asarray(per_sample["correct"])
    columns = [
        np.asarray([np.inf if v is None else v for v in per_sample[key]], dtype=float)[keep]
        for key in ("minimal_epsilon", "flip_radius", "first_order")
    ]
    target, flip, first = (rankdata(c) for c in columns)

    def rho(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])

    point = rho(flip, target) - rho(first, target)
    rng = np.random.default_rng(SEED)
    draws = []
    for _ in range(num_bootstrap):
        index = rng.integers(0, len(target), len(target))
        draws.append(rho(flip[index], target[index]) - rho(first[index], target[index]))
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return [point, float(low), float(high)]


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, quick: bool) -> dict:
    spectrum = fisher_spectrum(model, x, method="exact", batch_size=len(x))
    spectral = spectrum.spectral_norm
    flip = flip_radii(spectral, kl_to_flip(spectrum.logits))
    kl = torch.tensor([kl_radius(float(v), KL_TAU) for v in spectral])
    report = attack_report(
        model, x, y, spectral, epsilons=EPSILONS, clip=(0.0, 1.0),
        bisection_steps=5 if quick else 8, steps=5 if quick else 10,
        num_bootstrap=200 if quick else 1000, seed=SEED,
    )  # fmt: skip
    section = report.to_json()
    return {
        "clean_accuracy": section["clean_accuracy"],
        "robust_accuracy": dict(
            zip(map(str, EPSILONS), section["robust_accuracy"]["pgd"], strict=True)
        ),
        "median_minimal_epsilon": section["median_minimal_epsilon"],
        "median_spectral_norm": float(spectral.median()),
        "median_kl_radius": float(kl.median()),
        "median_flip_radius": float(flip.median()),
        "median_first_order": float(report.first_order.double().median()),
        "per_sample": {
            name: section["correlations"][name]
            for name in ("spectral_norm", "confidence", "first_order", "flip_radius")
        },
        "flip_minus_first_order": paired_difference(section),
    }  # fmt: skip


def bundled_model_table(num_samples: int) -> dict:
    """Per-sample correlations on the bundled digits ResNet, through the runner's companion."""
    from hf_fisher import CompanionOptions, evaluate_robustness

    companions = CompanionOptions(
        attacks="l2", attack_epsilons=[0.5, 1.0, 2.0], num_samples=num_samples
    )
    report = evaluate_robustness(
        num_samples=num_samples, companions=companions, progress=False, seed=SEED
    )
    attacks = report.results["attacks"]
    return {
        "num_samples": num_samples,
        "median_minimal_epsilon": attacks["median_minimal_epsilon"],
        "per_sample": {
            name: attacks["correlations"][name]
            for name in ("spectral_norm", "confidence", "first_order", "flip_radius")
        },
        "flip_minus_first_order": paired_difference(attacks),
    }


def _targets(rows: dict[str, dict]) -> dict[str, list[float]]:
    targets = {f"pgd_acc@{e}": [r["robust_accuracy"][str(e)] for r in rows.values()]
               for e in EPSILONS}  # fmt: skip
    targets["median_min_eps"] = [r["median_minimal_epsilon"] for r in rows.values()]
    return targets


def flip_minus_kl(rows: dict[str, dict], *, num_bootstrap: int = 2000) -> dict:
    """Across models: Spearman(flip) - Spearman(kl_radius) per target, paired bootstrap over
    models (the same resampled models for both), 95% percentile CI."""
    from scipy.stats import rankdata

    flip = np.asarray([r["median_flip_radius"] for r in rows.values()])
    kl = np.asarray([r["median_kl_radius"] for r in rows.values()])
    rng = np.random.default_rng(SEED)
    indices = [rng.integers(0, len(flip), len(flip)) for _ in range(num_bootstrap)]
    out = {}
    for target, values in _targets(rows).items():
        y = np.asarray(values, dtype=float)

        def rho(x: np.ndarray, t: np.ndarray) -> float:
            with np.errstate(invalid="ignore", divide="ignore"):
                return float(np.corrcoef(rankdata(x), rankdata(t))[0, 1])

        draws = [rho(flip[i], y[i]) - rho(kl[i], y[i]) for i in indices]
        low, high = np.nanquantile(draws, [0.025, 0.975])
        out[target] = [rho(flip, y) - rho(kl, y), float(low), float(high)]
    return out


def across_models(rows: dict[str, dict]) -> dict:
    """Spearman of each summary with each robustness target across models, bootstrap CIs."""
    targets = _targets(rows)
    table = {}
    for summary in SUMMARIES:
        values = [r[summary] for r in rows.values()]
        table[summary] = {
            target: rank_correlation(values, y, num_bootstrap=2000, seed=SEED).to_json()
            for target, y in targets.items()
        }
    return table


# ---------------------------------------------------------------------------------------------
# Output.


def _rho(c: dict) -> str:
    low, high = c["spearman_ci"]
    if c["spearman"] is None:
        return "n/a"
    bounds = "n/a" if low is None else f"{low:+.2f}, {high:+.2f}"
    return f"{c['spearman']:+.2f} [{bounds}]"


def markdown(rows: dict[str, dict], ranking: dict, bundled: dict | None, n: int) -> str:
    eps = " | ".join(f"PGD acc @{e}" for e in EPSILONS)
    lines = [
        f"Models trained on the digits train split (1,437 rows); measured on the first {n} test "
        "rows. L2 budgets in [0, 1]-pixel units (64 pixels).",
        "",
        f"| model | clean acc | {eps} | median min ε | median λ_max | median kl_radius | "
        "median flip radius | median first-order |",
        "|---" * (8 + len(EPSILONS)) + "|",
    ]
    for name, r in rows.items():
        robust = " | ".join(f"{r['robust_accuracy'][str(e)]:.3f}" for e in EPSILONS)
        lines.append(
            f"| {name} | {r['clean_accuracy']:.3f} | {robust} | {r['median_minimal_epsilon']:.3f}"
            f" | {r['median_spectral_norm']:.3g} | {r['median_kl_radius']:.4f}"
            f" | {r['median_flip_radius']:.3f} | {r['median_first_order']:.3f} |"
        )
    targets = list(next(iter(ranking.values())))
    lines += [
        "",
        f"Spearman ρ across the {len(rows)} models [95% bootstrap CI, resampling models]:",
        "",
        "| summary | " + " | ".join(targets) + " |",
        "|---" * (1 + len(targets)) + "|",
    ]
    for summary, by_target in ranking.items():
        cells = " | ".join(_rho(by_target[t]) for t in targets)
        lines.append(f"| {SUMMARIES[summary][0]} | {cells} |")
    paired = flip_minus_kl(rows)
    cells = " | ".join("{:+.2f} [{:+.2f}, {:+.2f}]".format(*paired[t]) for t in targets)
    lines.append(f"| flip − kl_radius (paired bootstrap over models) | {cells} |")
    lines += [
        "",
        "Per-sample Spearman ρ with the minimal PGD ε (correctly classified samples):",
        "",
    ]
    predictors = ("spectral_norm", "confidence", "first_order", "flip_radius")
    lines += [
        "| model | n | " + " | ".join(predictors) + " | flip − first-order [paired CI] |",
        "|---" * 7 + "|",
    ]
    per_model = ({"bundled digits-resnet (32x32)": bundled} if bundled else {}) | rows
    for name, r in per_model.items():
        count = r["per_sample"]["flip_radius"]["num_samples"]
        cells = " | ".join(_rho(r["per_sample"][p]) for p in predictors)
        diff, low, high = r["flip_minus_first_order"]
        lines.append(f"| {name} | {count} | {cells} | {diff:+.2f} [{low:+.2f}, {high:+.2f}] |")
    return "\n".join(lines) + "\n"


def scatter(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = str(EPSILONS[1])
    keys = ("median_spectral_norm", "median_kl_radius", "median_flip_radius")
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, key in zip(axes, keys, strict=True):
        for name, r in rows.items():
            axis.scatter(r[key], r["robust_accuracy"][budget], color="C0")
            axis.annotate(name, (r[key], r["robust_accuracy"][budget]), fontsize=7)
        axis.set_xscale("log")
        axis.set_xlabel(SUMMARIES[key][0])
        axis.set_ylabel(f"L2 PGD robust accuracy @ ε={budget}")
    figure.suptitle("Digits model zoo: hf-fisher medians vs robust accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="test rows per model")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 models, 40 samples")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--models", help="comma-separated subset of the zoo (to run in parallel)")
    parser.add_argument("--no-bundled", action="store_true", help="skip the bundled ResNet")
    parser.add_argument(
        "--tables-from", type=Path, nargs="+", help="merge ranking.json files and re-render"
    )
    args = parser.parse_args()
    if args.tables_from:
        merge(args.tables_from, args.out)
        return
    torch.set_num_threads(2)
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        print(f"Fashion-MNIST not found under {FASHION_DIR} (Debian dataset-fashion-mnist): "
              "skipping it; digits only.")  # fmt: skip
    n = 40 if args.quick else args.samples
    train_x, train_y = digits_split("train")
    test_x, test_y = digits_split("test")
    test_x, test_y = test_x[:n], test_y[:n]
    rows = {}
    chosen = args.models.split(",") if args.models else [r.name for r in ZOO]
    for recipe in [r for r in ZOO if r.name in chosen][: 2 if args.quick else None]:
        start = time.perf_counter()
        model = train(recipe, train_x, train_y)
        rows[recipe.name] = measure(model, test_x, test_y, quick=args.quick)
        print(f"{recipe.name}: clean {rows[recipe.name]['clean_accuracy']:.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    bundled = None if args.quick or args.no_bundled else bundled_model_table(120)
    write_outputs(rows, bundled, n, args.out)


def merge(paths: list[Path], out: Path) -> None:
    """Merge the ranking.json of runs over parts of the zoo (zoo order) and re-render."""
    payloads = [json.loads(path.read_text()) for path in paths]
    if len({p["samples"] for p in payloads}) != 1:
        raise SystemExit("the runs measured different numbers of test rows; rerun them alike")
    found = {name: row for p in payloads for name, row in p["models"].items()}
    rows = {r.name: found[r.name] for r in ZOO if r.name in found}
    bundled = next((p["bundled"] for p in payloads if p["bundled"]), None)
    write_outputs(rows, bundled, payloads[0]["samples"], out)


def write_outputs(rows: dict[str, dict], bundled: dict | None, n: int, out: Path) -> None:
    """ranking.json first (what --tables-from merges), then, from 3 models on, the tables."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"models": rows, "bundled": bundled, "samples": n}
    if len(rows) >= 3:
        payload["across_models"] = across_models(rows)
    (out / "ranking.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    if len(rows) < 3:
        print(f"measured {len(rows)} models: merge runs with --tables-from for the tables")
        return
    text = markdown(rows, payload["across_models"], bundled, n)
    (out / "ranking.md").write_text(text)
    scatter(rows, out / "ranking.png")
    print(text)


if __name__ == "__main__":
    main()
