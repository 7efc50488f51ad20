"""A text classifier (Fisher w.r.t. input embeddings) and a black-box estimate, side by side.

The classifier is a tiny BERT built from a config with a small local tokenizer, saved and
reloaded like any Hub checkpoint. Run: python examples/text_and_black_box.py
"""

import tempfile

from hf_fisher import fisher_spectrum, load_classifier
from hf_fisher.testing.models import build_bert

texts = ["a wonderful, moving film", "dull", "the plot makes no sense and the acting is worse"]
with tempfile.TemporaryDirectory() as directory:
    classifier = load_classifier(build_bert(directory))
    white = fisher_spectrum(classifier, texts, method="exact")
    black = fisher_spectrum(classifier, texts, black_box=True, num_queries=401)

for text, exact, sketch, (low, high) in zip(
    texts, white.spectral_norm.tolist(), black.spectral_norm.tolist(),
    black.spectral_norm_ci.tolist(), strict=True,
):
    print(f"{text[:40]:<42} exact {exact:.4g}  black-box {sketch:.4g} [{low:.4g}, {high:.4g}]")
