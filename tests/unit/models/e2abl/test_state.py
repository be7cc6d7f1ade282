"""The state bank: it folds epochs in, applies the policy deterministically (identically under a
simulated two-rank split), and resizes on load."""

import pytest
import torch

from e2abl_lightning.models.e2abl import policy as P
from e2abl_lightning.models.e2abl.policy import IsolationPolicy
from e2abl_lightning.models.e2abl.state import TABLE_COLUMNS, IsolationState

N, K, V = 400, 4, 3
POISONED = torch.arange(N) < 40  # 40 poisons given label 0: 0.29 of that class


def _epoch_data(epoch: int, poisoned: bool = True, shift: float = 8.0):
    g = torch.Generator().manual_seed(epoch)
    given = torch.arange(N) % K
    margin = torch.randn(V, N, generator=g) + 2.0  # [V, N]
    if poisoned:
        given = torch.where(POISONED, torch.zeros_like(given), given)
        margin[0, POISONED] += shift  # view 0 (a shallow head) traps the poisons
    probs = torch.softmax(torch.randn(N, K, generator=g) + 4 * torch.eye(K)[given], dim=1)
    return given, margin, probs


def _feed(state: IsolationState, idx: torch.Tensor, epoch: int, **data) -> None:
    given, margin, probs = _epoch_data(epoch, **data)
    state.accumulate(idx, margin[:, idx], probs[idx], given[idx])
    state.record_oracle(idx, POISONED[idx], torch.arange(N)[idx] % K)


def _all_reduce(ranks: list[IsolationState]) -> None:
    """What ``sync_`` does under DDP, across two simulated ranks."""
    for name, op in [(n, "sum") for n in ("acc_margin", "acc_count", "acc_prob")] + [
        (n, "max") for n in ("acc_given", "oracle_poisoned", "oracle_true")
    ]:
        a, b = getattr(ranks[0], name), getattr(ranks[1], name)
        merged = a + b if op == "sum" else torch.maximum(a, b)
        a.copy_(merged)
        b.copy_(merged)


def _run(split: bool, epochs: int = 5, policy: IsolationPolicy | None = None, **data) -> list[IsolationState]:
    policy = policy or IsolationPolicy()
    ranks = [IsolationState(N, K, V) for _ in range(2 if split else 1)]
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    for epoch in range(epochs):
        for s in ranks:
            s.reset_accumulators()
        if split:
            _feed(ranks[0], perm[: N // 2], epoch, **data)
            _feed(ranks[1], perm[N // 2 :], epoch, **data)
            _all_reduce(ranks)
        else:
            _feed(ranks[0], perm, epoch, **data)
        for s in ranks:
            s.decide(epoch, policy)
    return ranks


def test_trapped_poisons_are_named_after_two_epochs_and_isolated():
    (state,) = _run(False, epochs=1)
    assert int(state.suspected_target) == -1 and int(state.candidate_target) == 0  # one passing epoch
    assert torch.equal(state.flagged, POISONED) and not bool(state.isolated.any())
    (state,) = _run(False, epochs=3)
    assert int(state.suspected_target) == 0 and int(state.view) == 0
    assert torch.equal(state.isolated, POISONED)
    assert bool((state.recovered[POISONED] >= 0).all()) and bool((state.recovered[~POISONED] == -1).all())
    assert state.oracle_metrics()["isolation/precision"] == 1.0


def test_a_clean_run_names_nothing_and_isolates_nothing():
    (state,) = _run(False, epochs=4, poisoned=False)
    assert int(state.suspected_target) == -1 and int(state.candidate_target) == -1
    assert not bool(state.isolated.any()) and not bool(state.flagged.any())


def test_two_simulated_ranks_decide_identically_and_as_one():
    a, b = _run(True)
    (one,) = _run(False)
    for name, _ in one.named_buffers():
        if name.startswith("acc_"):
            continue
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        torch.testing.assert_close(getattr(a, name), getattr(one, name), equal_nan=True, msg=name)


def test_no_decision_during_warmup():
    state = IsolationState(N, K, V)
    _feed(state, torch.arange(N), 0)
    assert state.decide(0, IsolationPolicy(warmup_epochs=3)) == {}
    assert int(state.epochs_decided) == 0 and torch.isfinite(state.score).any()


def test_a_released_target_clears_its_isolated_set():
    (state,) = _run(False, epochs=3)
    assert int(state.suspected_target) == 0
    given = _epoch_data(0)[0]
    grid = torch.special.ndtri((torch.arange(N) + 0.5) / N)  # one smooth bell: the cluster is gone
    for epoch in (3, 4):  # two quiet epochs release the class
        state.reset_accumulators()
        state.accumulate(torch.arange(N), grid.expand(V, N), torch.eye(K)[given], given)
        state.last_z.fill_(float("nan"))  # score on this epoch alone
        state.decide(epoch, IsolationPolicy())
    assert int(state.suspected_target) == -1 and not bool(state.isolated.any())


def test_a_class_being_cleansed_is_cut_only_in_views_that_do_not_read_the_main_head():
    """After the poisons are isolated, the trap no longer splits class 0 but the main head does (its
    fitted half are clean members): that split is the cleansing's own effect and adds nothing."""
    (state,) = _run(False, epochs=3)
    assert int(state.suspected_target) == 0 and torch.equal(state.isolated, POISONED)
    given, margin, probs = _epoch_data(3, poisoned=True, shift=0.0)
    clean_half = (given == 0) & ~POISONED & (torch.arange(N) % 8 == 0)
    margin[2, clean_half] += 8.0  # the main head (the last view) fits half of the clean members better
    state.reset_accumulators()
    state.accumulate(torch.arange(N), margin, probs, given)
    state.last_z.fill_(float("nan"))  # score on this epoch alone
    state.decide(3, IsolationPolicy())
    assert int(state.suspected_target) == 0
    assert not bool(state.flagged.any()) and torch.equal(state.isolated, POISONED)


def test_a_class_being_cleansed_keeps_its_cut_on_the_isolated_side_when_the_fit_flips():
    """The cleansing can make a trap fit the isolated poisons worse than their clean classmates: the
    split is the same, its better-fitted side is now the clean one, and the cut stays on the poisons."""
    (state,) = _run(False, epochs=3)
    assert int(state.suspected_target) == 0 and torch.equal(state.isolated, POISONED)
    given, margin, probs = _epoch_data(3, poisoned=True, shift=-8.0)  # view 0 now fits the poisons worse
    state.reset_accumulators()
    state.accumulate(torch.arange(N), margin, probs, given)
    state.last_z.fill_(float("nan"))  # score on this epoch alone
    state.decide(3, IsolationPolicy())
    assert int(state.suspected_target) == 0
    assert torch.equal(state.flagged, POISONED) and torch.equal(state.isolated, POISONED)


def test_classes_too_small_to_test_train_as_undefended():
    state = IsolationState(6, 2, V)
    g = torch.Generator().manual_seed(0)
    for epoch in range(4):
        state.reset_accumulators()
        margin = torch.randn(V, 6, generator=g)
        margin[0, :2] += 20.0
        state.accumulate(torch.arange(6), margin, torch.full((6, 2), 0.5), torch.arange(6) % 2)
        state.decide(epoch, IsolationPolicy())
    assert float(state.detectable) >= 1.0
    assert int(state.suspected_target) == -1 and not bool(state.isolated.any())


@pytest.mark.parametrize(("members", "named"), [(34, False), (400, True)])
def test_a_set_whose_test_cannot_see_a_covered_poisoning_trains_as_undefended(members, named):
    """Two classes of 34: the test sees a population only above about 37% of a class (a 29% poisoning),
    so even a clean-cut trapped cluster is left alone; with classes of 400 the same cluster is named."""
    n = 2 * members
    given, poisons = torch.arange(n) % 2, torch.arange(n) < members // 2  # a quarter of class 0 trapped
    state = IsolationState(n, 2, V)
    g = torch.Generator().manual_seed(0)
    for epoch in range(4):
        state.reset_accumulators()
        margin = torch.randn(V, n, generator=g)
        margin[0, poisons & (given == 0)] += 20.0
        state.accumulate(torch.arange(n), margin, torch.full((n, 2), 0.5), given)
        state.decide(epoch, IsolationPolicy())
    assert 0.0 < float(state.detectable) < 1.0
    assert P.can_isolate(float(state.detectable), 2) == named
    assert (int(state.suspected_target) == 0) == named and bool(state.isolated.any()) == named


def test_resize_on_load():
    (state,) = _run(False, epochs=3)
    fresh = IsolationState()
    fresh.load_state_dict_sizes(state.state_dict(), "")
    fresh.load_state_dict(state.state_dict())
    assert fresh.num_samples == N and fresh.score.shape == (V, N)
    assert torch.equal(fresh.isolated, state.isolated) and int(fresh.suspected_target) == 0


def test_the_table_says_which_class_passed_which_view_abstained_and_which_class_is_named() -> None:
    """Constructed tests, 3 classes x 2 views: class 0 passes view 0; classes 1 and 2 both pass view 1,
    so it abstains; class 2's trapped split in view 0 is too small a dip. Class 1 is named, class 0 is
    only the candidate. ``confused_share`` is each class's share the main head gives to another class."""
    state = IsolationState(6, 3, 2)
    state.given.copy_(torch.tensor([0, 0, 1, 1, 2, 2]))
    policy = IsolationPolicy(alpha=0.2, min_share=0.05)
    level, floor = policy.level(3, 2), policy.min_share / 4
    tests = P.ClassTests(
        dip=torch.tensor([[floor, 0.0], [0.0, floor], [floor / 2, floor]], dtype=torch.float64),
        p=torch.tensor([[level / 2, 1.0], [1.0, level / 2], [level / 2, level / 2]], dtype=torch.float64),
        trapped=torch.tensor([[True, False], [False, True], [True, True]]),
    )
    confused = torch.tensor([False, True, True, True, False, False])
    rows = state._table(7, tests, P.Naming(target=1, candidate=0, streak=1, quiet=0), policy, confused)
    table = {(c, v): dict(zip(TABLE_COLUMNS, row, strict=True)) for row in rows for c, v in [row[1:3]]}
    assert len(rows) == 6 and all(r["epoch"] == 7 for r in table.values())
    assert [table[c, v]["passing"] for c in range(3) for v in range(2)] == [True, False, False, False, False, False]
    assert [table[c, 0]["named"] for c in range(3)] == [False, True, False]
    assert [table[c, 0]["confused_share"] for c in range(3)] == [0.5, 1.0, 0.0]
    assert table[0, 0]["adjusted_p"] == pytest.approx(0.1) and table[1, 0]["adjusted_p"] == 1.0


def test_a_shifted_trap_is_named_by_the_content_of_its_lifted_members():
    """Class 0's poisons are only shifted in the heads' scores (no second population), but their inputs
    look like classes 1-3: the sketch gathered in the first epoch gives them those content labels, and
    the content test names class 0 and cuts its lifted members."""
    g = torch.Generator().manual_seed(3)
    centres = 20 * torch.eye(K, 8)
    true = torch.arange(N) % K
    inputs = centres[true] + torch.randn(N, 8, generator=g)  # a poison keeps its source class's content
    poisons = (torch.arange(N) < 52) & (true != 0)  # 39 samples of classes 1-3 given label 0
    given = torch.where(poisons, torch.zeros_like(true), true)
    policy = IsolationPolicy()
    state = IsolationState(N, K, V)
    for epoch in range(3):
        state.reset_accumulators()
        margin = torch.randn(V, N, generator=g)
        margin[:2, poisons] += 3.0  # both shallow heads fit the poisons better: a shift, not a split
        probs = torch.softmax(4 * torch.eye(K)[given], dim=1)
        state.accumulate(torch.arange(N), margin, probs, given)
        if state.sketching:
            state.accumulate_sketch(torch.arange(N), inputs)
        state.decide(epoch, policy)
        assert not state.sketching
    assert torch.equal(state.content[poisons], true[poisons])  # the source classes
    assert int(state.suspected_target) == 0 and int(state.view) == -1  # named by content, not by the dip
    assert bool(state.isolated[poisons].float().mean() > 0.8) and not bool(state.isolated[given != 0].any())


def test_a_checkpoint_from_before_the_content_test_loads_and_finds_its_content_again():
    (state,) = _run(False, epochs=3)
    old = {k: v for k, v in state.state_dict().items() if k != "content"}
    fresh = IsolationState()
    fresh.load_state_dict_sizes(old, "")
    fresh.load_state_dict(old)
    assert torch.equal(fresh.isolated, state.isolated) and fresh.sketching


def test_the_sketch_is_synced_only_until_the_content_labels_are_found():
    state = IsolationState(N, K, V)
    synced: list[str] = []
    by_id = {id(t): n for n, t in state.named_buffers()}
    state.sync_(lambda t, op: synced.append(by_id[id(t)]))
    assert "acc_sketch" in synced
    state.content.fill_(1)
    synced.clear()
    state.sync_(lambda t, op: synced.append(by_id[id(t)]))
    assert "acc_sketch" not in synced and "acc_margin" in synced
