"""The packaged conformance suite, collected by the pytest plugin when ``--ce-impl`` is given.

One test per feature family: a failing id such as ``test_feature_family[label_smoothing]``
names the broken feature, and its message holds the minimal case and the replay command.
"""

import pytest

from ce_conformance.pytest_plugin import FEATURE_FAMILIES, skip_unavailable, warn_reported


@pytest.fixture(scope="module")
def ce_impl(ce_session):
    from ce_conformance.adapters import user_adapter
    from ce_conformance.baseline import Baseline
    from ce_conformance.pytest_plugin import _setting

    config = ce_session.config
    spec, kind, loss_family = _setting(config, "impl"), _setting(config, "kind"), _setting(config, "family")
    if not spec:
        pytest.skip("no implementation given (--ce-impl)")
    baseline = _setting(config, "baseline")
    adapter = user_adapter(spec, kind, features=_setting(config, "features"), device=_setting(config, "device"),
                           family=loss_family)
    skip_unavailable(adapter)
    return spec, kind, loss_family, adapter, Baseline.load(baseline) if baseline else None


@pytest.mark.ce_conformance
@pytest.mark.parametrize("family", list(FEATURE_FAMILIES))
def test_feature_family(family, ce_impl, ce_session):
    from ce_conformance.case import FAMILIES

    spec, kind, loss_family, adapter, baseline = ce_impl
    require, plain = FEATURE_FAMILIES[family]
    if not require <= FAMILIES[loss_family].requirable:
        pytest.skip(f"{loss_family} cases have no {family} variant")
    result = ce_session.run(adapter, name=f"{spec}-{family}", require=require, plain=plain, baseline=baseline,
                            impl_spec=spec, impl_kind=kind, family=loss_family)
    ran = result.summary.results
    if not result.passed:
        pytest.fail(f"{spec}: {family}: {len(result.new)} finding(s)\n\n{result.report(spec, kind)}", pytrace=False)
    warn_reported(result, f"{spec}: {family}")
    if ran == 0:
        pytest.skip(f"{spec} supports no case of this family (see --ce-features)")
