"""Error classification: torch's messages map to the rule they report."""

import pytest

from ce_conformance.errors import Rule, classify_error

TORCH_MESSAGES = [
    ("IndexError", "Target 7 is out of bounds.", Rule.TARGET_OUT_OF_BOUNDS),
    ("RuntimeError", "weight tensor should be defined either for all 5 classes or no classes but got weight "
                     "tensor of shape: [4]", Rule.WEIGHT_SHAPE),
    ("RuntimeError", "label_smoothing must be between 0.0 and 1.0. Got: 1.5", Rule.LABEL_SMOOTHING_RANGE),
    ("NotImplementedError", '"log_softmax_lastdim_kernel_impl" not implemented for \'Long\'', Rule.INPUT_DTYPE),
    ("RuntimeError", "expected target dtype to be Long or Byte, but got Int", Rule.TARGET_DTYPE),
    ("RuntimeError", "expected scalar type Long but found Byte", Rule.TARGET_DTYPE),
    ("RuntimeError", "Expected floating point type for target with class probabilities, got Long", Rule.TARGET_DTYPE),
    ("RuntimeError", "ignore_index is not supported for floating point target", Rule.IGNORE_INDEX_WITH_PROBABILITIES),
    ("ValueError", "avg is not a valid value for reduction", Rule.REDUCTION_VALUE),
    ("ValueError", "Expected input batch_size (3) to match target batch_size (2).", Rule.TARGET_SHAPE),
    ("RuntimeError", "0D or 1D target tensor expected, multi-target not supported", Rule.TARGET_SHAPE),
    ("RuntimeError", "Expected target size [2, 3], got [2, 4]", Rule.TARGET_SHAPE),
    ("ValueError", "For 1D input, 1D target must have size 1, but got target size: 2", Rule.TARGET_SHAPE),
    ("RuntimeError", "CUDA error: device-side assert triggered", Rule.TARGET_OUT_OF_BOUNDS),
    # CUDA, int32 targets (seen on an H100, torch 2.11): the dispatch name ends in _index
    ("NotImplementedError", "\"nll_loss_forward_reduce_cuda_kernel_1d_index\" not implemented for 'Int'",
     Rule.TARGET_DTYPE),
    ("NotImplementedError", "\"nll_loss2d_forward_out_cuda_template_index\" not implemented for 'Short'",
     Rule.TARGET_DTYPE),
    ("NotImplementedError", "\"log_softmax_lastdim_kernel_impl\" not implemented for 'Long'", Rule.INPUT_DTYPE),
]


@pytest.mark.parametrize("type_name,message,rule", TORCH_MESSAGES)
def test_torch_messages_are_classified(type_name, message, rule):
    assert classify_error(type_name, message) is rule


def test_unknown_messages_are_unclassified():
    assert classify_error("RuntimeError", "something else went wrong") is None
