"""White-box attack cross-check: does a large lambda_max(F) mean a small adversarial distance?

PGD (L2 and Linf) and FGSM run on the same ``logit_fn`` as the Fisher engine, so they perturb the
same input space: pixels in [0, 1] (pass ``clip=(0.0, 1.0)``) or embeddings (``clip=None``),
restricted to ``space_mask`` (text padding stays fixed). Everything is batched over samples.

Per sample, :func:`minimal_epsilon` bisects the smallest budget at which PGD flips the label.
:func:`attack_report` then ranks ``spectral_norm`` against it, side by side with two cheap
baselines (``1 - max p`` and the first-order distance ``margin / ||grad margin||_*``), and
raises AutoAttack-style sanity flags (Croce & Hein 2020): gradient masking, random forward
passes, probability outputs. A gradient-based check can only *fail to find* adversarial
examples; masked gradients make every gradient-based number, lambda_max included, look too good.

One concept per module: :mod:`~hf_fisher.attacks._geometry` (input checks, norms, projection,
clipping, ball sampling), :mod:`~hf_fisher.attacks.gradient` (PGD, FGSM),
:mod:`~hf_fisher.attacks.minimal` (bisection of the minimal epsilon),
:mod:`~hf_fisher.attacks.carlini_wagner` (Carlini-Wagner L2, the minimal-perturbation attack),
:mod:`~hf_fisher.attacks.baselines` (baselines and sanity flags) and
:mod:`~hf_fisher.attacks.cross_check` (:class:`AttackReport`, the results section).
"""

from hf_fisher.attacks._geometry import (
    DUAL_NORM,
    LOSSES,
    NORMS,
    Loss,
    Norm,
    active_dimension,
    check_batch,
    check_clip,
    check_norm,
    lp_norm,
    sample_in_ball,
    select_rows,
)
from hf_fisher.attacks.baselines import (
    GRADIENT_MASKING_WARNING,
    Baselines,
    SanityFlags,
    baseline_scores,
    lipschitz_scores,
    sanity_flags,
    softmax_jacobian_norm,
)
from hf_fisher.attacks.carlini_wagner import (
    CarliniWagnerResult,
    CarliniWagnerSettings,
    carlini_wagner_l2,
)
from hf_fisher.attacks.cross_check import AttackReport, attack_report
from hf_fisher.attacks.gradient import AttackResult, fgsm, pgd
from hf_fisher.attacks.minimal import (
    AttackBudget,
    MinimalEpsilon,
    default_eps_max,
    minimal_epsilon,
)

__all__ = [
    # the cross-check
    "attack_report",
    "AttackReport",
    # attacks
    "pgd",
    "fgsm",
    "AttackResult",
    "carlini_wagner_l2",
    "CarliniWagnerResult",
    "CarliniWagnerSettings",
    "minimal_epsilon",
    "MinimalEpsilon",
    "AttackBudget",
    "default_eps_max",
    # baselines and sanity flags
    "baseline_scores",
    "Baselines",
    "lipschitz_scores",
    "softmax_jacobian_norm",
    "sanity_flags",
    "SanityFlags",
    "GRADIENT_MASKING_WARNING",
    # checks and geometry, shared with the other companion measurements
    "check_batch",
    "check_clip",
    "check_norm",
    "lp_norm",
    "DUAL_NORM",
    "active_dimension",
    "sample_in_ball",
    "select_rows",
    "Norm",
    "Loss",
    "NORMS",
    "LOSSES",
]
