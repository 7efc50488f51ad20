"""Shared fixtures: tiny seeded models from ``hf_fisher.testing.models``, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from hf_fisher.testing import models

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

IMAGE_BUILDERS = {
    "vit": models.build_vit,
    "resnet": models.build_resnet,
    "convnext": models.build_convnext,
}


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_vit(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_resnet(tmp_path_factory.mktemp("resnet"))


@pytest.fixture(scope="session")
def convnext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_convnext(tmp_path_factory.mktemp("convnext"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def headless_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_headless_resnet(tmp_path_factory.mktemp("headless-resnet"))


@pytest.fixture(params=sorted(IMAGE_BUILDERS), ids=lambda name: name)
def image_model_dir(request: pytest.FixtureRequest) -> Path:
    """Each image architecture in turn (vit, resnet, convnext)."""
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture
def mlp() -> torch.nn.Module:
    """A fresh plain module (train mode) mapping (N, 2, 3, 4) to 4 logits."""
    return models.build_mlp()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return models.DEFAULT_MODEL_DIR
