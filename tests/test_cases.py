"""Every architecture of the test zoo through the shipped engine test case."""

import torch

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
