"""The quarantine's bookkeeping, without processes: what it blocks, when, and for whom."""

from ce_conformance.quarantine import QUARANTINE_EVERYTHING_AFTER, Quarantine, case_traits


def test_one_timeout_is_not_a_pattern_and_errors_never_count():
    q = Quarantine()
    assert q.observe("a", "timeout", case_traits({"weights"}, "float32")) is None
    assert q.observe("a", "error", case_traits({"weights"}, "float32")) is None
    assert q.observe("a", "ok", case_traits({"weights"}, "float32")) is None
    assert q.blocks("a", case_traits({"weights"}, "float32")) is None


def test_quarantines_are_per_adapter_and_per_status():
    q = Quarantine()
    for dtype in ("float32", "bfloat16"):
        q.observe("a", "crash", case_traits({"weights", "k_dim"}, dtype))
    assert q.blocks("a", case_traits({"weights", "k_dim", "unbatched"}, "float16")) == \
        "quarantined: crash on k_dim, weights"
    assert q.blocks("b", case_traits({"weights", "k_dim"}, "float16")) is None
    assert q.blocks("a", case_traits({"weights"}, "float16")) is None  # needs every quarantined trait
    assert q.observe("a", "timeout", case_traits({"weights", "k_dim"}, "float16")) is None  # a new status


def test_two_unrelated_hangs_form_two_quarantines():
    q = Quarantine()
    q.observe("a", "timeout", case_traits({"label_smoothing"}, "float32"))
    q.observe("a", "timeout", case_traits({"k_dim"}, "float16"))
    q.observe("a", "timeout", case_traits({"label_smoothing", "weights"}, "bfloat16"))
    q.observe("a", "timeout", case_traits({"k_dim", "unbatched"}, "float64"))
    assert sorted(r["quarantine"] for r in q.summary()) == ["timeout on k_dim", "timeout on label_smoothing"]


def test_hanging_on_everything_quarantines_the_adapter():
    q = Quarantine()
    for i in range(QUARANTINE_EVERYTHING_AFTER - 1):
        q.observe("b", "timeout", {f"only{i}"})
        assert q.blocks("b", {"unrelated"}) is None
    q.observe("b", "timeout", {"last"})
    assert q.blocks("b", {"unrelated"}) == "quarantined: timeout on every case"
