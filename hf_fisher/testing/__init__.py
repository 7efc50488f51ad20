"""Test helpers shipped with hf-fisher: tiny seeded model builders and ground-truth tools."""

from hf_fisher.testing.tolerances import tolerance_for

__all__ = ["tolerance_for"]
