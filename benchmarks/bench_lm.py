"""Causal-LM benchmark: the next-token Fisher of a prompt at vocabularies of 32k and 128k.

For tiny config-built LLaMA-style models (hidden size 64, 2 layers, random weights) and
random prompts, prints per vocabulary size: the cost of one batched no-grad forward, the
"lanczos" method with its defaults (tol 1e-3, informed start, Krylov-deflated trace with 6 to 16
class-space probes) in forward-equivalents per prompt (its time / the forward's time), the same
for lambda_max alone (a randomly started Lanczos, no trace probes: "λ only"), the method's
iterations and trace probes, and its lambda_max error against a tol 1e-9 run.
No (K, d) object is formed: the class-space work of a product is O(K) per prompt. Run:

    python benchmarks/bench_lm.py              # vocab 32000 and 128256, 8 prompts of 16 tokens
    python benchmarks/bench_lm.py --quick      # 4 prompts of 8 tokens
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_fisher.adapters import PreparedBatch
from hf_fisher.adapters.structured import CausalLMClassifier
from hf_fisher.estimators.lanczos import lanczos as lanczos_top
from hf_fisher.operators import FisherOperator
from hf_fisher.spectrum import spectrum_of_prepared

VOCABULARIES = (32_000, 128_256)


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)  # the same weights every run, so figures are comparable across runs
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        attn_implementation="eager", tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval().requires_grad_(False)


class _Tokenizer:
    """The few tokenizer attributes the causal-LM adapter reads (ids go in ready-made)."""

    pad_token = eos_token = "</s>"
    padding_side = "right"
    model_max_length = 128
    all_special_ids: list[int] = []

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"t{index}" for index in ids]


def prompts(classifier, count: int, length: int) -> PreparedBatch:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, classifier.num_classes, (count, length), generator=generator)
    return classifier.prepare({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def timed(fn) -> tuple[float, object]:
    fn()  # warm-up
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench(vocab_size: int, count: int, length: int) -> None:
    model = tiny_llama(vocab_size)
    common = {"id2label": {}, "source": {"id": f"tiny-llama-{vocab_size}"}}
    classifier = CausalLMClassifier(
        model, tokenizer=_Tokenizer(vocab_size), input_space="embeddings", input_shape=None,
        device=torch.device("cpu"), dtype=torch.float32, **common,
    )  # fmt: skip
    classifier._num_classes = vocab_size
    batch = prompts(classifier, count, length)
    ids = list(range(count))

    def forward():
        with torch.no_grad():
            return classifier(batch.inputs, **batch.context)

    def lanczos(tol: float):
        return spectrum_of_prepared(
            classifier, batch, batch_size=None, sample_ids=ids, method="lanczos", tol=tol
        )

    def top_only():  # one forward, then the Lanczos products: no trace probes
        chunk = batch.to(classifier.device, classifier.dtype)
        operator = FisherOperator(classifier.logit_fn(chunk), chunk.inputs, chunk.space_mask)
        return lanczos_top(operator, tol=1e-3, max_iter=100, sample_ids=ids)

    floor, _ = timed(forward)
    top_seconds, _ = timed(top_only)
    seconds, result = timed(lambda: lanczos(1e-3))
    reference = lanczos(1e-9).spectral_norm
    error = ((result.spectral_norm - reference).abs() / reference).max().item()
    print(
        f"{vocab_size:>8} {floor / count * 1e3:>12.2f} {seconds / count * 1e3:>12.1f} "
        f"{seconds / floor:>10.1f} {top_seconds / floor:>10.1f} "
        f"{result.iterations.float().mean():>7.1f} "
        f"{int(result.iterations.max()):>5} {result.trace_probes.float().mean():>7.1f} "
        f"{error:>11.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts of 8 tokens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    count, length = (4, 8) if args.quick else (8, 16)
    print(f"{count} prompts of {length} tokens, 1 thread, float32, Lanczos tol 1e-3")
    print(
        f"{'vocab':>8} {'fwd ms/pr':>12} {'Fisher ms/pr':>12} {'fwd-eq':>10} {'λ only':>10} "
        f"{'iters':>7} "
        f"{'max':>5} {'probes':>7} {'rel. error':>11}"
    )
    for vocab_size in VOCABULARIES:
        bench(vocab_size, count, length)


if __name__ == "__main__":
    main()
