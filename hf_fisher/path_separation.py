"""Bernoulli path separation: how differently the classes route their signal through the network.

A reconstruction of the metric of Khaitan & Banerjee, "A New Framework to Analyse the
Distributional Robustness of Deep Neural Networks" (arXiv 2605.21313, 2026), of which only the
abstract and introduction are public. Every choice below is ours; docs/path-separation.md lists
them with the alternatives.

- **Edges.** For a hooked layer (``nn.Linear``, ``nn.Conv2d``, or a module named ``Conv1D``, the
  transposed linear layer of GPT-2-style Hugging Face models) with input activation ``a``, edge
  ``(i, j)`` carries ``e_ij(x) = W_ij a_j(x)``. Convolutions index ``(out-channel, in-channel)``,
  sum the kernel taps, and count each output position as one draw; linear layers on sequences
  count each position as one draw.
- **Bernoulli events.** ``B_ij(x) = 1`` when edge ``j`` is among the edges that carry the top
  ``gamma`` share of unit ``i``'s positive input: ``e_ij > 0`` and the positive input carried by
  strictly larger edges is below ``gamma * sum_k max(e_ik, 0)`` (ties are all in or all out).
- **Class models.** ``theta^c_ij = (hits + 1) / (draws + 2)`` (add-one smoothing) per class ``c``
  and per half ``h`` of the class, from streaming counts: no per-sample edge tensor is kept.
- **Separation.** ``JS`` is the Jensen-Shannon divergence (nats) between two Bernoullis, averaged
  over a layer's edges. Between classes: the mean over class pairs and over the four half pairings
  ``(c, h), (c', h')``; within a class: between its two halves. ``S = between / within``: both
  sides compare groups of the same size, so sampling noise cancels and ``S ~ 1`` means the
  classes are as alike as two random halves of one class. Each sample is assigned to a half by a
  seeded hash of its id, so the split does not depend on batching.
- **Activation-space analogue.** The same statistic on ``B_j(x) = 1[a_j(x) > 0]`` over the layer's
  input units (for convolutions: channels, one draw per input position).

Cost: one forward pass per sample plus, per layer and draw, a sort over the fan-in of every output
unit, ``O(draws * out * in * log in)``; memory ``2 * classes * out * in`` float64 counts per layer
and ``max_elements`` floats of work space (draws and output units are processed in blocks). At
ImageNet scale pass ``classes=`` (a subset) and ``layers=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from torch import Tensor, nn

from hf_fisher.correlation import float_from_json, json_float
from hf_fisher.errors import InputError

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Closed-form pieces


def top_share_events(contributions: Tensor, gamma: float) -> Tensor:  # (..., I) -> (..., I) bool
    """Which edges carry the top ``gamma`` share of each unit's positive input.

    ``B_j = 1`` iff ``e_j > 0`` and ``sum_{k: e_k > e_j} e_k < gamma * sum_k max(e_k, 0)``: the
    smallest set of largest edges whose positive input reaches the share, with ties included.

    Args:
        contributions: edge contributions ``W_ij a_j``, fan-in last.
        gamma: the share, in (0, 1].

    >>> top_share_events(torch.tensor([[3.0, 1.0], [9.0, 1.0], [-1.0, 2.0]]), 0.9).int().tolist()
    [[1, 1], [1, 0], [0, 1]]
    """
    positive = contributions.clamp_min(0)
    total = positive.sum(-1, keepdim=True)
    ordered = positive.sort(-1, descending=True).values
    below = (ordered.cumsum(-1) < gamma * total).sum(-1, keepdim=True)
    threshold = ordered.gather(-1, below.clamp_max(positive.shape[-1] - 1))
    return (positive >= threshold) & (positive > 0)


def bernoulli_js(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats) between ``Bern(p)`` and ``Bern(q)``, elementwise.

    >>> round(bernoulli_js(torch.tensor(0.0), torch.tensor(1.0)).item(), 6)  # log 2
    0.693147
    """
    p, q = p.double(), q.double()
    return _entropy((p + q) / 2) - (_entropy(p) + _entropy(q)) / 2


def _entropy(p: Tensor) -> Tensor:
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def split_halves(sample_ids: Sequence[int], seed: int) -> Tensor:  # (N,) int64 in {0, 1}
    """The half (0 or 1) of each sample: a seeded 64-bit hash of its id (splitmix64 finaliser).

    Depends only on ``(id, seed)``, so any batching of the same samples gives the same split, and
    a bootstrap resample that repeats a sample keeps its copies in one half.

    >>> split_halves([0, 1, 2, 3, 4, 5, 6, 7], seed=0).tolist()
    [1, 0, 0, 1, 0, 1, 1, 0]
    """
    return torch.tensor([_mix(int(i), seed) >> 63 for i in sample_ids], dtype=torch.int64)


def _mix(sample_id: int, seed: int) -> int:
    """splitmix64 of ``(id, seed)``: 64 well-mixed bits."""
    z = (sample_id * 0x9E3779B97F4A7C15 + (seed + 1) * 0xD1B54A32D192ED03) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def poisson_weights(sample_ids: Sequence[int], seed: int, resamples: int) -> Tensor:  # (N, 1+B)
    """Column 0: ones (the data); columns 1..B: Poisson(1) bootstrap weights of each sample.

    The Poisson bootstrap streams (no need to know N) and, like :func:`split_halves`, depends only
    on ``(id, seed)``: every model measured with the same ids and seed sees the same resamples, so
    differences between models have paired intervals.
    """
    columns = [torch.ones(len(sample_ids), 1, dtype=torch.float64)]
    if resamples:
        rows = []
        for sample_id in sample_ids:
            generator = torch.Generator().manual_seed(_mix(int(sample_id), seed + 7919) >> 1)
            rows.append(torch.poisson(torch.ones(resamples, dtype=torch.float64), generator))
        columns.append(torch.stack(rows))
    return torch.cat(columns, dim=1)


# --------------------------------------------------------------------------------------------
# Layers: how each kind of module exposes its edges


@dataclass(frozen=True)
class _Layout:
    """One hooked layer seen as edges: ``e[d, g, o, i] = sum_t weight[g, o, i, t] x[d, g, i, t]``.

    Attributes:
        kind: "linear", "conv1d" or "conv2d".
        weight: (G, O/G, I/G, T).
        draws: input activation (N, ...) -> (N, D, G, I/G, T) edge inputs per draw.
        units: input activation (N, ...) -> (N, D', I) unit activations per draw.
    """

    kind: str
    weight: Tensor
    draws: Callable[[Tensor], Tensor]
    units: Callable[[Tensor], Tensor]


def _rows(a: Tensor) -> Tensor:  # (N, ..., I) -> (N, D, I)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _linear_layout(weight: Tensor, kind: str) -> _Layout:  # weight (O, I)
    return _Layout(
        kind,
        weight.detach()[None, :, :, None],
        lambda a: _rows(a)[:, :, None, :, None],
        _rows,
    )


def _conv2d_layout(module: nn.Conv2d) -> _Layout:
    groups, kernel = module.groups, module.kernel_size
    out_channels, in_per_group = module.weight.shape[:2]
    weight = module.weight.detach().reshape(groups, out_channels // groups, in_per_group, -1)

    def draws(a: Tensor) -> Tensor:
        if a.dim() != 4:
            raise InputError(
                f"a Conv2d input of shape {tuple(a.shape)} is not batched (N, C, H, W); "
                "pass batched inputs"
            )
        patches = F.unfold(a, kernel, module.dilation, module.padding, module.stride)
        patches = patches.reshape(a.shape[0], groups, in_per_group, weight.shape[-1], -1)
        return patches.permute(0, 4, 1, 2, 3)

    def units(a: Tensor) -> Tensor:
        return a.permute(0, 2, 3, 1).reshape(a.shape[0], -1, a.shape[1])

    return _Layout("conv2d", weight, draws, units)


def _layout(module: nn.Module) -> _Layout:
    if isinstance(module, nn.Linear):
        return _linear_layout(module.weight, "linear")
    if isinstance(module, nn.Conv2d):
        return _conv2d_layout(module)
    return _linear_layout(module.weight.t(), "conv1d")  # transformers' Conv1D: weight (I, O)


def _unsupported(module: nn.Module) -> str | None:
    """Why a candidate layer cannot be read as edges (None: it can)."""
    if isinstance(module, nn.Conv2d) and (
        isinstance(module.padding, str) or module.padding_mode != "zeros"
    ):
        return f"padding={module.padding!r}, padding_mode={module.padding_mode!r}"
    return None


def _is_candidate(module: nn.Module) -> bool:
    conv1d = type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None
    return isinstance(module, (nn.Linear, nn.Conv2d)) or (conv1d and module.weight.dim() == 2)


def path_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers path separation can hook, by qualified name, in definition order.

    >>> list(path_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
    ['0', '2']
    """
    return {name: m for name, m in model.named_modules() if _is_candidate(m)}


def _select_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    available = path_layers(model)
    if not available:
        raise InputError(
            f"{type(model).__name__} has no nn.Linear, nn.Conv2d or Conv1D layer: path "
            "separation needs weighted layers to define edges"
        )
    if layers is not None:
        unknown = [name for name in layers if name not in available]
        if unknown or not layers:
            raise InputError(
                f"layers={list(layers)!r}: unknown or empty; choose names among "
                f"{', '.join(list(available)[:12])}{' ...' if len(available) > 12 else ''}"
            )
        available = {name: available[name] for name in layers}
    for name, module in available.items():
        reason = _unsupported(module)
        if reason is not None:
            raise InputError(
                f"layer {name!r} has {reason}, which path separation does not read; pass "
                "layers= without it"
            )
    return available


# --------------------------------------------------------------------------------------------
# Streaming counts


@dataclass
class _Counts:
    """Per-class, per-half, per-replicate weighted counts: hits (2, R, *shape), draws (2, R)."""

    hits: dict[int, Tensor] = field(default_factory=dict)
    draws: dict[int, Tensor] = field(default_factory=dict)

    def add(self, keys: Tensor, hits: Tensor, draws: Tensor) -> None:
        """Add rows ``hits[k]`` / ``draws[k]`` that belong to class-half key ``keys[k]``."""
        for row, key in enumerate(keys.tolist()):
            cls, half = divmod(key, 2)
            if cls not in self.hits:
                self.hits[cls] = torch.zeros((2, *hits.shape[1:]), dtype=torch.float64)
                self.draws[cls] = torch.zeros((2, *draws.shape[1:]), dtype=torch.float64)
            self.hits[cls][half] += hits[row]
            self.draws[cls][half] += draws[row]


def _weighted_sum(values: Tensor, group: Tensor, weights: Tensor, size: int) -> Tensor:
    """Per group ``g``: ``sum_d weights[d, r] values[d]`` -> (size, R, *values.shape[1:])."""
    flat = values.reshape(len(values), -1).to(weights.dtype)
    out = torch.zeros((size, weights.shape[1], flat.shape[1]), dtype=torch.float64)
    for g in range(size):
        rows = group == g
        out[g] = (weights[rows].T @ flat[rows]).cpu()
    return out.reshape(size, weights.shape[1], *values.shape[1:])


@dataclass
class _LayerState:
    name: str
    layout: _Layout
    gamma: float
    max_elements: int
    edges: _Counts = field(default_factory=_Counts)
    units: _Counts = field(default_factory=_Counts)

    def record(self, activation: Tensor, keys: Tensor, weights: Tensor) -> None:
        """Count a batch's events per class, half and replicate; keys -1 are skipped.

        Args:
            activation: (N, ...) the layer's input.
            keys: (N,) ``2 * class + half`` or -1.
            weights: (N, R) float64 replicate weights (column 0: ones).
        """
        keep = keys >= 0
        activation, keys = activation.detach()[keep], keys[keep]
        if keys.numel() == 0:
            return
        unique, group = torch.unique(keys, return_inverse=True)
        group, weights = group.to(activation.device), weights[keep].to(activation.device)
        x = self.layout.draws(activation)  # (N, D, G, I', T)
        self.edges.add(unique, *self._edge_counts(x, group, weights, len(unique)))
        units = self.layout.units(activation)  # (N, D', I)
        on = _weighted_sum((units > 0).sum(1), group, weights, len(unique))
        per_sample = torch.full((len(group),), float(units.shape[1]), device=group.device)
        self.units.add(unique, on, _weighted_sum(per_sample, group, weights, len(unique)))

    def _edge_counts(
        self, x: Tensor, group: Tensor, weights: Tensor, size: int
    ) -> tuple[Tensor, Tensor]:
        weight = self.layout.weight.to(x.device, x.dtype)
        n, d, g, fan_in, _ = x.shape
        out_per_group = weight.shape[1]
        flat = x.reshape(n * d, g, fan_in, -1)
        draw_group, draw_weights = group.repeat_interleave(d), weights.repeat_interleave(d, 0)
        hits = torch.zeros((size, weights.shape[1], g, out_per_group, fan_in), dtype=torch.float64)
        block = max(1, min(out_per_group, self.max_elements // (g * fan_in)))
        chunk = max(1, self.max_elements // (g * block * fan_in))
        for o in range(0, out_per_group, block):
            w = weight[:, o : o + block]
            for s in range(0, n * d, chunk):
                e = torch.einsum("dgit,goit->dgoi", flat[s : s + chunk], w)
                events = top_share_events(e, self.gamma)
                rows = slice(s, s + chunk)
                counted = _weighted_sum(events, draw_group[rows], draw_weights[rows], size)
                hits[:, :, :, o : o + block] += counted
        draws = _weighted_sum(torch.full((n,), float(d), device=x.device), group, weights, size)
        return hits, draws

    def check_batch(self, activation: Tensor, keys: Tensor) -> None:
        """Raise when the layer's input does not have one row per sample of the batch."""
        if activation.dim() < 2 or activation.shape[0] != keys.shape[0]:
            raise InputError(
                f"layer {self.name!r} got an input of shape {tuple(activation.shape)} for a batch "
                f"of {keys.shape[0]} samples; path separation needs one leading row per sample: "
                "pass layers= without it"
            )


# --------------------------------------------------------------------------------------------
# Divergences


def _theta(counts: _Counts, classes: list[int], replicate: int) -> Tensor:  # (2C, E)
    rows = []
    for cls in classes:
        hits = counts.hits[cls][:, replicate].reshape(2, -1)
        rows.append((hits + 1) / (counts.draws[cls][:, replicate, None] + 2))
    return torch.cat(rows)


def _pairwise_js(rows: Tensor, max_elements: int) -> Tensor:  # (M, E) -> (M, M) mean JS
    """Mean over edges of JS between every two rows; row entropies are computed once."""
    entropy = _entropy(rows)
    block = max(1, max_elements // max(1, rows.shape[1]))
    matrix = torch.zeros((rows.shape[0], rows.shape[0]), dtype=torch.float64)
    for r, row in enumerate(rows):
        for s in range(r + 1, rows.shape[0], block):
            mixed = _entropy((row + rows[s : s + block]) / 2)
            js = mixed - (entropy[r] + entropy[s : s + block]) / 2
            matrix[r, s : s + block] = js.mean(1)
    return matrix + matrix.T


def _between_within(
    counts: _Counts, classes: list[int], max_elements: int, replicate: int = 0
) -> tuple[float, float]:
    """Mean JS between classes (all half pairings) and between the two halves of a class."""
    matrix = _pairwise_js(_theta(counts, classes, replicate), max_elements)
    owner = torch.arange(len(classes)).repeat_interleave(2)
    same = owner[:, None] == owner[None, :]
    within = matrix[same & ~torch.eye(len(owner), dtype=torch.bool)].mean()
    return float(matrix[~same].mean()), float(within)


def _ratio(between: float, within: float) -> float:
    return between / within if within > 0 else math.nan


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LayerSeparation:
    """One layer's separation in path (weight x activation) space and in activation space.

    Attributes:
        name, kind: the module's qualified name and "linear", "conv1d" or "conv2d".
        num_edges, num_units: edges ``(out, in)`` and input units of the layer.
        edge_draws, unit_draws: draws counted (samples x positions).
        between, within: mean edge JS between classes and between halves of a class (nats).
        separation: ``between / within`` (NaN when ``within`` is 0).
        activation_between, activation_within, activation_separation: the same for
            ``1[a_j > 0]``.
    """

    name: str
    kind: str
    num_edges: int
    num_units: int
    edge_draws: int
    unit_draws: int
    between: float
    within: float
    separation: float
    activation_between: float
    activation_within: float
    activation_separation: float


_FLOAT_FIELDS = (
    "between",
    "within",
    "separation",
    "activation_between",
    "activation_within",
    "activation_separation",
)
SCORES = ("score", "activation_score", "pooled_score", "excess_score", "activation_excess_score")
"""The model-level numbers; each has a bootstrap interval when ``bootstrap`` > 0."""


def _scores(layers: list[tuple[int, float, float, float, float]]) -> dict[str, float]:
    """Model-level numbers from per-layer (edges, between, within, act_between, act_within)."""
    pooled_between = sum(edges * between for edges, between, *_ in layers)
    pooled_within = sum(edges * within for edges, _, within, *_ in layers)
    return {
        "score": _finite_mean(_ratio(b, w) for _, b, w, _, _ in layers),
        "activation_score": _finite_mean(_ratio(b, w) for *_, b, w in layers),
        "pooled_score": _ratio(pooled_between, pooled_within),
        "excess_score": sum(b - w for _, b, w, _, _ in layers) / len(layers),
        "activation_excess_score": sum(b - w for *_, b, w in layers) / len(layers),
    }


@dataclass(frozen=True)
class PathSeparation:
    """Bernoulli path separation of a model on labelled data (results section ``path_separation``).

    Attributes:
        score: mean over layers of the path separation ``S`` (1: no more separated than random
            halves of a class; larger: classes take more distinct paths). ``S - 1`` grows about
            in proportion to the samples per class: compare models on the same data.
        activation_score: the same mean for the activation-only statistic.
        pooled_score: edge-weighted ``sum_l E_l between_l / sum_l E_l within_l``: the ratio for
            the whole network seen as one product of edge Bernoullis.
        excess_score, activation_excess_score: mean over layers of ``between - within`` (nats):
            the between-class divergence less its sampling noise, about independent of the
            sample size.
        layers: the per-layer profile, in the order the layers ran.
        settings: gamma, seed, classes, sample counts and the fixed definitional choices.
        bootstrap: None, or ``{"resamples": B, "level": 0.95, "intervals": {name: [low, high]},
            "replicates": {name: [B values]}}``: Poisson-bootstrap percentile intervals of
            :data:`SCORES`; the ratios use the full sample's within-class noise in every replicate
            (see :func:`_noise_matched`).
    """

    score: float
    activation_score: float
    pooled_score: float
    excess_score: float
    activation_excess_score: float
    layers: list[LayerSeparation]
    settings: dict
    bootstrap: dict | None = None

    def profile(self) -> dict[str, float]:
        """Per-layer path separation, by layer name."""
        return {layer.name: layer.separation for layer in self.layers}

    def to_json(self) -> dict:
        """Plain-Python dict; NaN becomes None."""
        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row.update({key: json_float(row[key]) for key in _FLOAT_FIELDS})
            layers.append(row)
        data = {key: json_float(getattr(self, key)) for key in SCORES}
        data.update(layers=layers, settings=dict(self.settings), bootstrap=None)
        if self.bootstrap is not None:
            data["bootstrap"] = {
                "resamples": self.bootstrap["resamples"],
                "level": self.bootstrap["level"],
                "intervals": _json_table(self.bootstrap["intervals"]),
                "replicates": _json_table(self.bootstrap["replicates"]),
            }
        return data

    @classmethod
    def from_json(cls, data: dict) -> PathSeparation:
        """Read back :meth:`to_json`."""
        layers = []
        for row in data["layers"]:
            values = dict(row)
            values.update({key: float_from_json(row[key]) for key in _FLOAT_FIELDS})
            layers.append(LayerSeparation(**values))
        boot = data.get("bootstrap")
        if boot is not None:
            boot = dict(boot, intervals=_table_from_json(boot["intervals"]))
            boot["replicates"] = _table_from_json(boot["replicates"])
        return cls(
            **{key: float_from_json(data[key]) for key in SCORES},
            layers=layers,
            settings=dict(data["settings"]),
            bootstrap=boot,
        )


def _json_table(table: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {key: [json_float(v) for v in values] for key, values in table.items()}


def _table_from_json(table: dict[str, list]) -> dict[str, list[float]]:
    return {key: [float_from_json(v) for v in values] for key, values in table.items()}


def _layer_values(
    state: _LayerState, classes: list[int], max_elements: int, replicate: int
) -> tuple[int, float, float, float, float]:
    between, within = _between_within(state.edges, classes, max_elements, replicate)
    act = _between_within(state.units, classes, max_elements, replicate)
    return state.edges.hits[classes[0]][0, 0].numel(), between, within, *act


def _layer_result(state: _LayerState, values: tuple) -> LayerSeparation:
    num_edges, between, within, act_between, act_within = values
    draws = state.edges.draws.values()
    unit_draws = state.units.draws.values()
    return LayerSeparation(
        name=state.name,
        kind=state.layout.kind,
        num_edges=num_edges,
        num_units=next(iter(state.units.hits.values()))[0, 0].numel(),
        edge_draws=int(sum(float(d[:, 0].sum()) for d in draws)),
        unit_draws=int(sum(float(d[:, 0].sum()) for d in unit_draws)),
        between=between,
        within=within,
        separation=_ratio(between, within),
        activation_between=act_between,
        activation_within=act_within,
        activation_separation=_ratio(act_between, act_within),
    )


def _percentile(values: list[float], q: float) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan
    return float(torch.quantile(torch.tensor(finite, dtype=torch.float64), q))


def _noise_matched(replicate: tuple, full: tuple) -> tuple:
    """A replicate's layer values with its within-class noise replaced by the full sample's.

    A resample's halves contain repeated samples, which inflates its within-class divergence
    (the sampling noise) and so shrinks ``between / within`` by about half whatever the data: a
    plain bootstrap of the ratio is biased low. The excess ``between - within`` cancels the noise
    in each replicate, so the replicate ratio is taken as ``1 + excess_b / within_full``.
    """
    edges, between, within, act_between, act_within = replicate
    _, _, full_within, _, full_act_within = full
    return (
        edges,
        between - within + full_within,
        full_within,
        act_between - act_within + full_act_within,
        full_act_within,
    )


def _bootstrap(
    states: list[_LayerState], classes: list[int], max_elements: int, full: list[tuple]
) -> dict | None:
    resamples = next(iter(states[0].edges.draws.values())).shape[1] - 1
    if resamples == 0:
        return None
    rows = []
    for replicate in range(1, resamples + 1):
        values = [_layer_values(s, classes, max_elements, replicate) for s in states]
        rows.append(_scores([_noise_matched(v, f) for v, f in zip(values, full, strict=True)]))
    replicates = {key: [row[key] for row in rows] for key in SCORES}
    intervals = {
        key: [_percentile(values, 0.025), _percentile(values, 0.975)]
        for key, values in replicates.items()
    }
    return {"resamples": resamples, "level": 0.95, "intervals": intervals, "replicates": replicates}


def _summarise(states: list[_LayerState], settings: dict, max_elements: int) -> PathSeparation:
    ran = [state for state in states if state.edges.hits]
    if not ran:
        raise InputError(
            "no selected layer ran in the forward pass (or no sample had a kept label): check "
            "layers=, classes= and the labels"
        )
    counts = ran[0].edges
    classes = sorted(c for c in counts.draws if bool((counts.draws[c][:, 0] > 0).all()))
    if len(classes) < 2:
        raise InputError(
            f"path separation needs at least two classes with samples in both random halves, got "
            f"{len(classes)} (classes seen: {sorted(counts.draws)}): pass more samples per class"
        )
    values = [_layer_values(state, classes, max_elements, 0) for state in ran]
    return PathSeparation(
        **_scores(values),
        layers=[_layer_result(state, v) for state, v in zip(ran, values, strict=True)],
        settings={**settings, "classes": classes},
        bootstrap=_bootstrap(ran, classes, max_elements, values),
    )


# --------------------------------------------------------------------------------------------
# Entry point

Batch = tuple[object, Tensor, list[int]]  # inputs, labels (N,), sample ids


def _take(inputs: Tensor | Mapping[str, Tensor], rows: slice) -> object:
    if isinstance(inputs, Mapping):
        return {key: value[rows] for key, value in inputs.items()}
    return inputs[rows]


def _length(inputs: Tensor | Mapping[str, Tensor]) -> int:
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    return len(inputs)


def _in_memory(
    inputs: Tensor | Mapping[str, Tensor],
    labels: Sequence[int] | Tensor,
    sample_ids: Sequence[int] | None,
    batch_size: int,
) -> Iterable[Batch]:
    total = _length(inputs)
    labels = torch.as_tensor(labels)
    ids = list(range(total)) if sample_ids is None else [int(i) for i in sample_ids]
    if labels.shape != (total,) or len(ids) != total:
        raise InputError(
            f"got {total} inputs, labels of shape {tuple(labels.shape)} and {len(ids)} sample "
            "ids; pass one label (and one id) per input"
        )
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        yield _take(inputs, rows), labels[rows], ids[rows]


def _streamed(batches: Iterable) -> Iterable[Batch]:
    seen = 0
    for item in batches:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError(
                f"each batch must be an (inputs, labels) pair, got {type(item).__name__}; or pass "
                "a tensor of inputs with labels="
            )
        inputs, labels = item[0], torch.as_tensor(item[1])
        yield inputs, labels, list(range(seen, seen + len(labels)))
        seen += len(labels)


def _batches(data: object, labels: object, sample_ids: object, batch_size: int) -> Iterable[Batch]:
    in_memory = isinstance(data, (Tensor, Mapping))
    if in_memory != (labels is not None):
        raise InputError(
            "pass either a tensor (or dict of tensors) of inputs with labels=, or an iterable of "
            "(inputs, labels) batches without labels="
        )
    if sample_ids is not None and not in_memory:
        raise InputError("sample_ids= goes with in-memory inputs; streamed batches use positions")
    if in_memory:
        return _in_memory(data, labels, sample_ids, batch_size)
    return _streamed(data)


def _keys(labels: Tensor, ids: list[int], seed: int, classes: set[int] | None) -> Tensor:
    """Per sample: ``2 * label + half``, or -1 for a label outside ``classes`` (or negative)."""
    labels = labels.long().cpu()
    keys = 2 * labels + split_halves(ids, seed)
    dropped = labels < 0
    if classes is not None:
        dropped |= ~torch.isin(labels, torch.tensor(sorted(classes), dtype=torch.long))
    return torch.where(dropped, -1, keys)


def _check_knobs(gamma: float, batch_size: int, max_elements: int, bootstrap: int) -> None:
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise InputError(f"gamma must be in (0, 1], got {gamma!r}: it is a share of a unit's input")
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("max_elements", max_elements, 1),
        ("bootstrap", bootstrap, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")


def _default_forward(model: nn.Module) -> Callable[[object], object]:
    def forward(inputs: object) -> object:
        return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)

    return forward


def path_separation(
    model: nn.Module,
    data: Tensor | Mapping[str, Tensor] | Iterable,
    labels: Sequence[int] | Tensor | None = None,
    *,
    layers: Sequence[str] | None = None,
    gamma: float = 0.9,
    seed: int = 0,
    classes: Iterable[int] | None = None,
    sample_ids: Sequence[int] | None = None,
    batch_size: int = 64,
    forward: Callable[[object], object] | None = None,
    max_elements: int = 1 << 22,
    bootstrap: int = 0,
) -> PathSeparation:
    """Bernoulli path separation of ``model`` on labelled data (see the module docstring).

    The model is put in eval mode for the pass and each module's mode restored afterwards;
    gradients are off. Counts stream: memory does not grow with the number of samples.

    Args:
        model: the network; its ``nn.Linear``, ``nn.Conv2d`` and ``Conv1D`` layers are hooked.
        data: inputs (N, ...) or a dict of such tensors (Hugging Face keyword inputs), with
            ``labels``; or an iterable of ``(inputs, labels)`` batches.
        labels: (N,) integer class labels for in-memory ``data``; negative labels are skipped.
        layers: qualified module names to use (default: every candidate that runs).
        gamma: share of a unit's positive input whose carrying edges count as "on".
        seed: seed of the random halves (the within-class baseline).
        classes: only these labels (a class subset at large label counts).
        sample_ids: ids that decide each sample's half (default: its position); a bootstrap
            passes the original indices so repeated samples stay in one half.
        batch_size: samples per forward pass for in-memory ``data``.
        forward: runs one batch of inputs through the model (default: ``model(inputs)``, or
            ``model(**inputs)`` for a dict); e.g. a classifier's logit function.
        max_elements: work-space bound (floats) of one block of edge contributions.
        bootstrap: Poisson-bootstrap resamples for 95% intervals of the scores (0: none); they
            cost one pass of counts per resample but no extra forward pass or sort.

    Returns:
        A :class:`PathSeparation` with the score, the per-layer profile and the activation-only
        analogue.

    Raises:
        InputError: a bad knob, unknown layer names, mismatched labels, a layer without one input
            row per sample, or fewer than two classes with samples in both halves.
    """
    _check_knobs(gamma, batch_size, max_elements, bootstrap)
    selected = _select_layers(model, layers)
    batches = _batches(data, labels, sample_ids, batch_size)
    kept = None if classes is None else {int(c) for c in classes}
    states = [_LayerState(n, _layout(m), gamma, max_elements) for n, m in selected.items()]
    current: dict[str, Tensor] = {}

    def hook_for(state: _LayerState) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            state.check_batch(args[0], current["keys"])
            state.record(args[0], current["keys"], current["weights"])

        return hook

    run = forward or _default_forward(model)
    pairs = zip(states, selected.values(), strict=True)
    handles = [module.register_forward_hook(hook_for(state)) for state, module in pairs]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    num_samples = 0
    try:
        with torch.no_grad():
            for inputs, batch_labels, ids in batches:
                current["keys"] = _keys(batch_labels, ids, seed, kept)
                current["weights"] = poisson_weights(ids, seed, bootstrap)
                num_samples += int((current["keys"] >= 0).sum())
                run(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.train(mode)
    settings = {"gamma": float(gamma), "seed": int(seed), "num_samples": num_samples, **_FIXED}
    settings["bootstrap"] = bootstrap
    return _summarise(states, settings, max_elements)


_FIXED = {
    "event": "top-gamma share of each unit's positive input (W_ij a_j)",
    "divergence": "Jensen-Shannon between Bernoullis, nats, mean over edges",
    "baseline": "two random halves of each class (seeded hash of sample id)",
    "smoothing": "add-one",
    "definition": "reconstruction of Khaitan & Banerjee, arXiv 2605.21313",
}

__all__ = [
    "LayerSeparation",
    "PathSeparation",
    "SCORES",
    "bernoulli_js",
    "poisson_weights",
    "path_layers",
    "path_separation",
    "split_halves",
    "top_share_events",
]
