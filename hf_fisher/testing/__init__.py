"""Test helpers shipped with hf-fisher: tiny seeded model builders and ground-truth tools."""
