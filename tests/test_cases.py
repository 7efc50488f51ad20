"""Every architecture of the test zoo through the shipped engine test case."""

import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.spectrum import fisher_spectrum
from hf_fisher.testing import models
from hf_fisher.testing.cases import FisherEngineTestCase


class ImageCase(FisherEngineTestCase):
    def inputs(self, classifier):
        generator = torch.Generator().manual_seed(0)
        return torch.rand(3, *classifier.input_shape, generator=generator, dtype=torch.float64)


class TestResNet(ImageCase):
    def build(self, directory):
        return models.build_resnet(directory)


class TestConvNext(ImageCase):
    def build(self, directory):
        return models.build_convnext(directory)


class TestViT(ImageCase):
    rtol = 1e-5  # HF eager attention computes its softmax in float32

    def build(self, directory):
        return models.build_vit(directory)


class TestBert(FisherEngineTestCase):
    rtol = 1e-5

    def build(self, directory):
        return models.build_bert(directory)

    def inputs(self, classifier):
        return ["a fine film", "awful", "a long story about nothing at all, told slowly"]


class TestPlainModule(ImageCase):
    def build(self, directory):
        return models.build_mlp(dtype=torch.float64)

    def inputs(self, classifier):
        generator = torch.Generator().manual_seed(0)
        return torch.randn(4, 2, 3, 4, generator=generator, dtype=torch.float64)


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
