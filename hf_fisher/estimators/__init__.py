"""Estimators over batched operators (or dense tensors) and black-box query functions."""

from hf_fisher.estimators.blackbox import SketchEstimate, rayleigh_max, sketch_fisher
from hf_fisher.estimators.hutchinson import (
    TraceEstimate,
    class_space_hutchinson,
    hutchinson,
    hutchpp,
)
from hf_fisher.estimators.lanczos import EigenEstimate, lanczos
from hf_fisher.estimators.power import power_iteration

__all__ = [
    "EigenEstimate",
    "SketchEstimate",
    "TraceEstimate",
    "class_space_hutchinson",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "power_iteration",
    "rayleigh_max",
    "sketch_fisher",
]
