"""Build the example leaderboard in docs/leaderboard/ from real models (offline, ~1 min on CPU).

Trains three more tiny Hugging Face classifiers on the digits "train" split (a ViT, a ConvNeXt and
the bundled ResNet's architecture trained with Gaussian pixel noise), evaluates them and the bundled
ResNet with ``hf_fisher.evaluate_robustness`` on all 360 "test" digits (exact method, seed 0),
writes one submission each to ``docs/leaderboard/submissions/``, builds
``docs/leaderboard/leaderboard.md`` and ``docs/leaderboard/index.html``, and screenshots the page
into ``docs/leaderboard.png`` with headless Chromium. Checkpoints and results.json files go to
``runs/example-leaderboard/`` (git-ignored); nothing is downloaded.

    python scripts/example_leaderboard.py

Run as a script, ``scripts/`` is first on ``sys.path``, so the bundled model's recipe and helpers
are imported from ``train_default_model``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from train_default_model import BATCH_SIZE, SEED, WEIGHT_DECAY, accuracy, build_model, pixel_values
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_fisher import evaluate_robustness
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.report import build_leaderboard, load_reportable_results, make_submission

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/example_leaderboard.py"
RUNS_DIR = REPO_ROOT / "runs" / "example-leaderboard"
SITE_DIR = REPO_ROOT / "docs" / "leaderboard"
SCREENSHOT = REPO_ROOT / "docs" / "leaderboard.png"
TITLE = "hf-fisher leaderboard: scikit-learn digits, test split"
DATASET_NAME = "sklearn-digits"
NOISE_STD = 0.1  # Gaussian noise augmentation, in [0, 1] pixel units
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def _labels() -> dict:
    names = [str(digit) for digit in range(10)]
    return {
        "num_labels": 10,
        "id2label": dict(enumerate(names)),
        "label2id": {name: index for index, name in enumerate(names)},
    }


def build_vit() -> ViTForImageClassification:
    """A 4-layer, 64-wide ViT on 4x4 patches of the 32x32 greyscale digits."""
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=128, **_labels(),
    )
    return ViTForImageClassification(config)


def build_convnext() -> ConvNextForImageClassification:
    """A two-stage ConvNeXt (widths 32, 64) with a 2x2 patchify stem."""
    config = ConvNextConfig(
        num_channels=1, patch_size=2, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1],
        image_size=32, **_labels(),
    )
    return ConvNextForImageClassification(config)


@dataclass(frozen=True)
class Entry:
    """One leaderboard row: how its model is made (``build=None``: the bundled checkpoint)."""

    slug: str
    name: str
    footnote: str
    build: Callable[[], PreTrainedModel] | None = None
    epochs: int = 0
    learning_rate: float = 0.0
    noise_std: float = 0.0


ENTRIES = (
    Entry(
        "digits-resnet", "digits-resnet (bundled)",
        f"the default model; scripts/train_default_model.py, seed {SEED}",
    ),
    Entry(
        "digits-resnet-noise", "digits-resnet + noise",
        f"pixel-noise σ={NOISE_STD} ResNet by scripts/example_leaderboard.py, seed {SEED}",
        build_model, epochs=8, learning_rate=3e-3, noise_std=NOISE_STD,
    ),
    Entry(
        "digits-vit", "digits-vit",
        f"tiny ViT trained by scripts/example_leaderboard.py, seed {SEED}",
        build_vit, epochs=30, learning_rate=2e-3,
    ),
    Entry(
        "digits-convnext", "digits-convnext",
        f"tiny ConvNeXt trained by scripts/example_leaderboard.py, seed {SEED}",
        build_convnext, epochs=20, learning_rate=3e-3,
    ),
)


def fit(
    entry: Entry,
    inputs: torch.Tensor,  # (N, 1, 32, 32), normalised as by the saved processor
    labels: torch.Tensor,  # (N,)
    pixel_std: float,
) -> PreTrainedModel:
    """Build and train ``entry``'s model from seed SEED; return it in eval mode.

    Trains like scripts/train_default_model.py (AdamW, one-cycle schedule), plus optional input
    noise: ``entry.noise_std`` is in [0, 1] pixel units and the inputs are normalised, so the noise
    added to them is divided by the processor's ``image_std`` (``pixel_std``).
    """
    torch.manual_seed(SEED)
    model = entry.build()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=entry.learning_rate, weight_decay=WEIGHT_DECAY
    )
    steps = entry.epochs * -(-len(labels) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, entry.learning_rate, total_steps=steps
    )
    order_generator = torch.Generator().manual_seed(SEED)
    noise_generator = torch.Generator().manual_seed(SEED + 1)
    model.train()
    for _ in range(entry.epochs):
        for batch in torch.randperm(len(labels), generator=order_generator).split(BATCH_SIZE):
            x = inputs[batch]
            if entry.noise_std:
                noise = torch.randn(x.shape, generator=noise_generator)
                x = x + noise * (entry.noise_std / pixel_std)
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def train_entries(runs_dir: Path) -> dict[str, Path]:
    """Train every non-bundled entry; return each entry's checkpoint directory."""
    processor = ViTImageProcessor.from_pretrained(DEFAULT_MODEL_DIR)  # the bundled model's
    train_set, test_set = load_digits_dataset("train"), load_digits_dataset("test")
    train_x = pixel_values(processor, list(train_set["image"]))
    test_x = pixel_values(processor, list(test_set["image"]))
    train_y, test_y = torch.tensor(train_set["label"]), torch.tensor(test_set["label"])
    checkpoints = {"digits-resnet": DEFAULT_MODEL_DIR}
    for entry in ENTRIES:
        if entry.build is None:
            continue
        start = time.perf_counter()
        model = fit(entry, train_x, train_y, processor.image_std[0])
        directory = runs_dir / entry.slug
        if directory.exists():
            shutil.rmtree(directory)
        model.save_pretrained(directory, safe_serialization=True)
        processor.save_pretrained(directory)
        checkpoints[entry.slug] = directory
        print(
            f"{entry.slug}: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"train accuracy {accuracy(model, train_x, train_y):.4f}, "
            f"test accuracy {accuracy(model, test_x, test_y):.4f}, "
            f"{time.perf_counter() - start:.1f} s"
        )
    return checkpoints


def display_id(path: Path) -> str:
    """The checkpoint as a repo-relative path, so committed files hold no machine paths."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def write_submissions(checkpoints: dict[str, Path], runs_dir: Path, site_dir: Path) -> None:
    """Evaluate each checkpoint on all test digits and write its leaderboard submission."""
    test_set = load_digits_dataset("test")
    test_set.info.dataset_name = DATASET_NAME  # the name the bundled default run reports
    submissions_dir = site_dir / "submissions"
    submissions_dir.mkdir(parents=True, exist_ok=True)
    for entry in ENTRIES:
        results_dir = runs_dir / "results" / entry.slug
        report = evaluate_robustness(
            str(checkpoints[entry.slug]), test_set, split="test", method="exact", seed=SEED,
            out_dir=results_dir, overwrite=True, progress=False,
        )
        results = load_reportable_results(results_dir / "results.json")
        if entry.build is not None:
            results["model"]["id"] = display_id(checkpoints[entry.slug])
        submission = make_submission(results, name=entry.name, footnote=entry.footnote)
        path = submissions_dir / f"{entry.slug}.json"
        path.write_text(json.dumps(submission, indent=2, ensure_ascii=False) + "\n", "utf-8")
        low, high = submission["median_kl_radius_ci"]
        print(
            f"{entry.slug}: clean accuracy {submission['clean_acc']}%, median KL radius "
            f"{submission['median_kl_radius']:.4g} [{low:.4g}, {high:.4g}], "
            f"{report.results['environment']['wall_time_s']:.1f} s -> {display_id(path)}"
        )


def screenshot(html_path: Path, png_path: Path, chromium: str, window_size: str) -> None:
    """Render the page sorted by median KL radius in headless Chromium and save a PNG."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={window_size}", f"--screenshot={png_path}",
                html_path.resolve().as_uri() + "#sort=-median_kl_radius",
            ],
            check=True, capture_output=True, timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="checkpoints, results")
    parser.add_argument("--site-dir", type=Path, default=SITE_DIR, help="submissions and site")
    parser.add_argument("--screenshot", type=Path, default=SCREENSHOT)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--window-size", default="1910,470", help="WIDTH,HEIGHT in pixels")
    parser.add_argument(
        "--site-only",
        action="store_true",
        help="rebuild the site and screenshot from the committed submissions, without training",
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    start = time.perf_counter()
    if not args.site_only:
        checkpoints = train_entries(args.runs_dir)
        write_submissions(checkpoints, args.runs_dir, args.site_dir)
    md_path, html_path = build_leaderboard(args.site_dir / "submissions", args.site_dir, TITLE)
    screenshot(html_path, args.screenshot, args.chromium, args.window_size)
    print(
        f"wrote {display_id(md_path)}, {display_id(html_path)} and "
        f"{display_id(args.screenshot)} in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
