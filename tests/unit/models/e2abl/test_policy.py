"""Each stage of the isolation policy on constructed data: it must fail when the stage is wrong."""

import math

import pytest
import torch

from e2abl_lightning.models.e2abl import policy as P
from e2abl_lightning.models.e2abl.policy import ClassTests, IsolationPolicy, Naming


# ---- score ---------------------------------------------------------------------------------------
def test_margins_are_the_given_logit_over_the_best_other():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert P.margins(logits, torch.tensor([0, 2])).tolist() == [1.0, -4.0]
    stacked = torch.stack([logits, logits + 7])  # [V, B, K]: shifting the logits changes nothing
    assert P.margins(stacked, torch.tensor([0, 2])).tolist() == [[1.0, -4.0], [1.0, -4.0]]


def test_standardize_divides_out_each_class_level_and_spread():
    base = torch.randn(50, generator=torch.Generator().manual_seed(0))
    given = torch.tensor([0] * 50 + [1] * 50)
    # class 1 is easy (high, wide margins): the same shape at another level and scale
    score = torch.cat([base, 40 + 10 * base]).unsqueeze(0)
    z = P.standardize(score, given, torch.ones(100, dtype=torch.bool), 2)
    torch.testing.assert_close(z[0, 50:], z[0, :50])
    assert abs(float(z[0, :50].median())) < 1e-5
    assert float((z[0, :50] - z[0, :50].median()).abs().median()) * 1.4826 == pytest.approx(1.0, abs=1e-4)
    seen = torch.ones(100, dtype=torch.bool)
    seen[3] = False
    assert math.isnan(float(P.standardize(score, given, seen, 2)[0, 3]))


# ---- test ----------------------------------------------------------------------------------------
def test_otsu_upper_splits_two_clusters_in_any_order():
    values = torch.tensor([5.0, 0.1, 5.2, 0.0, 0.2, 4.9])
    assert P.otsu_upper(values).tolist() == [True, False, True, False, False, True]


def test_odd_side_is_the_confused_lower_side_only_when_the_main_head_gives_it_away():
    z = torch.tensor([0.0, 0.1, 0.2, 0.3, 5.0, 5.1])
    side, trapped = P.odd_side(z, torch.zeros(6, dtype=torch.bool), z)
    assert trapped and side.tolist() == [False] * 4 + [True] * 2
    confused = torch.tensor([True, True, True, False, False, False])  # 3 of 4 lower samples given away
    side, trapped = P.odd_side(z, confused, z)
    assert not trapped and side.tolist() == [True] * 4 + [False] * 2


def test_odd_side_is_the_side_the_heads_fit_better_whichever_way_the_view_orders_it():
    z = torch.tensor([0.0, 0.1, 0.2, 0.3, 5.0, 5.1])  # a disagreement view: the pair of samples on top...
    fit = torch.tensor([3.0, 3.1, 2.9, 3.2, 0.0, 0.1])  # ...is the one neither head fits
    side, trapped = P.odd_side(z, torch.zeros(6, dtype=torch.bool), fit)
    assert trapped and side.tolist() == [True] * 4 + [False] * 2


def test_an_anchor_orients_the_split_to_the_side_holding_the_isolated_samples():
    z = torch.tensor([0.0, 0.1, 0.2, 0.3, 5.0, 5.1])  # the heads fit the top pair better...
    anchor = torch.tensor([True, True, True, False, False, False])  # ...but the lower side was isolated
    side, trapped = P.odd_side(z, torch.zeros(6, dtype=torch.bool), z, anchor)
    assert trapped and side.tolist() == [True] * 4 + [False] * 2
    side, _ = P.odd_side(z, torch.zeros(6, dtype=torch.bool), z, torch.zeros(6, dtype=torch.bool))
    assert side.tolist() == [False] * 4 + [True] * 2  # nothing isolated yet: the fit decides


def _class_data(poisoned: bool, n: int = 300, k: int = 4, seed: int = 0, shift: float = 8.0):
    """Per-class robust z of k classes; with ``poisoned`` class 2 holds a well-fitted 30% cluster."""
    g = torch.Generator().manual_seed(seed)
    given = torch.arange(k).repeat_interleave(n)
    score = torch.randn(2, k * n, generator=g)  # two views
    planted = torch.zeros(k * n, dtype=torch.bool)
    if poisoned:
        planted[2 * n : 2 * n + int(0.3 * n)] = True
        score[0, planted] += shift  # only the first view (the trap) sees the cluster
    z = P.standardize(score, given, torch.ones(k * n, dtype=torch.bool), k)
    return z, given, planted


def test_class_tests_find_the_planted_cluster_in_its_view_only():
    z, given, _ = _class_data(True)
    tests = P.class_tests(P.Views(z, z), given, torch.zeros_like(given, dtype=torch.bool), 4)
    level = IsolationPolicy().level(4, 2)
    assert float(tests.p[2, 0]) < level and bool(tests.trapped[2, 0])
    assert float(tests.dip[2, 0]) > 0.3 / 6
    others = torch.ones(4, 2, dtype=torch.bool)
    others[2, 0] = False
    assert bool((tests.p[others] > level).all())


def test_unimodal_classes_pass_no_test():
    z, given, _ = _class_data(False)
    tests = P.class_tests(P.views(z, given, 4), given, torch.zeros_like(given, dtype=torch.bool), 4)
    assert not bool(P.passing(tests, IsolationPolicy()).any())
    assert P.candidate(tests, IsolationPolicy()) == -1


def _tests(p: list[list[float]], dip: float = 0.2, trapped: bool = True) -> ClassTests:
    pt = torch.tensor(p, dtype=torch.float64)
    return ClassTests(torch.full_like(pt, dip), pt, torch.full(pt.shape, trapped))


def test_passing_needs_significance_effect_size_and_a_trapped_side():
    policy = IsolationPolicy(alpha=0.05, min_share=0.1)
    p = [[1e-6, 0.9], [0.9, 0.9]]
    assert P.passing(_tests(p), policy).tolist() == [[True, False], [False, False]]
    assert not bool(P.passing(_tests(p, dip=0.02), policy).any())  # a cluster under min_share
    assert not bool(P.passing(_tests(p, trapped=False), policy).any())  # confusion, not a trap
    assert not bool(P.passing(_tests([[0.02, 0.9], [0.9, 0.9]]), policy).any())  # 0.02 > 0.05 / 4


def test_a_view_where_two_classes_pass_abstains():
    p = [[1e-6, 1e-6], [1e-7, 0.9], [0.9, 0.9]]
    ok = P.passing(_tests(p), IsolationPolicy())
    assert ok.tolist() == [[False, True], [False, False], [False, False]]
    assert P.candidate(_tests(p), IsolationPolicy()) == 0


def test_naming_needs_persistence_and_releases_after_quiet_epochs():
    policy = IsolationPolicy()
    hit, quiet, unsure = (
        _tests([[0.9, 0.9], [1e-6, 0.9]]),
        _tests([[0.9, 0.9], [0.9, 0.8]]),
        _tests([[0.9, 0.9], [0.3, 0.9]]),
    )
    state = Naming(-1, -1, 0, 0)
    state = P.name_target(state, hit, policy)
    assert (state.target, state.candidate, state.streak) == (-1, 1, 1)
    state = P.name_target(state, hit, policy)
    assert state.target == 1
    state = P.name_target(state, unsure, policy)  # not significant, but not one population either: kept
    assert (state.target, state.quiet) == (1, 0)
    state = P.name_target(state, quiet, policy)
    assert (state.target, state.quiet) == (1, 1)
    state = P.name_target(state, quiet, policy)
    assert state.target == -1
    # a candidate that changes restarts the streak
    other = _tests([[1e-6, 0.9], [0.9, 0.9]])
    state = P.name_target(Naming(-1, 1, 1, 0), other, policy)
    assert (state.target, state.candidate, state.streak) == (-1, 0, 1)


def test_a_named_class_is_replaced_by_a_class_that_passes_for_as_many_epochs():
    policy = IsolationPolicy()
    other = _tests([[1e-6, 0.9], [0.3, 0.9]])  # class 0 passes; the named class 1 is not quiet
    state = P.name_target(Naming(1, 1, 5, 0), other, policy)
    assert (state.target, state.candidate, state.streak) == (1, 0, 1)
    state = P.name_target(state, other, policy)
    assert (state.target, state.candidate, state.streak, state.quiet) == (0, 0, 2, 0)


# ---- cut -----------------------------------------------------------------------------------------
def test_cut_isolates_the_trapped_cluster_of_the_target_in_its_best_view():
    z, given, planted = _class_data(True)
    confused = torch.zeros_like(given, dtype=torch.bool)
    tests = P.class_tests(P.Views(z, z), given, confused, 4)
    usable = P.passing(tests, IsolationPolicy())[2]
    isolated, view = P.cut(P.Views(z, z), given, confused, tests, 2, usable)
    assert view == 0
    assert isolated.tolist() == planted.tolist()
    # a view that may not cut is passed over; with none, nothing is cut
    isolated, view = P.cut(P.Views(z, z), given, confused, tests, 2, torch.tensor([False, True]))
    assert view == 1 and isolated.tolist() != planted.tolist()
    isolated, view = P.cut(P.Views(z, z), given, confused, tests, 2, torch.zeros(2, dtype=torch.bool))
    assert view == -1 and not bool(isolated.any())


def test_witnesses_are_the_views_that_do_not_read_the_main_head():
    names = P.view_names(["max", "avg", "main"])
    assert [n for n, w in zip(names, P.witnesses(3).tolist(), strict=True) if w] == ["max", "avg", "avg minus max"]
    assert P.witnesses(2).tolist() == [True, False, False]


def test_a_trigger_one_head_traps_and_the_other_misses_is_found_in_their_disagreement():
    """Half of class 1 is fitted better by head 0 and worse by head 1, by 1.6 SD each, and better by
    the main head (head 2, which has learned the trigger): no head's scores are bimodal, the
    differences of heads 0 and 2 with head 1 are; the cut takes the half the heads fit best, in one
    of those pairs' views."""
    g = torch.Generator().manual_seed(3)
    n, k = 400, 3
    given = torch.arange(k).repeat_interleave(n)
    common = torch.randn(k * n, generator=g)  # what every head sees: how typical a sample is
    score = torch.stack([common + 0.5 * torch.randn(k * n, generator=g) for _ in range(3)])
    planted = torch.zeros(k * n, dtype=torch.bool)
    planted[n : n + n // 2] = True
    score[:, planted] += torch.tensor([[1.6], [-1.6], [1.6]])
    z = P.standardize(score, given, torch.ones(k * n, dtype=torch.bool), k)
    confused = torch.zeros(k * n, dtype=torch.bool)
    policy = IsolationPolicy()
    assert not bool(P.passing(P.class_tests(P.Views(z, z), given, confused, k), policy).any())
    views = P.views(z, given, k)
    assert views.z.shape == (P.num_tested(3), k * n)
    names = P.view_names(["max", "avg", "main"])
    assert len(names) == P.num_tested(3) and names[3] == "avg minus max" and names[5] == "main minus avg"
    torch.testing.assert_close(views.z[:3], z)
    tests = P.class_tests(views, given, confused, k)
    ok = P.passing(tests, policy)  # class 1 only, in the views of the pairs that disagree on it
    assert ok.nonzero().tolist() == [[1, 3], [1, 5]]
    isolated, view = P.cut(views, given, confused, tests, 1, ok[1])
    assert view in (3, 5)
    assert float((isolated == planted).float().mean()) > 0.95


# ---- recover -------------------------------------------------------------------------------------
def test_pseudo_labels_exclude_the_given_class_and_weigh_by_confidence():
    ema = torch.tensor([[0.9, 0.08, 0.02, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q, conf = P.pseudo_labels(ema, torch.tensor([0, 0]))
    assert q[:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2))
    assert int(q[0].argmax()) == 1 and float(conf[0]) > 0.5
    assert float(conf[1]) == pytest.approx(0.0, abs=1e-6)  # uniform over the others: no confidence
    q2, conf2 = P.pseudo_labels(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    assert q2.tolist() == [[0.0, 1.0]] and conf2.tolist() == [1.0]


# ---- what the test can see -----------------------------------------------------------------------
def test_detectable_share_shrinks_with_class_size_and_respects_the_floor():
    policy = IsolationPolicy()
    small = P.detectable_share(torch.tensor([10, 10]), policy, 3)
    medium = P.detectable_share(torch.tensor([200, 200]), policy, 3)
    large = P.detectable_share(torch.tensor([6000] * 10), policy, 3)
    assert small > medium > large >= policy.min_share
    assert P.detectable_share(torch.tensor([3, 2]), policy, 3) == float("inf")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": 0.0}, "alpha"), ({"min_share": 1.5}, "min_share"), ({"warmup_epochs": 0}, "warmup_epochs")],
)
def test_bad_policy_knobs_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        IsolationPolicy(**kwargs)
    assert "\n" not in str(info.value)


def test_blind_spot_speaks_when_an_ordinary_poisoning_is_unseen():
    """A run is told when 5% of the training set poisoned into one class is below what the test sees."""
    assert P.blind_spot(0.063, 10) is None  # large classes: a share of 6% is a 0.7% poisoning
    message = P.blind_spot(0.393, 2)  # two classes of ~33: the test needs a 32% poisoning
    assert message is not None and "above 39% of a class" in message and "about 32% of the training set" in message
    assert "cannot isolate reliably" in message
    assert "\n" not in message
    assert "trains as an undefended model" in P.blind_spot(float("inf"), 52)
    # the boundary follows s = rK / (1 + rK): at K = 10 a 5% poisoning makes a third of the class
    assert P.blind_spot(0.33, 10) is None and P.blind_spot(0.34, 10) is not None


def test_a_set_is_isolated_only_where_the_test_sees_a_poisoning_the_threat_model_covers():
    """A share s of a class is a poisoning r = s / (K (1 - s)); above ``RATE_MAX`` the run trains undefended."""
    assert P.poisoning_rate(0.2, 4) == pytest.approx(0.0625) and P.poisoning_rate(1.0, 4) == float("inf")
    bound = P.RATE_MAX * 2 / (1 + P.RATE_MAX * 2)  # two classes: the share a 20% poisoning makes
    assert P.can_isolate(bound - 0.01, 2) and not P.can_isolate(bound + 0.01, 2)
    assert P.can_isolate(0.41, 6) and not P.can_isolate(0.69, 10) and not P.can_isolate(float("inf"), 3)
    assert "a smaller poisoning trains as undefended" in P.blind_spot(0.41, 6)  # seen from 12%: warned only


def test_a_split_is_judged_only_where_the_class_could_pass():
    z, given, _ = _class_data(True)
    confused = torch.zeros_like(given, dtype=torch.bool)
    full = P.class_tests(P.Views(z, z), given, confused, 4)
    strict = P.class_tests(P.Views(z, z), given, confused, 4, level=1e-300)
    assert torch.equal(full.p, strict.p) and torch.equal(full.dip, strict.dip)
    assert bool(full.trapped[2, 0]) and not bool(strict.trapped.any())
