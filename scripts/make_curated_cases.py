"""Regenerate the curated edge cases under cases/curated (replayed first on every run).

Each case pins one corner of the semantics that random generation reaches only rarely: the
vocabulary-scale bf16 row where low-precision accumulation shows, huge common offsets,
all-ignored batches, in-range ignore_index with smoothing and weights, -inf logits, partial
blocks (C = 129, 4097), non-contiguous views, per-element upstream gradients, unbatched and
K-dim outputs, one deliberately invalid call per commonly mishandled rule, and subnormal
products of tiny weights (flush-to-zero kernels).
Run: ``python scripts/make_curated_cases.py``.
"""

from pathlib import Path

import numpy as np

from ce_conformance import Case, Rule

OUT = Path(__file__).resolve().parent.parent / "cases" / "curated"


def main() -> None:
    rng = np.random.default_rng(20261122)
    w5 = np.array([0.5, 2.0, 1.0, 0.0, 3.0])
    x5 = rng.standard_normal((6, 5))
    cases = {
        "vocab_bf16_mean": Case.cross_entropy(rng.standard_normal((2, 32000)), [17, 31999], dtype="bfloat16",
                                              note="bf16, C=32000: low-precision accumulation shows here"),
        "vocab_fp16_none": Case.cross_entropy(rng.standard_normal((2, 50257)), [0, 50256], dtype="float16",
                                              reduction="none", note="fp16, C=50257 (GPT-2 vocabulary)"),
        "offset_1e4_fp32": Case.cross_entropy(rng.standard_normal((4, 7)) + 1e4, [0, 3, 6, 2], dtype="float32",
                                              note="large common offset: (max + log sum) - x_t cancels"),
        "offset_1e8_fp64": Case.cross_entropy(rng.standard_normal((3, 5)) + 1e8, [4, 0, 2], dtype="float64",
                                              reduction="sum"),
        "large_logits_fp32": Case.cross_entropy(rng.standard_normal((3, 6)) * 50 + 100, [1, 2, 5], dtype="float32",
                                                note="exp overflows without max subtraction"),
        "all_ignored_mean": Case.cross_entropy(x5, [-100] * 6, dtype="float32", weight=w5,
                                               note="mean over no counted rows is NaN, gradient 0"),
        "in_range_ignore_smoothing_weights": Case.cross_entropy(
            x5, [1, 2, 2, 0, 4, 2], dtype="float32", weight=w5, ignore_index=2, label_smoothing=0.2,
            note="ignore_index inside [0, C): still in every softmax and smoothing term"),
        "smoothing_weights_none_upstream": Case.cross_entropy(
            x5, [0, 1, -100, 3, 4, 1], dtype="float64", weight=w5, label_smoothing=0.3, reduction="none",
            grad_output=rng.standard_normal(6), note="per-element upstream gradient with weights and smoothing"),
        "kdim_probabilities_weights_smoothing": Case.cross_entropy(
            rng.standard_normal((2, 5, 3, 2)), np.moveaxis(rng.dirichlet(np.ones(5), size=(2, 3, 2)), -1, 1),
            dtype="float32", weight=w5, label_smoothing=0.1, note="K-dim soft targets: mean over positions"),
        "probability_zero_at_neg_inf": Case.cross_entropy(
            [[0.0, -np.inf, 1.0], [2.0, 1.0, 0.0]], [[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]], dtype="float32",
            note="0 * log 0 is NaN, not 0"),
        "neg_inf_logit_smoothing": Case.cross_entropy(
            [[0.0, -np.inf, 1.0, 2.0], [1.0, 2.0, -np.inf, 0.5]], [0, 1], dtype="float32", label_smoothing=0.1,
            reduction="none", note="-inf logit with smoothing: +inf loss, finite gradient"),
        "neg_inf_logit_plain": Case.cross_entropy(
            [[0.0, -np.inf, 1.0, 2.0], [-np.inf, 2.0, -np.inf, 0.5]], [3, 1], dtype="bfloat16", weight=[1, 2, 3, 4]),
        "partial_block_129": Case.cross_entropy(rng.standard_normal((3, 129)) * 3, [128, 0, 64], dtype="float32"),
        "partial_block_4097": Case.cross_entropy(rng.standard_normal((2, 4097)) * 3, [4096, 5], dtype="float32",
                                                 reduction="sum"),
        "transposed_view": Case.cross_entropy(rng.standard_normal((5, 8)), [1, 7, 0, 3, 2], dtype="float32",
                                              memory_layout="transposed", weight=rng.uniform(0.5, 2, 8)),
        "strided_kdim_view": Case.cross_entropy(rng.standard_normal((2, 4, 3)), [[0, 1, 3], [2, 2, 1]],
                                                dtype="float64", memory_layout="strided", reduction="none"),
        "unbatched_none": Case.cross_entropy(rng.standard_normal(6), 4, dtype="float32", reduction="none"),
        "kdim_none_shape": Case.cross_entropy(rng.standard_normal((2, 3, 4, 2)), rng.integers(0, 3, (2, 4, 2)),
                                              dtype="bfloat16", reduction="none"),
        "empty_batch_mean": Case.cross_entropy(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), dtype="float32"),
        "uint8_weights_smoothing": Case.cross_entropy(
            x5, np.array([0, 1, 2, 255, 3, 4], dtype=np.uint8), dtype="float32", target_dtype="uint8", weight=w5,
            ignore_index=255, label_smoothing=0.1, note="torch 2.13 CPU crashes in gather() here (uint8 + weight + smoothing)"),
        "negative_label_smoothing": Case.cross_entropy(x5, [0, 1, 2, 2, 3, 4], dtype="float32", label_smoothing=-0.25,
                                                       note="torch treats it as 0; its docs say [0, 1] (--strict)"),
        "out_of_range_target": Case.cross_entropy(x5, [0, 1, 5, 2, 3, 4], dtype="float32",
                                                  expected_error=Rule.TARGET_OUT_OF_BOUNDS),
        "negative_target": Case.cross_entropy(x5, [0, -1, 2, 2, 3, 4], dtype="float32",
                                              expected_error=Rule.TARGET_OUT_OF_BOUNDS),
        "label_smoothing_above_one": Case.cross_entropy(x5, [0, 1, 2, 2, 3, 4], dtype="float32",
                                                        label_smoothing=1.5,
                                                        expected_error=Rule.LABEL_SMOOTHING_RANGE),
    }
    tiny = np.random.default_rng(7)  # its own generator: the cases above keep their values
    cases["tiny_weights_probabilities_fp32"] = Case.cross_entropy(
        tiny.standard_normal(255) * 10, tiny.uniform(0, 2, 255), dtype="float32",
        weight=tiny.uniform(1.18e-38, 2.35e-38, 255),
        note="probability targets with weights at float32's smallest normal: t * w is subnormal, and a kernel "
             "that flushes subnormals (XLA on CPU) loses those products; correct arithmetic, within the budget")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    for name, case in cases.items():
        case.save(OUT / f"{name}.json")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
