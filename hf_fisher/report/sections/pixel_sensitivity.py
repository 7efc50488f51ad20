"""Card subsection and plot of a segmenter's per-pixel sensitivity (``"pixel_sensitivity"``).

The section holds, averaged over the evaluated images, each output pixel's share of lambda_max
along the top eigenvector (which predictions the worst-case perturbation moves) and each input
pixel's share of that eigenvector (where the perturbation sits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_fisher.report.sections._common import format_sig, new_figure, paragraphs, save_figure


def plot_pixel_sensitivity(section: dict, path: str | Path) -> Path:
    """Two heat maps: mean output-pixel shares (model grid) and mean input-pixel shares."""
    figure, axes = new_figure(8, 3.6, columns=2)
    maps = (
        ("mean_output_shares", "output_grid", "output pixels: share of λ_max"),
        ("mean_input_shares", "input_grid", "input pixels: share of the top eigenvector"),
    )
    for axis, (key, grid, title) in zip(axes, maps, strict=True):
        image = axis.imshow(np.asarray(section[key]).reshape(section[grid]), cmap="magma")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(image, ax=axis, fraction=0.046)
    return save_figure(figure, path)


def card_pixel_sensitivity(section: dict) -> str:
    """Markdown: where the most sensitive output pixels and input pixels are, on average."""
    height, width = section["output_grid"]
    shares = np.asarray(section["mean_output_shares"])
    top = int(shares.argmax())
    return paragraphs(
        f"Averaged over {section['num_samples']} images: each output pixel's share of λ_max "
        f"along the top eigenvector u, (J_t u)ᵀ C_t (J_t u) / λ_max, on the model's "
        f"{height}x{width} output grid (not upsampled), and each input pixel's share of |u|². "
        f"The most sensitive output pixel is row {top // width}, column {top % width} "
        f"(mean share {format_sig(float(shares[top]))}; uniform would be "
        f"{format_sig(1 / shares.size)}).",
    )
