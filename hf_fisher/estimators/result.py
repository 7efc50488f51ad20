"""`FisherSpectrum`: what every registered method returns for a batch of samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from hf_fisher.operators import class_probabilities


@dataclass
class FisherSpectrum:
    """Per-sample Fisher summaries, with the error information of the method that made them.

    Which optional fields a method fills is declared by its
    :class:`~hf_fisher.estimators.spec.Returns` in the registry.

    Attributes:
        spectral_norm: (N,) float64, lambda_max(F).
        trace: (N,) float64, trace(F); ``trace >= spectral_norm`` for every white-box method.
        eigenvalues: (N, top_k) float64, descending (zero-padded past the rank K-1).
        logits: (N, K) float64 logits at the clean inputs.
        method: the method actually used.
        converged: (N,) bool for iterative methods, else None. True means every reported
            eigenvalue is within ``tol`` (relative) of an eigenvalue of F, by residual norms
            (see :class:`~hf_fisher.estimators.lanczos.EigenEstimate`).
        iterations: (N,) products per sample for iterative methods, else None.
        trace_standard_error: (N,) error bar of a stochastic trace (0 where exact): the
            probes' standard error widened for their few-probe uncertainty
            (:func:`~hf_fisher.estimators.hutchinson.student_widening`), else None.
        spectral_norm_ci: (N, 2) interval for black-box sketches, else None.
        trace_ci: (N, 2) interval for black-box sketches, else None.
        num_queries: forward queries per sample (black-box only), else None.
        settings: the estimator knobs used (for provenance).
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids): which Fisher
            was measured and how :attr:`probabilities` are formed.
        output_shares: (N, T) float64 for structured (N, T, K) logits when shares were asked
            for: each output position's share of lambda_max along the top eigenvector u,
            ``(J_t u)^T C_t (J_t u) / lambda_max`` (they sum to 1): which position's prediction
            the worst-case perturbation moves most (in KL, to second order). Else None.
        input_shares: (N, P) float64 when shares were asked for: each input position's (token's
            or pixel's) share of the top eigenvector's squared norm (they sum to 1). Else None.
        eigenvector: (N, d) float64 unit top eigenvector, when shares were asked for; the
            adapter turns it into :attr:`input_shares` (it knows the input layout).
        trace_probes: (N,) long for the white-box matrix-free methods: the probes each
            sample's trace used (class-space probes and exact-trace columns cost one backward
            pass each; input-space probes of "hutchinson" / "hutchpp" one Fisher product
            each). With ``iterations`` (Fisher products) it gives a sample's cost; a batch
            spends its slowest sample's counts. Else None.
    """

    spectral_norm: Tensor
    trace: Tensor
    eigenvalues: Tensor
    logits: Tensor
    method: str
    converged: Tensor | None = None
    iterations: Tensor | None = None
    trace_standard_error: Tensor | None = None
    spectral_norm_ci: Tensor | None = None
    trace_ci: Tensor | None = None
    num_queries: int | None = None
    settings: dict = field(default_factory=dict)
    likelihood: str = "categorical"
    output_shares: Tensor | None = None
    input_shares: Tensor | None = None
    eigenvector: Tensor | None = None
    trace_probes: Tensor | None = None

    def __len__(self) -> int:
        return self.spectral_norm.shape[0]

    @property
    def probabilities(self) -> Tensor:  # (N, K) float64
        """Class probabilities at the clean inputs.

        The softmax of the logits; for a multi-label (bernoulli) model, each class's own
        sigmoid (they need not sum to 1).
        """
        return class_probabilities(self.logits, self.likelihood)

    def attach_shares(self, eigenvector: Tensor, position_terms: Tensor) -> None:
        """Keep the unit top eigenvector (N, d) and, for (N, T) position terms, their shares.

        ``position_terms`` are ``(J_t u)^T C_t (J_t u)``; their sum is ``u^T F u``. A sample
        whose terms are all zero (F = 0) gets zero shares.
        """
        self.eigenvector = eigenvector.double()
        if self.logits.ndim == 3:
            terms = position_terms.double().clamp_min(0)
            total = terms.sum(dim=1, keepdim=True)
            self.output_shares = torch.where(
                total > 0, terms / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0
            )

    @property
    def predicted(self) -> Tensor:  # (N,)
        """The predicted class of each sample: the largest logit.

        For a multi-label model this is the most probable label, and its probability is the
        sigmoid of that logit.
        """
        return self.logits.argmax(dim=1)

    @staticmethod
    def concatenate(parts: Sequence[FisherSpectrum]) -> FisherSpectrum:
        """Join per-batch results in order."""
        first = parts[0]
        joined = {}
        for item in fields(FisherSpectrum):
            values = [getattr(part, item.name) for part in parts]
            if isinstance(values[0], Tensor):
                joined[item.name] = torch.cat([value.cpu() for value in values])
            else:
                joined[item.name] = values[0]
        joined["method"] = first.method
        return FisherSpectrum(**joined)


def pad_eigenvalues(values: Tensor, top_k: int) -> Tensor:  # (N, m) -> (N, top_k)
    """Keep the top ``top_k`` columns, zero-padding past the ones a method found."""
    if values.shape[1] >= top_k:
        return values[:, :top_k]
    return torch.nn.functional.pad(values, (0, top_k - values.shape[1]))
