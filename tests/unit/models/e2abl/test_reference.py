"""The content test on constructed data: each piece must fail when it is wrong."""

import torch

from e2abl_lightning.models.e2abl import policy as P
from e2abl_lightning.models.e2abl import reference as R
from e2abl_lightning.models.e2abl.policy import ClassTests, IsolationPolicy, Naming


def test_the_sketch_is_fixed_and_leaves_the_run_random_stream_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = R.sketch_matrix(30)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a, R.sketch_matrix(30)) and a.shape == (30, R.SKETCH_DIM)


def test_content_labels_name_the_nearest_other_class_never_the_own():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    given = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    x = centres[given] + 0.3 * torch.randn(60, 2, generator=gen)
    x[:5] = centres[2] + 0.3 * torch.randn(5, 2, generator=gen)  # five class-0 samples that look like 2s
    x[5] = torch.tensor([9.0, 0.5])  # one that looks like a 1
    labels = R.content_labels(x, given, 3, k=5)
    assert labels[:5].tolist() == [2] * 5 and int(labels[5]) == 1
    assert not bool((labels == given).any())  # a sample's own class is never its content
    unseen = given.clone()
    unseen[7] = -1
    assert int(R.content_labels(x, unseen, 3, k=5)[7]) == -1


def test_lifted_members_stand_above_the_other_classes_margins():
    given = torch.tensor([0] * 100 + [1] * 10)
    margin = torch.cat([torch.arange(100.0), torch.tensor([50.0] * 5 + [99.5] * 5)])
    up = R.lifted(margin, given, 1)
    assert up.tolist() == [False] * 105 + [True] * 5
    assert not bool(R.lifted(margin, given, 0).any())  # class 0 stands above nothing but itself


def test_the_mixture_share_is_large_for_spread_labels_and_the_null_holds_for_the_rest():
    gen = torch.Generator().manual_seed(0)
    spread = torch.full((10,), 0.1)
    rest = torch.tensor([0.0, 0.7, 0.2] + [0.1 / 7] * 7)
    members = torch.multinomial(rest, 300, replacement=True, generator=gen)
    poisons = torch.multinomial(spread, 400, replacement=True, generator=gen)
    share, p = R.mixture_pvalue(poisons, members, spread)
    assert share > 0.9 and p < 1e-10
    clean = torch.multinomial(rest, 400, replacement=True, generator=gen)
    assert R.mixture_pvalue(clean, members, spread)[1] == 1.0
    # at the null's boundary (half poisons) the test rejects at about its level, not more
    rejected = 0
    for _ in range(200):
        draw = torch.multinomial(rest, 300, True, generator=gen)
        half = torch.where(
            torch.rand(300, generator=gen) < 0.5,
            torch.multinomial(spread, 300, True, generator=gen),
            torch.multinomial(rest, 300, True, generator=gen),
        )
        rejected += R.mixture_pvalue(half, draw, spread)[1] < 0.05
    assert rejected <= 20  # 5% of 200 is 10


def test_a_few_dozen_members_do_not_pass_on_how_little_is_known_of_their_class():
    """Twenty members whose labels differ from the lifted ones by chance of a small sample: the rest's
    distribution is estimated with the share, so the lifted labels it has not seen do not make poisons."""
    spread = torch.full((6,), 0.2)
    spread[0] = 0.0
    members = torch.tensor([1] * 12 + [2] * 8)
    lifted = torch.tensor([3] * 20 + [1] * 10 + [2] * 4)
    assert R.mixture_pvalue(lifted, members, spread)[1] > 0.2 / 12


def _two_classes_lifted(poisoned: bool):
    """Four classes; class 0's lifted members (margins 100) carry content labels spread over classes
    1-3 (all-to-one poisons) or the same labels as the rest of class 0 (an easy clean class)."""
    gen = torch.Generator().manual_seed(1)
    given = torch.tensor([0] * 200 + [1] * 200 + [2] * 200 + [3] * 200)
    margin = torch.randn(800, generator=gen)
    margin[:80] = 100.0
    content = torch.ones(800, dtype=torch.long)  # class 0 resembles class 1
    content[200:] = torch.randint(0, 4, (600,), generator=gen)
    if poisoned:
        content[:80] = torch.arange(80) % 3 + 1
    return torch.stack([margin, margin]), given, content


def test_content_tests_pass_a_class_whose_lifted_members_look_like_every_other_class():
    margins, given, content = _two_classes_lifted(poisoned=True)
    tests = R.content_tests(margins, given, content, 4)
    assert float(tests.p[0].max()) < 1e-4 and float(tests.share[0].min()) > 0.5
    assert bool((tests.p[1:] > 0.01).all())
    margins, given, content = _two_classes_lifted(poisoned=False)
    assert bool((R.content_tests(margins, given, content, 4).p > 0.01).all())


def test_two_classes_test_nothing_and_block_no_release():
    """With two classes every content label is the other class: the test carries no information, is not
    run (share 0, p-value 1), and a named class is released on quiet epochs."""
    gen = torch.Generator().manual_seed(0)
    given = torch.tensor([0] * 60 + [1] * 60)
    margin = torch.randn(120, generator=gen)
    margin[:12] += 6.0  # class 0's lifted members
    content = 1 - given
    tests = R.content_tests(torch.stack([margin, margin]), given, content, 2)
    assert bool((tests.p == 1.0).all()) and bool((tests.share == 0.0).all())
    released = P.name_target(Naming(0, -1, 0, P.PERSISTENCE - 1), _quiet_tests(2), IsolationPolicy(), tests)
    assert released.target == -1  # a quiet epoch releases the named class


def _quiet_tests(k: int = 4, v: int = 6) -> ClassTests:
    return ClassTests(
        torch.zeros(k, v, dtype=torch.float64),
        torch.ones(k, v, dtype=torch.float64),
        torch.zeros(k, v, dtype=torch.bool),
    )


def test_the_content_test_names_a_class_only_where_the_class_test_names_none():
    policy = IsolationPolicy()
    content = R.ContentTests(torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64))
    content.p[2, 1] = 1e-9
    assert P.candidate(_quiet_tests(), policy) == -1
    assert P.candidate(_quiet_tests(), policy, content) == 2
    tests = _quiet_tests()
    tests.p[3, 0], tests.dip[3, 0], tests.trapped[3, 0] = 1e-9, 0.2, True
    assert P.candidate(tests, policy, content) == 3  # the class test first
    content.p[2, 1] = policy.level(4, 2) * 1.01
    assert P.candidate(_quiet_tests(), policy, content) == -1


def test_a_class_named_by_the_content_test_is_kept_while_that_test_passes():
    policy = IsolationPolicy()
    content = R.ContentTests(torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64))
    content.p[2, 0] = 1e-9
    naming = Naming(-1, -1, 0, 0)
    for _ in range(2):
        naming = P.name_target(naming, _quiet_tests(), policy, content)
    assert naming.target == 2
    content.p[2, 0] = policy.level(4, 2) * 0.9  # still passing: kept
    for _ in range(3):
        naming = P.name_target(naming, _quiet_tests(), policy, content)
    assert naming.target == 2
    # no longer passing: released, even at p <= 1/2, which the boundary likelihood ratio gives whenever
    # the estimated share is above one half, evidence or not
    content.p[2, 0] = 0.3
    for _ in range(2):
        naming = P.name_target(naming, _quiet_tests(), policy, content)
    assert naming.target == -1


def test_the_content_cut_is_the_lifted_set_of_the_most_significant_head():
    margins, given, content = _two_classes_lifted(poisoned=True)
    margins[1, :40] = 0.0  # the second head lifts only half of them
    tests = R.content_tests(margins, given, content, 4)
    cut = P.content_cut(margins, given, tests, 0, IsolationPolicy())
    assert torch.equal(cut, R.lifted(margins[0], given, 0)) and bool(cut[:80].all()) and not bool(cut[200:].any())
    assert not bool(P.content_cut(margins, given, tests, 1, IsolationPolicy()).any())
