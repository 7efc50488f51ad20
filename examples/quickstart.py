"""Per-sample Fisher spectra of the bundled digits ResNet on five real test digits.

Run: python examples/quickstart.py
"""

from hf_fisher import fisher_spectrum
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset

digits = load_digits_dataset("test").select(range(5))
result = fisher_spectrum(DEFAULT_MODEL_DIR, list(digits["image"]), top_k=3)

print(f"method: {result.method}")
for label, predicted, norm, trace, top in zip(
    digits["label"], result.predicted.tolist(), result.spectral_norm.tolist(),
    result.trace.tolist(), result.eigenvalues.tolist(), strict=True,
):
    print(f"label {label} predicted {predicted}  lambda_max {norm:8.4f}  trace {trace:8.4f}  "
          f"top-3 {[round(v, 4) for v in top]}")
