import itertools
import json
import math

import pytest
import torch
from torch.func import jacrev, vmap

from hf_fisher.errors import InputError, ResultsError
from hf_fisher.estimators.exact import gradient_rows
from hf_fisher.frequency import analyze_frequency
from hf_fisher.frequency_bands import (
    band_energy,
    band_fisher,
    band_index,
    band_projectors,
    project_band,
)
from hf_fisher.iaside import (
    coalition_masks,
    fill_spectra,
    reference_score,
    shapley_values,
    spectral_importance,
    spectral_robustness_score,
    to_pixels,
)
from hf_fisher.report.sections.frequency import plot_frequency, plot_frequency_comparison

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixtures and ground truth


def fourier_filter_model(kind: str, size: int = 16, num_classes: int = 5, seed: int = 0):
    """A fixed linear classifier behind a circular blur (low-pass) or Laplacian (high-pass)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, size * size, generator=generator, dtype=torch.float64) * 0.5
    if kind == "low":
        taps = torch.exp(-(torch.arange(-3, 4, dtype=torch.float64) ** 2) / (2 * 1.5**2))
        kernel = torch.outer(taps, taps) / taps.sum() ** 2
    else:
        kernel = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float64)
    kernel = kernel[None, None]
    pad = kernel.shape[-1] // 2

    def logit_fn(x):
        padded = torch.nn.functional.pad(x.double(), (pad,) * 4, mode="circular")
        return torch.nn.functional.conv2d(padded, kernel).flatten(1) @ weight.T

    return logit_fn


def small_cnn(channels: int, size: int, num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, num_classes),
    ).double()
    return lambda x: net(x)


def dense_fisher(logit_fn, x):  # (N, C, H, W) -> (N, d, d), float64 via jacrev
    jac = vmap(jacrev(lambda xi: logit_fn(xi[None])[0]))(x).flatten(2)  # (N, K, d)
    p = torch.softmax(logit_fn(x), dim=1)
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return jac.transpose(1, 2) @ cov @ jac


def real_fourier_projectors(height: int, width: int, num_bands: int) -> torch.Tensor:
    """P_B = sum of b b^T over an explicit real orthonormal cos/sin basis of each band."""
    bands = band_index(height, width, num_bands)
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    projectors = torch.zeros(num_bands, height * width, height * width, dtype=torch.float64)
    seen = set()
    basis = []
    for ky, kx in itertools.product(range(height), range(width)):
        mirror = ((-ky) % height, (-kx) % width)
        if (ky, kx) in seen:
            continue
        seen.update({(ky, kx), mirror})
        phase = 2 * math.pi * (ky * rows / height + kx * cols / width)
        vectors = [torch.cos(phase)] if mirror == (ky, kx) else [torch.cos(phase), torch.sin(phase)]
        for vector in vectors:
            vector = vector.flatten() / vector.norm()
            basis.append(vector)
            projectors[bands[ky, kx]] += torch.outer(vector, vector)
    basis = torch.stack(basis)
    assert torch.allclose(basis @ basis.T, torch.eye(height * width, dtype=torch.float64))
    return projectors


def images(num: int, channels: int, size: int, seed: int = 1, width: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    shape = (num, channels, size, width or size)
    return torch.rand(shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- bands and projectors


@pytest.mark.parametrize(
    "height, width, num_bands", [(8, 8, 4), (9, 9, 3), (6, 9, 3), (32, 32, 8)], ids=str
)
def test_band_masks_are_hermitian_symmetric_and_cover_every_band(height, width, num_bands):
    bands = band_index(height, width, num_bands)
    mirrored = bands[(-torch.arange(height)) % height][:, (-torch.arange(width)) % width]
    assert torch.equal(bands, mirrored)
    assert set(bands.flatten().tolist()) == set(range(num_bands))
    assert bands[0, 0] == 0


def test_band_edges_follow_the_centred_squares():
    bands = band_index(32, 32, 8)  # sides 0, 4, ..., 32: two integer radii per band
    radius_of = {0: 0, 1: 0, 2: 1, 3: 1, 14: 7, 15: 7, 16: 7}
    for radius, band in radius_of.items():
        assert bands[radius, 0] == band and bands[0, -radius % 32] == band


@pytest.mark.parametrize("shape, num_bands", [((1, 8, 8), 4), ((3, 6, 6), 3), ((2, 6, 9), 3)])
def test_projectors_are_orthogonal_idempotent_and_sum_to_identity(shape, num_bands):
    projectors = band_projectors(shape, num_bands)
    dim = projectors.shape[-1]
    eye = torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(projectors.sum(dim=0), eye, atol=1e-12)
    for a in range(num_bands):
        assert torch.allclose(projectors[a], projectors[a].T, atol=1e-12)
        assert torch.allclose(projectors[a] @ projectors[a], projectors[a], atol=1e-12)
        assert projectors[a].trace() > 0.5
        for b in range(a + 1, num_bands):
            assert torch.allclose(projectors[a] @ projectors[b], torch.zeros_like(eye), atol=1e-12)


@pytest.mark.parametrize("height, width, num_bands", [(8, 8, 4), (6, 9, 3), (7, 7, 3)])
def test_projectors_match_an_explicit_real_fourier_basis(height, width, num_bands):
    expected = real_fourier_projectors(height, width, num_bands)
    assert torch.allclose(band_projectors((1, height, width), num_bands), expected, atol=1e-12)


def test_band_energy_is_the_squared_norm_of_each_projection():
    x = images(3, 2, 8)
    bands = band_index(8, 8, 4)
    expected = torch.stack(
        [project_band(x, bands, b).flatten(1).square().sum(1) for b in range(4)], dim=1
    )
    assert torch.allclose(band_energy(x, bands, 4), expected, atol=1e-12)


# ---------------------------------------------------------------- band-restricted Fisher


@pytest.mark.parametrize("shape, num_bands", [((3, 6, 6), 3), ((1, 8, 8), 4)])
def test_band_fisher_matches_dense_projected_fisher(shape, num_bands):
    logit_fn = small_cnn(shape[0], shape[1], num_classes=4)
    x = images(3, *shape)
    fisher = dense_fisher(logit_fn, x)
    projectors = band_projectors(shape, num_bands)
    result = band_fisher(gradient_rows(logit_fn, x), shape, num_bands)
    restricted = projectors[None] @ fisher[:, None] @ projectors[None]  # (N, M, d, d)
    expected_energy = restricted.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(result.energy, expected_energy, rtol=1e-9, atol=1e-12)
    assert torch.allclose(result.energy.sum(1), result.trace, rtol=1e-10)
    assert torch.allclose(result.trace, fisher.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-9)
    expected_max = torch.linalg.eigvalsh(restricted)[..., -1]
    assert torch.allclose(result.lambda_max, expected_max, rtol=1e-8, atol=1e-12)
    values, vectors = torch.linalg.eigh(fisher)
    assert torch.allclose(result.spectral_norm, values[:, -1], rtol=1e-9)
    top = vectors[:, :, -1]
    expected_fraction = (projectors[None] @ top[:, None, :, None]).squeeze(-1).square().sum(-1)
    assert torch.allclose(result.top_vector_fraction, expected_fraction, atol=1e-8)
    assert torch.allclose(result.top_vector_fraction.sum(1), torch.ones(3, dtype=torch.float64))
    assert (result.lambda_max <= result.spectral_norm[:, None] * (1 + 1e-9)).all()


def test_band_fisher_rejects_a_wrong_image_shape():
    logit_fn = small_cnn(1, 8)
    rows = gradient_rows(logit_fn, images(2, 1, 8))
    with pytest.raises(InputError, match=r"image_shape=\(1, 8, 9\).*length 64"):
        band_fisher(rows, (1, 8, 9), 4)


@pytest.mark.parametrize("kind", ["low", "high"])
def test_fisher_energy_sits_where_the_front_end_passes(kind):
    logit_fn = fourier_filter_model(kind)
    report = analyze_frequency(logit_fn, images(6, 1, 16), shapley=False, num_bands=8)
    share = torch.tensor(report.fisher.to_json()["energy_share"])
    assert share.sum().item() == pytest.approx(1.0, abs=1e-12)
    if kind == "low":
        assert share[:4].sum() > 0.99
    else:
        assert share[4:].sum() > 0.95
    fraction = report.fisher.top_vector_fraction.mean(0)
    assert (fraction[:4].sum() > 0.95) == (kind == "low")


# ---------------------------------------------------------------- Shapley values


def brute_force_shapley(values: torch.Tensor, num_players: int) -> torch.Tensor:
    """Average marginal contribution over all M! orderings."""
    phi = torch.zeros(num_players, dtype=torch.float64)
    orders = list(itertools.permutations(range(num_players)))
    for order in orders:
        coalition = 0
        for player in order:
            phi[player] += values[coalition | (1 << player)] - values[coalition]
            coalition |= 1 << player
    return phi / len(orders)


def test_shapley_values_match_permutation_average_and_are_efficient():
    values = torch.randn(2**4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    phi = shapley_values(values)
    assert torch.allclose(phi, brute_force_shapley(values, 4), atol=1e-12)
    assert phi.sum().item() == pytest.approx((values[-1] - values[0]).item(), abs=1e-12)


def test_symmetric_players_get_equal_values_and_a_dummy_gets_zero():
    masks = coalition_masks(5).double()
    # players 1 and 3 are interchangeable; player 4 never changes the worth
    values = (
        2.0 * masks[:, 0]
        + torch.sqrt(masks[:, 1] + masks[:, 3])
        + 0.7 * masks[:, 2] * (masks[:, 1] + masks[:, 3])
    )
    phi = shapley_values(values)
    assert phi[1].item() == pytest.approx(phi[3].item(), abs=1e-12)
    assert phi[4].item() == pytest.approx(0.0, abs=1e-12)
    assert phi[1].item() != pytest.approx(phi[2].item(), abs=1e-3)


def test_shapley_values_batch_over_leading_dimensions():
    values = torch.randn(3, 2**3, generator=torch.Generator().manual_seed(0))
    phi = shapley_values(values)
    assert torch.allclose(phi[1], shapley_values(values[1]))


def test_shapley_values_reject_a_length_that_is_not_a_power_of_two():
    with pytest.raises(InputError, match="got 6 coalition values"):
        shapley_values(torch.zeros(6))


# ---------------------------------------------------------------- I-ASIDE on models


def test_iaside_values_are_exact_at_the_full_and_empty_coalitions():
    logit_fn = small_cnn(1, 8, num_classes=3)
    x = images(4, 1, 8)
    labels = torch.tensor([0, 1, 2, 1])
    result = spectral_importance(
        logit_fn, x, labels, num_bands=3, fill="zero", pixel_map="clip", batch_size=5
    )
    clean = logit_fn(x).log_softmax(1).gather(1, labels[:, None]).mean()
    empty = logit_fn(torch.zeros_like(x)).log_softmax(1).gather(1, labels[:, None]).mean()
    assert result.values[-1].item() == pytest.approx(clean.item(), abs=1e-10)
    assert result.values[0].item() == pytest.approx(empty.item(), abs=1e-10)
    assert abs(result.efficiency_residual) < 1e-12
    assert result.phi.sum().item() == pytest.approx((clean - empty).item(), abs=1e-10)


@pytest.mark.parametrize("fill", ["zero", "gaussian", "other_image"])
def test_iaside_is_deterministic_and_independent_of_batch_size(fill):
    logit_fn = small_cnn(2, 8, num_classes=3)
    x = images(5, 2, 8)
    run = lambda batch, seed=0: spectral_importance(  # noqa: E731
        logit_fn, x, num_bands=4, fill=fill, seed=seed, batch_size=batch
    )
    first, second, other_batch = run(16), run(16), run(7)
    assert torch.equal(first.values, second.values)
    assert torch.allclose(first.values, other_batch.values, atol=1e-12)
    assert abs(first.efficiency_residual) < 1e-12
    other_seed = run(16, seed=1)
    assert torch.equal(first.values, other_seed.values) == (fill == "zero")


def test_other_image_fill_never_uses_the_image_itself():
    spectra = torch.fft.fft2(images(7, 1, 4))
    filled = fill_spectra(spectra, "other_image", seed=5)
    matches = (filled[:, None] == spectra[None]).flatten(2).all(-1)  # (7, 7)
    assert matches.sum(1).tolist() == [1] * 7
    assert not matches.diagonal().any()
    assert sorted(matches.float().argmax(1).tolist()) == list(range(7))


def test_paper_pixel_map_is_per_image_min_max_of_the_modulus():
    z = torch.complex(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))
    z[1] = 0
    pixels = to_pixels(z, "paper")
    assert pixels[0].min() == 0 and pixels[0].max() == pytest.approx(1.0)
    assert torch.equal(pixels[1], torch.zeros_like(pixels[1]))
    assert torch.equal(to_pixels(z, "clip"), z.real.clamp(0, 1))


@pytest.mark.parametrize("pixel_map", ["paper", "clip"])
@pytest.mark.parametrize("kind", ["low", "high"])
def test_shapley_importance_sits_where_the_front_end_passes(kind, pixel_map):
    logit_fn = fourier_filter_model(kind)
    x = images(12, 1, 16)
    result = spectral_importance(logit_fn, x, num_bands=8, pixel_map=pixel_map, batch_size=512)
    low_share = result.distribution[:4].sum().item()
    if kind == "low":
        assert low_share > 0.75 and result.score > 0
    else:
        assert low_share < 0.25 and result.score < 0
    assert abs(result.efficiency_residual) < 1e-10


# ---------------------------------------------------------------- score


def test_score_is_zero_for_uniform_and_monotone_unlike_the_reference():
    num_bands = 8
    low = torch.nn.functional.one_hot(torch.tensor(0), num_bands).double()
    high = torch.nn.functional.one_hot(torch.tensor(num_bands - 1), num_bands).double()
    path = [t * low + (1 - t) * high for t in torch.linspace(0, 1, 21)]
    scores = [spectral_robustness_score(d) for d in path]
    assert (torch.tensor(scores).diff() > 0).all()
    assert scores[0] < 0 < scores[-1]
    assert spectral_robustness_score(torch.full((8,), 1 / 8)) == pytest.approx(0.0, abs=1e-12)
    reference = [reference_score(d) for d in path]
    assert reference == pytest.approx([abs(s) for s in scores], rel=1e-12)
    assert not (torch.tensor(reference).diff() > 0).all()


def test_score_rejects_beta_outside_the_unit_interval():
    with pytest.raises(InputError, match="beta=1.5"):
        spectral_robustness_score(torch.full((4,), 0.25), beta=1.5)


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fill": "noise"}, "fill='noise'"),
        ({"pixel_map": "abs"}, "pixel_map='abs'"),
        ({"num_bands": 17}, "num_bands=17"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"labels": torch.tensor([0, 1])}, r"labels of shape \(2,\) for 3 images"),
        ({"labels": torch.tensor([0, 1, 9])}, r"labels in \[0, 9\].*3 classes"),
        ({"beta": 0.0}, "beta=0.0"),
    ],
    ids=["fill", "pixel_map", "bands", "batch", "labels_shape", "labels_range", "beta"],
)
def test_spectral_importance_rejects_bad_knobs(kwargs, match):
    with pytest.raises(InputError, match=match):
        spectral_importance(
            small_cnn(1, 8, num_classes=3), images(3, 1, 8), **{"num_bands": 4, **kwargs}
        )


def test_spectral_importance_rejects_bad_images():
    logit_fn = small_cnn(1, 8)
    with pytest.raises(InputError, match=r"shape \(3, 8, 8\)"):
        spectral_importance(logit_fn, images(3, 1, 8)[:, 0])
    with pytest.raises(InputError, match=r"pixel values in \[1.7.*pixels in \[0, 1\]"):
        spectral_importance(logit_fn, images(3, 1, 8) * 255)
    with pytest.raises(InputError, match="at least 2 images"):
        spectral_importance(logit_fn, images(1, 1, 8), num_bands=4)


def test_band_index_rejects_too_many_or_too_few_bands():
    with pytest.raises(InputError, match="num_bands=0"):
        band_index(8, 8, 0)
    with pytest.raises(InputError, match=r"num_bands=8 leaves .* 8x8 images; use num_bands <= 4"):
        band_index(8, 8, 8)


def test_analyze_frequency_needs_a_measurement():
    with pytest.raises(InputError, match="shapley=False and fisher=False"):
        analyze_frequency(small_cnn(1, 8), images(2, 1, 8), shapley=False, fisher=False)


# ---------------------------------------------------------------- report and plots


def test_report_json_and_plots(tmp_path):
    logit_fn = small_cnn(1, 8, num_classes=3)
    report = analyze_frequency(logit_fn, images(4, 1, 8), num_bands=4, batch_size=3)
    section = json.loads(json.dumps(report.to_json()))
    assert section["band_sides"] == [0, 2, 4, 6, 8]
    assert section["fisher"]["num_samples"] == 4
    assert len(section["iaside"]["phi"]) == 4
    assert sum(section["iaside"]["distribution"]) == pytest.approx(1.0)
    single = plot_frequency(section, tmp_path / "one.png")
    both = plot_frequency_comparison({"a": section, "b": section}, tmp_path / "two.png")
    for path in (single, both):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_plots_reject_bad_sections(tmp_path):
    with pytest.raises(ResultsError, match="no 'num_bands'"):
        plot_frequency({"iaside": {}}, tmp_path / "x.png")
    with pytest.raises(ResultsError, match="neither 'iaside' nor 'fisher'"):
        plot_frequency({"num_bands": 4, "iaside": None, "fisher": None}, tmp_path / "x.png")
    with pytest.raises(ResultsError, match="no frequency sections"):
        plot_frequency_comparison({}, tmp_path / "x.png")
    a = {"num_bands": 4, "fisher": {"energy_share": [0.25] * 4}}
    b = {"num_bands": 8, "fisher": {"energy_share": [0.125] * 8}}
    with pytest.raises(ResultsError, match="different numbers of bands"):
        plot_frequency_comparison({"a": a, "b": b}, tmp_path / "x.png")


def test_fill_and_pixel_map_helpers_reject_unknown_names():
    spectra = torch.fft.fft2(images(2, 1, 4))
    with pytest.raises(InputError, match="fill='blur'"):
        fill_spectra(spectra, "blur")
    with pytest.raises(InputError, match="pixel_map='real'"):
        to_pixels(spectra, "real")
