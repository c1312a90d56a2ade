"""The phases of a fuzz run, in order: curated, covering, explore, shrink.

1. **curated** — every JSON case under the curated directories is replayed first.
2. **covering** — a constrained covering array (:mod:`ce_conformance.covering`): every pair
   and, in the ci and nightly profiles, every triple of option values occurs in a valid case;
   the first rows are the fp32/bf16 vocabulary-scale configurations of LLM training; rows run
   again with the extension options adapters claim, each option meeting every level
   (:mod:`ce_conformance.covering_extensions`).
3. **explore** — Hypothesis draws cases with the profile's settings and seed, steered with
   ``hypothesis.target`` toward the worst error-to-budget ratio; the probe never raises, so
   one bug does not stop the search for others. A draw whose scale cell is over its share of
   judging time (:mod:`ce_conformance.budget`, ``--cell-share``) is deferred, recorded as skipped.
4. **shrink** — for each distinct (adapter, check) failure, Hypothesis runs again with only
   that adapter, raising when the failure reappears, and shrinks it. It starts from the very
   draw that exposed the failure during exploration (its choice sequence is replayed from an
   in-memory example database, as ``hypothesis.find`` does), so a failure that targeting
   reached once is shrunk too, not only those that plain generation happens to re-find. With
   ``--database`` minimal failures are also stored, and the next run replays them first.

Each phase is a function of the :class:`~ce_conformance.runner.FuzzRun` (or its config), which
owns evaluation, recording and the run's bookkeeping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hypothesis import Phase, given, seed as hypothesis_seed, settings as hypothesis_settings, target
from hypothesis.control import current_build_context
from hypothesis.database import InMemoryExampleDatabase, MultiplexedDatabase, choices_to_bytes

from .budget import scale_cell
from .case import FAMILIES, Case
from .covering import ANCHORS, covering_rows, excluded_levels
from .covering_extensions import extension_cases
from .dtypes import FLOAT_DTYPES
from .profiles import covering_strength_for, settings_for, size_limits_for

if TYPE_CHECKING:
    from .compare import Verdict
    from ce_conformance.adapters.base import Adapter

    from .runner import FuzzConfig, FuzzRun

_PLAIN_FEATURES = frozenset({"single_class"})
TARGET_LABEL = "worst error / budget"


class Reproduced(Exception):
    """Raised by the probe in shrink mode when the sought failure reappears."""


# -- curated ------------------------------------------------------------------------------------
def load_curated(config: "FuzzConfig") -> list[tuple[Case, str]]:
    found = [(c, "") for c in config.extra_cases]
    for directory in config.curated_dirs:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.json")):
            found.append((Case.load(path), str(path)))
    return [(case, path) for case, path in found if wanted(config, case)]


def wanted(config: "FuzzConfig", case: Case) -> bool:
    """Curated and covering cases are filtered like drawn ones: required features, allowed dtypes."""
    if case.family != config.family:  # a curated case of another family: no adapter of this run takes it
        return False
    required = config.require - {"invalid_input"}
    if "invalid_input" in config.require and case.is_valid:
        return False
    if config.plain and case.features - required - _PLAIN_FEATURES:
        return False
    # an invalid case in a float dtype the run left out would test the kernel's dtype support,
    # not the rule the case is about; integer-input cases (the dtype rule itself) stay
    dtypes_ok = config.dtypes is None or case.dtype in config.dtypes or case.dtype not in FLOAT_DTYPES
    return required <= case.features and dtypes_ok


# -- covering -----------------------------------------------------------------------------------
def unsupported_features(adapters: "list[Adapter]") -> frozenset[str]:
    """Features no adapter of the run supports: every case with one would only be skipped."""
    from ce_conformance.adapters.base import ALL_FEATURES

    unsupported = set(ALL_FEATURES)
    for adapter in adapters:
        unsupported &= set(ALL_FEATURES) - set(adapter.capabilities.features)
    return frozenset(unsupported)


def excluded(config: "FuzzConfig", adapters: "list[Adapter]") -> frozenset[tuple[str, str]]:
    """Factor levels no adapter of the run supports, dtypes not asked for, and those the loss
    family's calls cannot take."""
    return excluded_levels(unsupported_features(adapters), config.dtypes) | FAMILIES[config.family].inapplicable_levels


def covering_cases(config: "FuzzConfig", adapters: "list[Adapter]") -> list[Case]:
    """The covering array's cases for this run (empty when the strength is 0 or with ``plain``:
    a plain run isolates one feature, a covering array mixes them all). Levels no adapter
    supports are left out, so that every row runs. Then, for the extension options adapters
    claim, rows run again with them on (:mod:`ce_conformance.covering_extensions`)."""
    strength = config.covering if config.covering is not None else covering_strength_for(config.profile)
    if strength <= 0 or config.plain:
        return []
    limits = size_limits_for(config.profile)
    family = FAMILIES[config.family]
    rows = covering_rows(strength, seed=config.seed, excluded=excluded(config, adapters))
    cases = [family.covering_case(row, config.seed, max_elements=limits.max_elements,
                                  max_vocab_rows=min(max(limits.max_vocab_rows, 2), 16),
                                  distribution="standard" if index < len(ANCHORS) else None)
             for index, row in enumerate(rows)]
    claimed = [frozenset(adapter.capabilities.features) & frozenset(family.extension_features)
               for adapter in adapters if config.family in adapter.capabilities.families]
    cases += extension_cases(rows, cases, claimed, config.seed)
    return [case for case in cases if wanted(config, case)]


# -- explore and shrink (Hypothesis) -----------------------------------------------------------
def _strategy(config: "FuzzConfig", adapters: "list[Adapter]"):
    """Explore and shrink draw from the same strategy (shrinking replays explored choices): the
    loss family's own."""
    family = FAMILIES[config.family]
    unsupported = unsupported_features(adapters)
    # a library's extensions (softcap, z-loss) are drawn only where some adapter of the run takes them
    extensions = {"extensions": frozenset(family.extension_features) - unsupported} if family.extension_features else {}
    return family.strategy(
        dtypes=config.dtypes or FLOAT_DTYPES, limits=size_limits_for(config.profile),
        invalid_percent=0 if config.plain else config.invalid_percent, require=config.require, plain=config.plain,
        exclude=unsupported, **extensions)


SLOW_SHRINK_CALLS = 2
"""Calls' worth of time (each up to ``--timeout``) that shrinking a timeout may spend."""

DATABASE_KEY = b"ce-conformance:probe"
"""Example-database key of explore and shrink alike (as ``hypothesis.find`` keys its database):
the explored draw is seeded under it for shrinking, minimal failures are stored under it
(``--database``), and the next run's exploration replays them first."""


def _hypothesis_test(run: "FuzzRun", probe: Callable[[Case], None], phases: list[Phase], **overrides: Any):
    config = run.config
    base = settings_for(config.profile, database_dir=config.database_dir, max_examples=config.max_examples)
    test = given(_strategy(config, run.adapters))(probe)
    test = hypothesis_seed(config.seed)(test)
    test = hypothesis_settings(base, phases=phases, **overrides)(test)
    test._hypothesis_internal_database_key = DATABASE_KEY  # one key for both phases, as find() sets it
    return test


def explore(run: "FuzzRun", state: dict[str, Any]) -> None:
    state["mode"] = "explore"
    _hypothesis_test(run, _make_probe(run, state), [Phase.explicit, Phase.reuse, Phase.generate, Phase.target])()


def shrink_one(run: "FuzzRun", adapter: "Adapter", check: str, state: dict[str, Any],
               deadline: float) -> "tuple[Case, Verdict] | None":
    """The smallest case Hypothesis finds that still fails ``check``, with the verdict on it."""
    state.update(mode="shrink", adapter=adapter, check=check, last=None, deadline=deadline)
    seeded = InMemoryExampleDatabase()
    choices = state.get("choices", {}).get((adapter.name, check))
    if choices is not None:
        # the secondary corpus: Hypothesis shrinks what it finds there (a primary-key example
        # counts as shrunk already)
        seeded.save(DATABASE_KEY + b".secondary", choices_to_bytes(choices))
    persistent = settings_for(run.config.profile, database_dir=run.config.database_dir).database
    database = MultiplexedDatabase(seeded, persistent) if persistent is not None else seeded
    test = _hypothesis_test(run, _make_probe(run, state), [Phase.reuse, Phase.generate, Phase.shrink],
                            report_multiple_bugs=False, database=database)
    try:
        test()
    except Reproduced:
        pass
    except Exception:  # Flaky, a spent budget, an adapter gone wrong: keep the smallest case seen
        pass
    return state.get("last")


def shrink_all(run: "FuzzRun", state: dict[str, Any]) -> None:
    """Shrink every failure signature explored this run, within the run's shrink budget (and
    ``--max-time``). A timeout costs the whole ``--timeout`` per call, so shrinking one gets
    :data:`SLOW_SHRINK_CALLS` calls' worth of time and its minimal case is not run again."""
    deadline = time.monotonic() + min(run.config.shrink_seconds, run.time_left())
    by_name = {a.name: a for a in run.adapters}
    # pairwise findings (two adapters in play) and those only a curated/covering case shows are not shrunk
    todo = [(name, check, info) for (name, check), info in run.signatures.items()
            if name in by_name and info["explored"]]
    for position, (name, check, info) in enumerate(todo):
        now = time.monotonic()
        if now > deadline:
            break
        # an equal share of what is left: one slow shrink must not starve the signatures after it
        own = now + (deadline - now) / (len(todo) - position)
        slow = check == "timeout"
        if slow:
            own = min(own, now + SLOW_SHRINK_CALLS * (run.config.timeout + 1))
        shrunk = shrink_one(run, by_name[name], check, state, own)
        if shrunk is not None:
            minimal, verdict = shrunk
            path = run.ledger.save_shrunk(minimal, name, verdict)
            if not slow:
                run.evaluate(minimal, "shrunk", adapters=[by_name[name]], case_path=str(path))


def _make_probe(run: "FuzzRun", state: dict[str, Any]) -> Callable[[Case], None]:
    def ce_conformance_probe(case: Case) -> None:
        if state.get("mode") == "explore":
            run.check_time()  # --max-time: OutOfTime ends exploration (a BaseException, never shrunk)
            partition = run.config.partition
            if partition and int(case.id, 16) % partition[1] != partition[0]:
                return  # another shard's case: shards are disjoint by case id
            run.examples += 1
            cell = scale_cell(case)
            if not run.cell_budget.admits(cell):  # over its time share: recorded as skipped, not run
                run.defer(case, run.cell_budget.defer(cell))
                run._progress()
                return
            started = time.perf_counter()
            compared = run.evaluate(case, "explore")
            run.cell_budget.charge(cell, time.perf_counter() - started)
            first_seen = state.setdefault("choices", {})
            for adapter, comparison in compared:
                for verdict in comparison.verdicts:
                    if (adapter.name, verdict.check) not in first_seen:  # the draw that shrinking starts from
                        first_seen[(adapter.name, verdict.check)] = current_build_context().data.choices
            ratios = [r for _, c in compared for r in c.max_ratio.values() if math.isfinite(r)]
            if ratios:  # steer toward the cases where an implementation comes closest to its budget
                target(min(max(ratios), 1e6), label=TARGET_LABEL)
            run._progress()
            return
        if time.monotonic() > state["deadline"]:
            return  # shrink budget spent: stop running adapters, keep the smallest case seen
        for _, comparison in run.evaluate(case, "shrink", adapters=[state["adapter"]], record=False):
            verdict = next((v for v in comparison.verdicts if v.check == state["check"]), None)
            if verdict is not None:
                state["last"] = (case, verdict)  # the verdict on this very case, for its saved note
                raise Reproduced(state["check"])

    return ce_conformance_probe
