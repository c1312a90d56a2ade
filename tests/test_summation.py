"""The summation error model against real sequential sums: what a sum loses, which roundings
repeat, and that the model is not far looser than the arithmetic it describes."""

import numpy as np
import pytest

from ce_conformance.summation import (EQUAL_TERM_LANES, LOSS_BANDS, LOST_WEIGHT, any_order_bound, equal_terms_bound,
                                     order_bias, residue_groups, summation_root)
from ce_conformance.tolerance import SIGMAS

U32 = 2.0**-24


def _sequential_error(terms: np.ndarray) -> float:
    """Relative error of a strictly sequential float32 sum (NumPy's cumsum) of ``terms``."""
    exact = terms.astype(np.float64).sum()
    return float((np.cumsum(terms.astype(np.float32), dtype=np.float32)[-1] - exact) / exact)


def test_a_term_below_u_times_the_partial_sum_is_lost_and_a_larger_one_rounds():
    # after a leading 1.0 a term of 0.4 * 2**-24 vanishes in any scale the kernel sums in, one of
    # 1.5 * 2**-24 rounds: only the first is a bias; the second is an ordinary rounding
    lost = summation_root(np.array([[1.0, 0.4 * U32]]), U32)[0]
    kept = summation_root(np.array([[1.0, 1.5 * U32]]), U32)[0]
    # the worse order: 1.0 first (partial sums 1, then lost) or last (partial sums 0.4u, then 1 + 0.4u),
    # at the worst scale (1.0 at a power of two: a whole half ulp of 2**-24)
    assert lost == pytest.approx(1.0 + LOST_WEIGHT * 0.4, rel=1e-6)
    assert kept == pytest.approx(np.sqrt(1.0 + (1.0 + 1.5 * U32) ** 2), rel=1e-9)
    assert np.float32(1.0) + np.float32(0.4 * U32) == np.float32(1.0)  # the arithmetic behind it
    assert np.float32(1.0) + np.float32(1.5 * U32) > np.float32(1.0)


def test_a_term_between_half_and_one_u_times_the_partial_sum_is_lost_at_some_scales_only():
    # 0.9 * 2**-24 after 1.0 vanishes where the kernel's scale puts 1.0 at a power of two (half an ulp
    # is u there) and rounds up a whole ulp where it puts 1.0 just below the next one (half an ulp is
    # u / 2): counted both ways in the cell of scales that straddles the threshold (kept, its
    # rounding is at most (t / u)**2 = 0.9**2 of the continuous one's, up to the band's width), and
    # held at least as the worse of the two
    banded = summation_root(np.array([[1.0, 0.9 * U32]]), U32)[0]
    band_top = 0.9 + 1 / (2 * LOSS_BANDS)
    assert 1.0 + LOST_WEIGHT * 0.9 <= banded <= np.sqrt(1.0 + band_top**2) + LOST_WEIGHT * 0.9
    assert np.float32(1.0) + np.float32(0.9 * U32) == np.float32(1.0)
    assert np.float32(1.9) + np.float32(1.9 * 0.9 * U32) > np.float32(1.9)


def _stepped_sup(terms: np.ndarray, u: float, steps: int = 1024) -> float:
    """sqrt(max over scales lambda and both orders of sum_k (half ulp(lambda s_k) / (u lambda))**2):
    the standard deviation (times sqrt(3) / u) of a sequential sum whose roundings are uniform
    within half an ulp, in the worst scale: a brute-force independent of the model's binning."""
    best = 0.0
    for order in (terms, terms[::-1]):
        partial = np.cumsum(order)
        for scale in np.exp2(np.arange(steps) / steps):
            half_ulp = np.exp2(np.floor(np.log2(scale * partial))) / scale
            best = max(best, float(np.sum(half_ulp**2)))
    return float(np.sqrt(best))


@pytest.mark.parametrize("kind", ["uniform", "exp of normal logits"])
def test_the_stepped_model_bounds_the_worst_scale_and_is_within_5_percent_of_it(kind):
    # a kernel's partial sums round to half an ulp of where they fall in their binade, which
    # depends on the scale it sums in; the continuous model (u s per addition) charged every
    # partial sum the top of its binade at once, 1.22 times the worst single scale
    rng = np.random.default_rng(0)
    terms = rng.uniform(0.5, 1.5, 10000) if kind == "uniform" else np.exp(rng.standard_normal(10000))
    model = summation_root(terms[None, :], U32)[0]
    worst = _stepped_sup(terms, U32)
    continuous = max(np.sqrt((np.cumsum(terms) ** 2).sum()), np.sqrt((np.cumsum(terms[::-1]) ** 2).sum()))
    assert worst <= model <= 1.05 * worst
    assert continuous > 1.15 * model


def test_a_sequential_float32_sum_in_any_scale_errs_as_the_stepped_model_says():
    # 100 rows of 4097 exp terms summed in float32 in both orders at three scales: the errors, in
    # units of the model's sigma, have an rms near 0.86 (the model holds the worst scale) and none
    # comes near the budget's 5
    rng = np.random.default_rng(7)
    z = []
    for _ in range(100):
        x = (2 * rng.standard_normal(4097)).astype(np.float32)
        terms = np.exp(x.astype(np.float64) - x.max()).astype(np.float32)
        sigma = U32 * summation_root(terms.astype(np.float64)[None, :], U32)[0] / np.sqrt(3.0)
        for scale in (1.0, 1.3, 1.7):
            scaled = (terms.astype(np.float64) * scale).astype(np.float32)
            exact = scaled.astype(np.float64).sum()
            for order in (scaled, scaled[::-1]):
                z.append((float(np.cumsum(order, dtype=np.float32)[-1]) - exact) / scale / sigma)
    rms = float(np.sqrt(np.mean(np.square(z))))
    assert 0.6 < rms < 1.0
    assert np.abs(z).max() < 4.5


def test_lost_terms_are_a_bias_held_once_by_the_budget():
    tail = np.full(1000, 0.4 * U32)  # a dominant term, then 1000 terms each below half an ulp
    row = np.concatenate([[1.0], tail])[None, :]
    bias = tail.sum()
    sigma = U32 * summation_root(row, U32)[0] / np.sqrt(3.0)
    assert SIGMAS * sigma == pytest.approx(bias, rel=0.01)
    float32_sum = np.cumsum(row[0].astype(np.float32), dtype=np.float32)[-1]
    assert float(row.sum() - float32_sum) == pytest.approx(bias, rel=1e-3)  # what the sequential sum really drops


@pytest.mark.parametrize("classes, tightness", [(32000, 1 / 20), (262144, 1 / 8)])
def test_the_exp_sum_model_bounds_a_sequential_float32_sum_within_a_few_times_its_error(classes, tightness):
    # standard-normal logits times 2: at C = 262144 the terms a sequential float32 sum drops make
    # its error a bias of ~1400 u, which v2.1's model allowed 13 times over (now ~4.5 times); at
    # C = 32000 the error is a random walk, whose draws lie well inside 5 sigma
    rng = np.random.default_rng(classes)
    worst_ratio = 0.0
    for _ in range(3):
        x = 2 * rng.standard_normal(classes)
        p = np.exp(x - x.max())
        p /= p.sum()
        allowed = SIGMAS * U32 * summation_root(p[None, :], U32)[0] / np.sqrt(3.0)
        errors = [abs(_sequential_error(p)), abs(_sequential_error(p[::-1]))]
        assert max(errors) < allowed
        worst_ratio = max(worst_ratio, max(errors) / allowed)
    assert worst_ratio > tightness  # the budget is not an order of magnitude above the arithmetic


def test_aligned_rows_group_their_terms_by_multiplier_and_residue():
    rows = np.array([[9.0, 0.0, -9.0, 1.0], [1e-3, 2e-3, 3e-3, 4e-3]])  # a coarse grid, then a fine one
    terms = np.array([[0.1, 1.0, 2.0, 3.0], [0.1, 1.0, 2.0, 3.0]])
    groups = residue_groups(rows, terms, np.array([[0.5, 0.5, 0.25, 0.5], [1.0, 1.0, 1.0, 1.0]]), np.float32, U32)
    assert groups[0, 0] == groups[0, 1] == groups[0, 3] != groups[0, 2]  # by multiplier: w a_c are whole numbers
    assert groups[1].tolist() == [0.1, 1.0, 2.0, 3.0]  # the fine row keeps its own terms
    assert residue_groups(rows[1:], terms[1:], np.ones(4), np.float32, U32) is None
    # one multiplier: a small logit on a fine grid gives w a_c a residue modulo 2**-27 (the sum's ulp
    # 2**-21, six binades down) that the others lack; a difference of 2**-22 is a multiple of it,
    # and such terms round alike in every binade below 2**-22, so they stay in one group
    quarter = np.full(4, 0.25)
    split = residue_groups(np.array([[9.0, 2.0**-8 + 2.0**-30, 1.0, -7.0]]), terms[:1], quarter, np.float32, U32)
    assert split[0, 0] == split[0, 2] == split[0, 3] != split[0, 1]
    kept = residue_groups(np.array([[9.0, 9.0 - 2.0**-20, 1.0, -7.0]]), terms[:1], quarter, np.float32, U32)
    assert len(set(kept[0].tolist())) == 1


def test_float16_soft_targets_sum_as_a_random_walk_not_one_bias_per_target_value():
    # float16 soft targets at C = 262144 take a few hundred subnormal values, ~300 classes each;
    # their products with log p share no residue, and a float32 sum of them drifts as a random
    # walk: keyed by the target alone the model allowed 170-210 times what the sum realised
    rng = np.random.default_rng(262144)
    C, ratios = 262144, []
    for _ in range(2):
        x = (2 * rng.standard_normal(C)).astype(np.float16).astype(np.float64)
        t = np.exp(rng.standard_normal(C))
        t = (t / t.sum()).astype(np.float16).astype(np.float64)
        shifted = (x - x.max()).astype(np.float32)
        log_s = np.float32(np.log(np.exp(shifted.astype(np.float64)).sum()))
        terms32 = (t.astype(np.float32) * np.abs(shifted - log_s)).astype(np.float32)
        exact = terms32.astype(np.float64).sum()
        realised = max(abs(float(np.cumsum(order, dtype=np.float32)[-1]) - exact) for order in (terms32, terms32[::-1]))
        terms = (t * np.abs(x - x.max() - float(log_s)))[None, :]
        groups = residue_groups(x[None, :], terms, t[None, :], np.float16, U32)
        allowed = SIGMAS * U32 * summation_root(terms, U32, groups=groups)[0] / np.sqrt(3.0)
        by_target = SIGMAS * U32 * summation_root(terms, U32, groups=np.broadcast_to(t, terms.shape))[0] / np.sqrt(3.0)
        assert realised < allowed < by_target / 5
        ratios.append(realised / allowed)
    assert max(ratios) > 1 / 40  # the budget is within reach of the arithmetic


def test_random_multipliers_sum_as_a_random_walk_and_one_multiplier_linearly():
    rng = np.random.default_rng(0)
    terms = rng.uniform(0.5, 1.5, (1, 20000))
    distinct = summation_root(terms, U32, groups=rng.uniform(0, 1, (1, 20000)))[0]
    one = summation_root(terms, U32, groups=np.ones((1, 20000)))[0]
    assert distinct == pytest.approx(summation_root(terms, U32)[0])
    assert one == pytest.approx(np.cumsum(terms).sum(), rel=0.01)
    assert one > 50 * distinct


def _realised_errors(first: float, term: float, count: int, dtype) -> dict[str, float]:
    """|error| of first + count x term summed in ``dtype`` in the orders kernels use."""
    import math

    terms = np.full(count + 1, term, dtype=dtype)
    terms[0] = first
    exact = math.fsum(terms.astype(np.float64).tolist())  # correctly rounded: within half an ulp of float64

    def error(total):
        return abs(float(total) - exact)

    def lanes(values, width):
        padded = np.concatenate([values, np.zeros(-len(values) % width, dtype=dtype)]).reshape(-1, width)
        return np.cumsum(padded, axis=0, dtype=dtype)[-1].sum(dtype=dtype)

    def target_at(position):  # a sequential sum over the class axis meets the target at its index
        return np.cumsum(np.insert(terms[1:], position, terms[0]), dtype=dtype)[-1]

    def chunks(values, size):  # an online softmax's blocks, each summed from zero, then the block sums
        sums = [np.cumsum(values[k:k + size], dtype=dtype)[-1] for k in range(0, len(values), size)]
        return np.cumsum(np.array(sums, dtype=dtype), dtype=dtype)[-1]

    return {"sequential": error(np.cumsum(terms, dtype=dtype)[-1]),
            "target last": error(np.cumsum(terms[::-1], dtype=dtype)[-1]),
            **{f"target at {k}/8": error(target_at(count * k // 8)) for k in range(1, 8)},
            "8 lanes": error(lanes(terms, 8)), "256 lanes": error(lanes(terms, 256)),
            "48 lanes": error(lanes(terms, 48)), "3 chunks": error(chunks(terms, -(-len(terms) // 3))),
            "blocks of 1024": error(chunks(terms, 1024)), "blocks of 1000": error(chunks(terms, 1000)),
            "np.sum": error(terms.sum(dtype=dtype))}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [1000, 4097, 50257])
def test_equal_terms_bound_holds_every_order_and_is_below_the_linear_bound(dtype, classes):
    # the backward's sum of a smoothed row's upstream terms: C - 1 equal terms eps / C (times
    # the upstream scale) and the target's (1 - eps) + eps / C
    rng = np.random.default_rng(classes)
    u = float(np.finfo(dtype).eps) / 2
    for eps in rng.uniform(0.01, 0.9, 4):
        for scale in (1.0, 1 / 3, 1 / 8):
            term, first = float(dtype(eps / classes * scale)), (1 - eps + eps / classes) * scale
            bound = equal_terms_bound(eps / classes, classes - 1, first / scale, np.dtype(dtype).name, (scale,))
            combination = (np.log2(EQUAL_TERM_LANES) + 1) * u * 1.0  # the lanes' sums combined: K = 1
            for order, error in _realised_errors(first, term, classes - 1, dtype).items():
                assert error / scale <= bound + combination + 2 * u, (order, eps, scale)
            linear = u * (classes - 1) * (1 - eps / 2)  # u times the partial sums, at the least
            assert bound < linear


def test_equal_terms_bound_covers_a_kernel_that_scales_the_sum_instead_of_the_terms():
    # autograd's log-softmax backward sums the unscaled upstream terms and scales their sum: in
    # float64 at C = 128256, eps = 0.001, the partial sums near 1 round away more than those of
    # the scaled terms near 0.2 (the correct family's autograd_order member, K-dim 'mean' over 5)
    classes, eps, scale = 128256, 0.001, 0.2
    first = (1 - eps) + eps / classes
    unscaled = _realised_errors(first, eps / classes, classes - 1, np.float64)["target at 3/8"]
    assert unscaled > equal_terms_bound(eps / classes, classes - 1, first, "float64", (scale,))
    assert unscaled <= equal_terms_bound(eps / classes, classes - 1, first, "float64", (scale, 1.0))


def _tree_sum(values: np.ndarray, dtype) -> float:
    while values.size > 1:
        if values.size % 2:
            values = np.append(values, dtype(0))
        values = (values[0::2] + values[1::2]).astype(dtype)
    return float(values[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("count", [2, 3, 8, 64])
def test_any_order_bound_holds_every_order_and_is_tighter_than_the_random_model_for_few_terms(dtype, count):
    """The reduction over positions: every order (sequential, reversed, a tree, shuffled, largest
    first) errs by less than any_order_bound, and for eight losses the bound is below SIGMAS
    standard deviations of summation_root (which v2.4 charged), not above."""
    import torch

    torch_dtype = getattr(torch, dtype)
    rng = np.random.default_rng([count, len(dtype)])
    worst = 0.0
    for _ in range(200):
        terms = torch.tensor(rng.uniform(0.1, 10.0, count) * rng.choice([1.0, 1e-3], count)).to(torch_dtype)
        exact = float(terms.double().sum())
        bound = any_order_bound(terms.double().numpy(), dtype)
        orders = [terms, terms.flip(0), terms[torch.from_numpy(rng.permutation(count))],
                  terms.sort(descending=True).values, terms.sort().values]
        for ordered in orders:
            sequential = torch.zeros((), dtype=torch_dtype)
            for value in ordered:
                sequential = sequential + value  # rounded to the dtype after every addition
            errors = [abs(float(sequential) - exact)]
            if dtype == "float32":
                errors.append(abs(_tree_sum(ordered.numpy(), np.float32) - exact))
            worst = max(worst, max(errors) / bound if bound else 0.0)
            assert max(errors) <= bound
    assert worst > (0.3 if count <= 8 else 0.1)  # not vacuous: some order comes within a few times of it
    if count == 8:
        losses = np.full(8, 6.58)
        u = 2.0 ** -24
        random_model = SIGMAS * u * summation_root(losses[None, :] * (1 + np.arange(8) * 1e-3), u)[0] / np.sqrt(3)
        assert any_order_bound(losses, "float32") < random_model


@pytest.mark.parametrize("classes, eps", [(4097, 0.1), (32000, 0.5), (128256, 0.01)])
def test_order_bias_holds_the_orders_that_do_not_pick_terms_by_their_residues(classes, eps):
    """Smoothed teacher targets ``t (1 - eps) + eps / C``: where t is tiny the terms sit near eps / C,
    and their additions round alike (K, the backward's sum), and so do their products with
    ``log p`` near one ulp of the partial sums (the loss): the descending order realises
    order_bias, forward and reverse orders stay below it, and the random model alone is short."""
    from ce_conformance.values import probability_values

    rng = np.random.default_rng(classes)
    t = probability_values("teacher", rng, (1, classes), "float32")[0]
    logits = rng.standard_normal(classes) * 2.0
    log_p = logits - np.log(np.exp(logits).sum())
    smoothed = (t.astype(np.float32) * np.float32(1 - eps) + np.float32(eps / classes)).astype(np.float64)
    short = False
    for terms in (smoothed, (smoothed * -log_p).astype(np.float32).astype(np.float64)):
        exact = terms.sum()
        bias = order_bias(terms[None, :], "float32")[0]
        random_model = SIGMAS * U32 * summation_root(terms[None, :], U32)[0] / np.sqrt(3)
        errors = [abs(_sequential_error(ordered) * exact) for ordered in (terms, terms[::-1], np.sort(terms)[::-1])]
        assert max(errors) <= bias + random_model  # what the budget holds: the bias once, beside the walk
        assert errors[2] >= 0.5 * bias  # mostly realised by the descending order: not a loose bound
        short = short or max(errors) > random_model
    assert short  # the case the bias exists for: the random model alone was below a realised error
