"""The GPU-only kernel libraries' adapters (flash-attn, quack, TransformerEngine).

No GPU here: each adapter must say why it cannot run. What can be checked on a CPU is our half of
the contract — each wrapper's mapping of a case onto the library's calling convention — so the
wrappers run here against stand-in modules with the libraries' signatures and documented
semantics (copied from their sources), written in torch, and are judged against the reference
like any adapter. On a GPU with the packages, the real kernels run through the same fuzz."""

import importlib.util
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings

from ce_conformance import reference
from ce_conformance.adapters import FAMILY_ECOSYSTEMS, load_adapter
from ce_conformance.adapters import gpu_kernels_adapter as gpu
from ce_conformance.adapters.library import LibraryAdapter
from ce_conformance.adapters.torch_adapter import TorchAdapter
from ce_conformance.case import all_features, extension_features
from ce_conformance.compare import compare
from ce_conformance.linear_strategies import linear_cross_entropy_cases
from ce_conformance.strategies import SizeLimits, cross_entropy_cases

NAMES = ("flash-attn", "quack", "quack-linear", "transformer-engine")
SMALL = SizeLimits(max_elements=1 << 12, vocab_percent=0)


def test_each_is_listed_and_says_why_it_cannot_run_here():
    assert {"flash-attn", "quack", "transformer-engine"} <= set(FAMILY_ECOSYSTEMS["cross_entropy"])
    assert "quack-linear" in FAMILY_ECOSYSTEMS["linear_cross_entropy"]
    for name in NAMES:
        adapter = load_adapter(name)
        assert isinstance(adapter, LibraryAdapter) and adapter.device == "cuda" and adapter.source.startswith("def ")
        reason = adapter.availability()
        if reason is not None:
            assert "pip install 'ce-conformance[" in reason or "runs Triton kernels on a GPU" in reason, reason


def _stand_ins(torch):
    """Modules with each library's function signature and documented semantics, in torch."""
    F = torch.nn.functional

    class CrossEntropyLoss(torch.nn.Module):  # flash_attn/losses/cross_entropy.py
        def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, logit_scale=1.0,
                     lse_square_scale=0.0, inplace_backward=False, process_group=None, return_z_loss=False):
            super().__init__()
            self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

        def forward(self, input, target, precomputed_lse=None):
            assert input.dim() == 2 and target.dim() == 1
            loss = F.cross_entropy(input.float(), target, ignore_index=self.ignore_index, reduction="none",
                                   label_smoothing=self.label_smoothing)
            if self.reduction == "mean":
                return loss.sum() / (target != self.ignore_index).sum()
            return loss.sum() if self.reduction == "sum" else loss

    def cross_entropy(x, target, lse_partial=None, weight=None, ignore_index=-100, reduction="mean",
                      inplace_backward=False):  # quack/cross_entropy.py
        assert x.dim() == 2
        loss = F.cross_entropy(x.float(), target, weight=None if weight is None else weight.float(),
                               ignore_index=ignore_index, reduction="none")
        if reduction == "mean":
            valid = target != ignore_index
            denom = valid.sum().float() if weight is None else (weight[target.clamp(min=0)] * valid).sum()
            return loss.sum() / denom
        return loss.sum() if reduction == "sum" else loss

    def cross_entropy_fwd(x, target, target_logit=None, weight=None, ignore_index=-100, return_lse=False,
                          return_dx=False, inplace_backward=False):  # quack/cross_entropy.py: per-row, float32
        assert x.dim() == 2
        loss = F.cross_entropy(x.float(), target, weight=None if weight is None else weight.float(),
                               ignore_index=ignore_index, reduction="none")
        return (loss, torch.logsumexp(x.float(), dim=1)) if return_lse else loss

    def chunked_linear_cross_entropy(x, weight, target, chunk_size=4096, ignore_index=-100, reduction="mean",
                                     tuned=True, use_scaled_exp=None):  # quack/linear_cross_entropy.py
        if reduction not in ["mean", "sum"]:
            raise ValueError(f"Invalid reduction: {reduction}")
        assert x.dim() == 2 and weight.dim() == 2
        return F.cross_entropy((x @ weight.T).float(), target, ignore_index=ignore_index, reduction=reduction)

    def parallel_cross_entropy(inp, target, label_smoothing=0.0, reduce_loss=False, dist_process_group=None,
                               ignore_idx=-100, is_cg_capturable=False, *, _input=None):  # transformer_engine
        assert inp.dim() == 3 and target.dim() == 2 and inp.is_contiguous()
        b, sq, v = inp.shape
        loss = F.cross_entropy(inp.reshape(-1, v).float(), target.reshape(-1), ignore_index=ignore_idx,
                               reduction="none", label_smoothing=label_smoothing)
        if reduce_loss:
            return loss.sum() / (target != ignore_idx).sum().clamp(min=1)
        return loss.reshape(b, sq)

    modules = {
        "flash_attn.losses.cross_entropy": {"CrossEntropyLoss": CrossEntropyLoss},
        "quack.cross_entropy": {"cross_entropy": cross_entropy, "cross_entropy_fwd": cross_entropy_fwd},
        "quack.linear_cross_entropy": {"chunked_linear_cross_entropy": chunked_linear_cross_entropy},
        "transformer_engine.pytorch.cross_entropy": {"parallel_cross_entropy": parallel_cross_entropy},
    }
    built = {}
    for name, members in modules.items():
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            built.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        built[name].__dict__.update(members)
    return built


@pytest.fixture
def stand_ins(torch, monkeypatch):
    modules = _stand_ins(torch)
    installed = sorted(root for root in {name.split(".")[0] for name in modules} if importlib.util.find_spec(root))
    if installed:
        pytest.skip(f"{', '.join(installed)} installed: the real modules are not replaced")
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("name,wrapper,capabilities,family", [
    ("flash-attn", gpu.flash_attn_cross_entropy, gpu.FLASH_ATTN_CAPABILITIES, "cross_entropy"),
    ("quack", gpu.quack_cross_entropy, gpu.QUACK_CAPABILITIES, "cross_entropy"),
    ("quack-linear", gpu.quack_chunked_linear_cross_entropy, gpu.QUACK_LINEAR_CAPABILITIES, "linear_cross_entropy"),
    ("transformer-engine", gpu.transformer_engine_cross_entropy, gpu.TRANSFORMER_ENGINE_CAPABILITIES,
     "cross_entropy"),
])
def test_each_wrapper_maps_the_cases_its_library_takes_onto_its_convention(stand_ins, name, wrapper, capabilities,
                                                                           family):
    adapter = TorchAdapter(wrapper, name=name, capabilities=capabilities, family=family)
    dtypes = ["float32", "bfloat16", "float16"]  # they compute in float32: a float64 case is their dialect
    exclude = all_features() - capabilities.features  # as the runner draws for an adapter
    extensions = capabilities.features & extension_features()  # quack's returned lse
    strategy = linear_cross_entropy_cases(dtypes=dtypes, limits=SMALL, exclude=exclude, extensions=extensions) \
        if family == "linear_cross_entropy" else cross_entropy_cases(dtypes=dtypes, limits=SMALL, exclude=exclude,
                                                                     extensions=extensions)
    ran, asked = [], set()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(case):
        if capabilities.missing(case) or (name == "transformer-engine" and case.features & {"all_ignored",
                                                                                          "empty_batch"}):
            return  # TE's mean over no counted position is 0 / 1, not NaN: its dialect, not the mapping's
        if name == "quack" and _weights_indexed_by_an_ignored_class_past_c(case):
            return  # quack's own reduction code fails there (the test below)
        judged = compare(case, adapter.run(case), reference.evaluate(case), capabilities)
        asked.update(case.features & extensions)
        # the libraries return float32 losses for half logits (a dtype finding, theirs): values are the mapping's
        assert {v.check for v in judged.verdicts} <= {"loss_dtype"}, (case, [v.message for v in judged.verdicts])
        ran.append(case)

    check()
    assert len(ran) >= 10, len(ran)
    assert asked == extensions, (asked, extensions)  # each option the wrapper claims was drawn and judged


def _weights_indexed_by_an_ignored_class_past_c(case):
    import numpy as np

    ignore, classes = case.options["ignore_index"], case.input.shape[1]
    return case.weight is not None and case.options["reduction"] == "mean" and ignore >= classes and \
        bool(np.any(case.target == ignore))


def test_quacks_weighted_mean_indexes_the_class_weights_with_ignored_targets(stand_ins, torch):
    """Read in quack's source (``quack/cross_entropy.py``, 2026-08): its ``'mean'`` with class
    weights divides by ``(weight[target.clamp(min=0)] * valid).sum()``, indexing the weights with
    every target, the ignored ones included, so an ``ignore_index`` at or past C (a sentinel such
    as 255 or C itself; torch takes it) raises on the CPU and is an out-of-bounds gather on a GPU.
    The stand-in keeps that line as it is; a GPU run of the real kernel is what confirms it."""
    from ce_conformance.cross_entropy import cross_entropy_case

    case = cross_entropy_case([[0.5, -1.0], [2.0, 0.0]], [1, 2], weight=[1.0, 2.0], ignore_index=2)
    adapter = TorchAdapter(gpu.quack_cross_entropy, name="quack", capabilities=gpu.QUACK_CAPABILITIES)
    outcome = adapter.run(case)
    assert outcome.status == "error" and "out of bounds" in outcome.error.message
    assert {v.check for v in compare(case, outcome, reference.evaluate(case), adapter.capabilities).verdicts} == {
        "error"}
