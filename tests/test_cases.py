"""The engine's case table over the test zoo, the shipped subclass API, and eval mode."""

import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.spectrum import fisher_spectrum
from hf_fisher.testing import models
from hf_fisher.testing.cases import (
    ESTIMATOR_CASES,
    METHODS_UNDER_TEST,
    MODEL_CASES,
    FisherEngineTestCase,
)


class TestZoo(FisherEngineTestCase):
    """ResNet, ConvNeXt, ViT, BERT and a plain module x every method x float32/float64."""

    models = MODEL_CASES


class TestSubclassApi(FisherEngineTestCase):
    """The README's few-line subclass: a model from build() and inputs()."""

    def build(self, directory):
        return models.build_mlp(input_shape=(5,), num_classes=3)

    def inputs(self, classifier):
        return torch.randn(8, 5, generator=torch.Generator().manual_seed(1))


def test_every_registered_method_has_a_row():
    assert sorted(ESTIMATOR_CASES) == sorted(METHODS_UNDER_TEST)
    assert "auto" not in METHODS_UNDER_TEST


def test_train_mode_is_measured_in_eval_mode_and_restored(resnet_dir):
    """BatchNorm in train mode couples samples: the engine measures in eval mode, then restores."""
    classifier = load_classifier(resnet_dir, dtype=torch.float64)
    inputs = torch.rand(4, *classifier.input_shape, generator=torch.Generator().manual_seed(0))
    expected = fisher_spectrum(classifier, inputs, method="exact")
    classifier.model.train()
    classifier.model.resnet.embedder.eval()  # a caller's mixed state comes back as it was
    flags = [module.training for module in classifier.model.modules()]
    measured = fisher_spectrum(classifier, inputs, method="exact")
    torch.testing.assert_close(measured.spectral_norm, expected.spectral_norm, rtol=1e-10, atol=0)
    assert [module.training for module in classifier.model.modules()] == flags


def test_a_plain_module_gets_its_training_flags_back(mlp):
    """``fisher_spectrum(module)`` switches a train-mode module to eval only while it measures."""
    assert mlp.training
    fisher_spectrum(mlp, torch.randn(3, 2, 3, 4), method="exact")
    assert all(module.training for module in mlp.modules())
