"""Check the three claims of arXiv 2605.21313 with our reconstruction of Bernoulli path separation.

1. Memorisation: the same MLP trained on true and on permuted digit labels, each until it fits its
   training set; the true-label network should separate the held-out classes more.
2. Activation space: the activation-only statistic should separate the two networks less.
3. Shift: separation on clean held-out digits vs Gaussian noise (sigma 0.1, 0.2, 0.3) and a
   brightness/contrast shift should decrease with severity (reported next to accuracy).

Intervals are 2.5-97.5% percentiles over bootstrap resamples of the held-out set (a repeated sample
keeps its half, see ``sample_ids``), per training seed. Writes ``claims.json`` and
``path-separation.png`` to ``--out``; runs on the CPU in about a minute with one thread.

    python scripts/path_separation_claims.py --out docs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_fisher.digits import load_digits_dataset
from hf_fisher.path_separation import path_separation

HIDDEN = 128
MAX_STEPS = 4000
LEARNING_RATE = 1e-3
SHIFTS = {  # name -> (kind, severity)
    "clean": ("none", 0.0),
    "noise 0.1": ("noise", 0.1),
    "noise 0.2": ("noise", 0.2),
    "noise 0.3": ("noise", 0.3),
    "brightness/contrast": ("contrast", 0.0),
}
CONTRAST, BRIGHTNESS = 0.5, 0.4  # x -> clip(0.5 x + 0.4, 0, 1): dimmer strokes on a grey ground


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The native 8x8 scans of a split as (N, 64) floats in [0, 1], and their labels."""
    data = load_digits_dataset(split, upsample=8)
    images = np.stack([np.asarray(image, dtype=np.float32) for image in data["image"]]) / 255.0
    return torch.from_numpy(images.reshape(len(images), -1)), torch.tensor(data["label"])


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 10),
    )


def fit(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[nn.Module, int, float]:
    """Full-batch Adam until every training label is fitted (or MAX_STEPS)."""
    torch.manual_seed(seed)
    model = mlp()
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for step in range(1, MAX_STEPS + 1):
        optimiser.zero_grad()
        logits = model(x)
        nn.functional.cross_entropy(logits, y).backward()
        optimiser.step()
        if step % 25 == 0 and (logits.argmax(1) == y).all():
            break
    return model.eval(), step, accuracy(model, x, y)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def shifted(x: torch.Tensor, kind: str, severity: float, seed: int) -> torch.Tensor:
    if kind == "noise":
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * severity
        return (x + noise).clamp(0, 1)
    if kind == "contrast":
        return (CONTRAST * x + BRIGHTNESS).clamp(0, 1)
    return x


KEYS = ("score", "activation_score", "excess_score", "activation_excess_score")


def measure(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, resamples: int, forward=None
) -> dict:
    """Scores with 95% Poisson-bootstrap intervals; resamples depend only on sample ids and seed,
    so every model and shift here is measured on the same resamples (paired differences)."""
    result = path_separation(model, x, y, batch_size=len(y), bootstrap=resamples, forward=forward)
    boot = result.bootstrap
    summary = {
        key: {
            "value": getattr(result, key),
            "low": boot["intervals"][key][0],
            "high": boot["intervals"][key][1],
            "draws": boot["replicates"][key],
        }
        for key in KEYS
    }
    summary["profile"] = [
        (layer.name, layer.separation, layer.activation_separation) for layer in result.layers
    ]
    return summary


def difference(a: dict, b: dict, key: str) -> dict:
    """Paired bootstrap interval of ``a - b`` (the same resamples were used for both)."""
    values = np.array(a[key]["draws"]) - np.array(b[key]["draws"])
    return {
        "value": a[key]["value"] - b[key]["value"],
        "low": float(np.percentile(values, 2.5)),
        "high": float(np.percentile(values, 97.5)),
    }


def run_seed(seed: int, data: dict, resamples: int) -> dict:
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    permuted = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))]
    record = {"seed": seed}
    for name, labels in (("true", y_train), ("random", permuted)):
        model, steps, train_acc = fit(x_train, labels, seed)
        record[name] = {
            "steps": steps,
            "train_accuracy": train_acc,
            "test_accuracy": accuracy(model, x_test, y_test),
            "clean": measure(model, x_test, y_test, resamples),
        }
        if name == "true":
            record["shift"] = shift_curve(model, x_test, y_test, resamples, seed)
    for key in KEYS:
        record[f"{key}_gap"] = difference(record["true"]["clean"], record["random"]["clean"], key)
    return record


def shift_curve(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, resamples: int, seed: int
) -> dict:
    curve = {}
    for name, (kind, severity) in SHIFTS.items():
        xs = shifted(x, kind, severity, seed + 1000)
        result = measure(model, xs, y, resamples)
        result["accuracy"] = accuracy(model, xs, y)
        curve[name] = result
    return curve


def plot(records: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for record, style in zip(records, ("-", "--", ":"), strict=False):
        for name, colour in (("true", "tab:blue"), ("random", "tab:red")):
            profile = record[name]["clean"]["profile"]
            layers = range(len(profile))
            left.plot(
                layers,
                [p[1] for p in profile],
                style,
                color=colour,
                marker="o",
                label=f"{name} labels, path (seed {record['seed']})",
            )
            left.plot(
                layers,
                [p[2] for p in profile],
                style,
                color=colour,
                marker="x",
                alpha=0.5,
                label=f"{name} labels, activation (seed {record['seed']})",
            )
    left.set_xticks(range(3), ["fc1", "fc2", "fc3"])
    left.set_yscale("log")
    left.set_ylabel("separation S (1 = random halves)")
    left.set_title("Held-out digits: true- vs random-label MLP")
    left.legend(fontsize=6)
    for record in records:
        curve = record["shift"]
        names = list(curve)
        score = [curve[n]["score"] for n in names]
        (line,) = right.plot(
            range(len(names)),
            [v["value"] for v in score],
            marker="o",
            label=f"path S, seed {record['seed']}",
        )
        right.fill_between(
            range(len(names)),
            [v["low"] for v in score],
            [v["high"] for v in score],
            color=line.get_color(),
            alpha=0.2,
        )
    right.set_xticks(range(len(SHIFTS)), list(SHIFTS), rotation=20, fontsize=8)
    right.set_ylabel("path separation S")
    right.set_title("Shifted held-out digits (true-label MLP)")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cell(entry: dict, digits: int = 2) -> str:
    return f"{entry['value']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def table(records: list) -> str:
    """Markdown tables: clean scores per network, paired gaps, and the shift curve."""
    lines = [
        "| seed | labels | steps | train acc | test acc | path S | activation S "
        "| path excess (mnats) | activation excess (mnats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        for name in ("true", "random"):
            r, c = record[name], record[name]["clean"]
            lines.append(
                f"| {record['seed']} | {name} | {r['steps']} | {r['train_accuracy']:.3f} | "
                f"{r['test_accuracy']:.3f} | {cell(c['score'])} | {cell(c['activation_score'])} "
                f"| {cell(milli(c['excess_score']))} "
                f"| {cell(milli(c['activation_excess_score']))} |"
            )
    lines += [
        "",
        "| seed | " + " | ".join(f"gap in {k}" for k in KEYS) + " |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        gaps = [record[f"{k}_gap"] for k in KEYS]
        gaps = [milli(g) if "excess" in k else g for k, g in zip(KEYS, gaps, strict=True)]
        lines.append(f"| {record['seed']} | " + " | ".join(cell(g) for g in gaps) + " |")
    lines += [
        "",
        "| seed | condition | accuracy | path S | activation S | path excess (mnats) |",
        "|---|---|---|---|---|---|",
    ]
    for record in records:
        for name, r in record["shift"].items():
            lines.append(
                f"| {record['seed']} | {name} | {r['accuracy']:.3f} | {cell(r['score'])} | "
                f"{cell(r['activation_score'])} | {cell(milli(r['excess_score']))} |"
            )
    return "\n".join(lines)


def milli(entry: dict) -> dict:
    return {key: 1000 * entry[key] for key in ("value", "low", "high")}


def resnet_shift(resamples: int) -> dict:
    """Claim 3 on the bundled Hugging Face ResNet: 32x32 held-out digits in pixel space."""
    from hf_fisher.adapters import load_classifier
    from hf_fisher.digits import DEFAULT_MODEL_DIR

    classifier = load_classifier(DEFAULT_MODEL_DIR)
    data = load_digits_dataset("test")
    batch = classifier.prepare(list(data["image"]))
    x, y, logits = batch.inputs, torch.tensor(data["label"]), classifier.logit_fn(batch)
    curve = {}
    for name, (kind, severity) in SHIFTS.items():
        xs = shifted(x, kind, severity, 1000)
        result = measure(classifier.model, xs, y, resamples, forward=logits)
        with torch.no_grad():
            result["accuracy"] = float((logits(xs).argmax(1) == y).double().mean())
        curve[name] = result
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=20, help="resamples per interval")
    parser.add_argument(
        "--resnet",
        action="store_true",
        help="only the shift check on the bundled ResNet (writes path-separation-resnet.json)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.resnet:
        return resnet_only(args, started)
    data = {split: digits(split) for split in ("train", "test")}
    records = [run_seed(seed, data, args.bootstrap) for seed in range(args.seeds)]
    args.out.mkdir(parents=True, exist_ok=True)
    plot(records, args.out / "path-separation.png")
    output = {
        "records": records,
        "settings": {
            "hidden": HIDDEN,
            "bootstrap": args.bootstrap,
            "threads": args.threads,
            "contrast": CONTRAST,
            "brightness": BRIGHTNESS,
        },
        "wall_time_s": time.perf_counter() - started,
    }
    (args.out / "path-separation-claims.json").write_text(json.dumps(output, indent=1))
    print(table(records))
    print(f"wall time {output['wall_time_s']:.1f} s")
    return output


def resnet_only(args: argparse.Namespace, started: float) -> dict:
    curve = resnet_shift(args.bootstrap)
    output = {"shift": curve, "bootstrap": args.bootstrap}
    output["wall_time_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "path-separation-resnet.json").write_text(json.dumps(output, indent=1))
    print("| condition | accuracy | path S | activation S | path excess (mnats) |")
    print("|---|---|---|---|---|")
    for name, r in curve.items():
        print(
            f"| {name} | {r['accuracy']:.3f} | {cell(r['score'])} | "
            f"{cell(r['activation_score'])} | {cell(milli(r['excess_score']))} |"
        )
    print(f"wall time {output['wall_time_s']:.1f} s")
    return output


if __name__ == "__main__":
    main()
