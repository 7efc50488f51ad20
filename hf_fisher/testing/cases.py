"""A reusable test suite for classifiers: subclass, say how to build one, get every engine check.

Example (a complete pytest module for a new architecture)::

    from hf_fisher.testing.cases import FisherEngineTestCase

    class TestMyModel(FisherEngineTestCase):
        def build(self, directory):
            return my_model_builder(directory)         # a directory, nn.Module or Classifier

        def inputs(self, classifier):
            return torch.rand(3, *classifier.input_shape)  # or a list of strings

Every check compares the engine with dense float64 Jacobians computed one sample at a time.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hf_fisher.adapters import Classifier, load_classifier
from hf_fisher.spectrum import fisher_spectrum
from hf_fisher.testing.dense import dense_fisher, dense_spectrum


def dense_truth(classifier: Classifier, raw_inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 eigenvalues (N, d) and traces (N,) of the batch, one sample at a time."""
    batch = classifier.prepare(raw_inputs).to(classifier.device, torch.float64)
    blocks = []
    for index in range(len(batch)):
        one = batch.select([index])
        fisher = dense_fisher(
            classifier.logit_fn(one), one.inputs, one.space_mask, classifier.likelihood
        )
        blocks.append(fisher)
    return dense_spectrum(torch.cat(blocks))


class FisherEngineTestCase:
    """Base class of engine tests; subclasses implement :meth:`build` and :meth:`inputs`.

    Attributes:
        rtol: tolerance of the exact method in float64 (HF eager attention keeps its softmax in
            float32, so attention models need ~1e-5).
        lanczos_tol: tolerance passed to Lanczos and asserted against the truth.
    """

    rtol = 1e-6
    lanczos_tol = 1e-6

    def build(self, directory) -> Any:
        """Return what ``load_classifier`` accepts: a directory, an ``nn.Module``, a Classifier."""
        raise NotImplementedError

    def inputs(self, classifier: Classifier) -> Any:
        """Return a small batch of raw inputs for ``classifier`` (at least two samples)."""
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def case(self, tmp_path_factory):
        """The float64 classifier, its inputs, and their dense spectrum (built once a class)."""
        built = self.build(tmp_path_factory.mktemp(type(self).__name__))
        classifier = load_classifier(built, dtype=torch.float64)
        raw = self.inputs(classifier)
        values, trace = dense_truth(classifier, raw)
        return classifier, raw, values, trace

    def test_exact_matches_dense(self, case):
        """The exact dual gives the dense top eigenvalues and trace."""
        classifier, raw, values, trace = case
        result = fisher_spectrum(classifier, raw, method="exact", top_k=2)
        torch.testing.assert_close(result.eigenvalues, values[:, :2], rtol=self.rtol, atol=1e-12)
        torch.testing.assert_close(result.trace, trace, rtol=self.rtol, atol=1e-12)

    def test_lanczos_converges_to_dense(self, case):
        """Matrix-free Lanczos converges to the dense top eigenvalue within its tolerance."""
        classifier, raw, values, _ = case
        result = fisher_spectrum(classifier, raw, method="lanczos", tol=self.lanczos_tol)
        assert result.converged.all()
        relative = (result.spectral_norm - values[:, 0]).abs() / values[:, 0]
        assert relative.max() <= max(self.lanczos_tol, self.rtol)

    def test_samples_are_independent(self, case):
        """A sample's spectrum does not depend on its batch (eval mode, masks held per sample)."""
        classifier, raw, _, _ = case
        together = fisher_spectrum(classifier, raw, method="exact")
        alone = fisher_spectrum(classifier, raw[1:2], method="exact")
        torch.testing.assert_close(
            alone.spectral_norm, together.spectral_norm[1:2], rtol=self.rtol, atol=1e-12
        )

    def test_model_is_in_eval_mode(self, case):
        """The loader put every submodule in eval mode."""
        classifier = case[0]
        assert not any(module.training for module in classifier.model.modules())
