"""The state bank: deterministic decisions, identical under a simulated two-rank split, resizable."""

import torch

from e2abl_lightning.models.e2abl.state import (
    DecisionConfig,
    IsolationState,
    ashman_d,
    confusion_spreads,
    otsu_threshold,
    rank_agreements,
    split_by_gap,
)

N, K, H = 40, 3, 2


def _epoch_data(epoch: int):
    g = torch.Generator().manual_seed(epoch)
    given = torch.arange(N) % K
    poisoned = torch.arange(N) < 8
    given = torch.where(poisoned, torch.zeros_like(given), given)
    loss = torch.rand(H, N, generator=g) + 1.0  # [H, N]
    loss[0, poisoned] = 0.05 * torch.rand(int(poisoned.sum()), generator=g)  # head 0 traps the poisons
    probs = torch.softmax(torch.randn(N, K, generator=g), dim=1)
    return given, loss, probs, poisoned


def _feed(state: IsolationState, idx: torch.Tensor, epoch: int) -> None:
    given, loss, probs, poisoned = _epoch_data(epoch)
    state.accumulate(idx, loss[:, idx], probs[idx], given[idx])
    state.record_oracle(idx, poisoned[idx], torch.arange(N)[idx] % K)


def _run(split: bool, epochs: int = 6, **config) -> list[IsolationState]:
    cfg = DecisionConfig(warmup_epochs=2, isolation_ratio=0.2, target_patience=2, **config)
    ranks = [IsolationState(N, K, H) for _ in range(2 if split else 1)]
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    for epoch in range(epochs):
        for s in ranks:
            s.reset_accumulators()
        if split:
            _feed(ranks[0], perm[: N // 2], epoch)
            _feed(ranks[1], perm[N // 2 :], epoch)
            # simulated all-reduce across the two ranks
            for name, op in [(n, "sum") for n in ("acc_loss", "acc_count", "acc_prob")] + [
                (n, "max") for n in ("acc_given", "oracle_poisoned", "oracle_true")
            ]:
                a, b = getattr(ranks[0], name), getattr(ranks[1], name)
                merged = a + b if op == "sum" else torch.maximum(a, b)
                a.copy_(merged)
                b.copy_(merged)
        else:
            _feed(ranks[0], perm, epoch)
        for s in ranks:
            s.decide(epoch, cfg)
    return ranks


def test_decision_flags_trapped_samples_and_target():
    (state,) = _run(split=False)
    assert int(state.suspected_target) == 0
    assert int(state.head_choice) == 0
    assert state.flagged[:8].all()
    assert state.isolated.sum() >= 8
    metrics = state.oracle_metrics()
    assert metrics["isolation/recall"] == 1.0
    assert metrics["isolation/precision"] >= 0.8


def test_two_simulated_ranks_decide_identically():
    (single,) = _run(split=False)
    a, b = _run(split=True)
    for name in ("flagged", "isolated", "recovered", "confident", "given", "suspected_target", "head_choice"):
        assert torch.equal(getattr(a, name), getattr(single, name)), name
        assert torch.equal(getattr(b, name), getattr(single, name)), name
    assert torch.allclose(a.score_sum, single.score_sum)


def test_no_decision_during_warmup():
    state = IsolationState(N, K, H)
    _feed(state, torch.arange(N), 0)
    assert state.decide(0, DecisionConfig(warmup_epochs=3)) == {}
    assert not state.flagged.any()
    assert int(state.suspected_target) == -1


def test_resize_on_load():
    (trained,) = _run(split=False)
    fresh = IsolationState()
    sd = {f"state.{k}": v for k, v in trained.state_dict().items()}
    fresh.load_state_dict_sizes(sd, "state.")
    fresh.load_state_dict(trained.state_dict())
    assert fresh.num_samples == N
    assert torch.equal(fresh.isolated, trained.isolated)
    assert torch.equal(fresh.recovered, trained.recovered)
    assert "acc_loss" not in trained.state_dict()  # epoch accumulators are not persistent


def test_split_by_gap_separates_trapped_from_ambiguous():
    score = torch.tensor([0.002, 0.01, 0.03, 0.5, 0.6, 0.9, 0.001])
    members = torch.tensor([True, True, True, True, True, False, False])
    ascend = split_by_gap(score, members, min_gap=1.0)
    assert ascend.tolist() == [True, True, True, False, False, False, False]
    # no gap as wide as min_gap: every member is ascended
    assert torch.equal(split_by_gap(score, members, min_gap=5.0), members)
    assert torch.equal(split_by_gap(score, members, min_gap=0.0), members)


def test_otsu_threshold_cuts_between_two_log_clusters():
    score = torch.tensor([1e-6, 2e-6, 5e-6, 1e-5, 0.3, 0.5, 0.8, 1.2, 2.0])  # 4 trapped, 5 clean
    members = torch.ones(9, dtype=torch.bool)
    cut = otsu_threshold(score, members)
    assert torch.log(torch.tensor(1e-5)) < cut < torch.log(torch.tensor(0.3))
    members[0] = False  # non-members are ignored
    assert torch.log(torch.tensor(1e-5)) < otsu_threshold(score, members) < torch.log(torch.tensor(0.3))
    assert otsu_threshold(score, torch.zeros(9, dtype=torch.bool)) == float("-inf")


def test_target_split_isolates_the_trapped_part_of_the_target_class():
    (state,) = _run(split=False, cleanse_scope="target_split")
    assert int(state.suspected_target) == 0
    poisoned = torch.arange(N) < 8
    assert torch.equal(state.isolated, poisoned), "exactly the trapped samples of the target class"
    (split_a, split_b) = _run(split=True, cleanse_scope="target_split")
    assert torch.equal(split_a.isolated, state.isolated) and torch.equal(split_b.isolated, state.isolated)


def test_min_label_share_guards_against_a_mixed_flagged_set():
    """Without one dominant label among the flagged samples no target is suspected and nothing is cleansed."""
    state = IsolationState(N, K, H)
    given = torch.arange(N) % K  # no backdoor: every label equally often
    loss = torch.rand(H, N, generator=torch.Generator().manual_seed(0)) + 0.1
    for epoch in range(5):
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, torch.full((N, K), 1.0 / K), given)
        state.decide(epoch, DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.6))
    assert int(state.suspected_target) == -1 and not state.isolated.any()
    (guarded,) = _run(split=False, min_label_share=0.6)  # a real trap (share 1.0) still passes the guard
    assert int(guarded.suspected_target) == 0 and guarded.isolated[:8].all()


def test_label_share_keeps_the_head_that_holds_the_suspected_target():
    """Once a target is suspected, an easy clean class that dominates the other head's flagged set more
    than the target dominates the trapping head's must not take the head choice (and the cleansing) away."""
    given = torch.arange(N) % K
    poisoned = torch.arange(N) < 8
    given = torch.where(poisoned, torch.zeros_like(given), given)
    easy = torch.nonzero((given == 1) & ~poisoned).flatten()[:8]  # an easy clean class, for head 1
    cfg = DecisionConfig(
        warmup_epochs=1, isolation_ratio=0.2, target_patience=2, score="epoch", head_selection="label_share"
    )
    state = IsolationState(N, K, H)
    for epoch in range(6):
        loss = torch.rand(H, N, generator=torch.Generator().manual_seed(epoch)) + 1.0  # [H, N]
        loss[0, :8] = 0.01  # head 0 traps the poisons
        if epoch >= 3:  # later: head 1 fits 8 easy clean samples, head 0 flags 2 clean ones beside 6 poisons
            loss[0, 6:8] = 1.5
            loss[0, torch.nonzero(given == 2).flatten()[:2]] = 0.02
            loss[1, easy] = 0.001
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, torch.full((N, K), 1.0 / K), given)
        logs = state.decide(epoch, cfg)
        if epoch >= 3:  # head 1's flagged set is all one label (share 1.0), head 0's is 75% the target
            assert logs["train/shallow_head"] == 0.0, f"epoch {epoch}: the head choice left the target's head"
    assert int(state.suspected_target) == 0
    assert torch.equal(state.isolated, torch.arange(N) < 6), "the trapped poisons, not the easy clean class"


def test_ashman_d_separates_two_modes_from_one():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(400, generator=g)  # a unimodal bell: Otsu's split of it gives about 2.7
    two = torch.cat([torch.randn(300, generator=g) - 6.0, torch.randn(100, generator=g)])
    assert 2.0 < ashman_d(one) < 3.0
    assert ashman_d(two) > 5.0
    assert ashman_d(torch.tensor([1.0, 2.0])) == 0.0  # too few values


def _clean_label_epoch(epoch: int, poisoned: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced labels. The main head fits 10 of class 2's 14 members (clean-label poisons, labels kept)
    to a loss near 1e-5 and everything else to losses spread around 0.3; head 0 traps those poisons but
    also fits the easy clean class 1, which then dominates its flagged set (SIG on Fashion-MNIST: trousers)."""
    g = torch.Generator().manual_seed(epoch)
    given = torch.arange(N) % K  # [N]
    log_loss = torch.empty(N)
    for c in range(K):  # each class's log-losses: a bell (normal quantiles), in a random order
        members = torch.nonzero(given == c).flatten()
        m = len(members)
        bell = torch.distributions.Normal(0.0, 0.8).icdf((torch.arange(m) + 0.5) / m)
        log_loss[members] = torch.log(torch.tensor(0.3)) + bell[torch.randperm(m, generator=g)]
    loss = torch.rand(H, N, generator=g) + 0.5  # [H, N]
    loss[0, given == 1] = 0.005 * torch.rand(int((given == 1).sum()), generator=g)
    if poisoned:
        log_loss[POISONS] = torch.log(torch.tensor(1e-5)) + 0.3 * torch.randn(len(POISONS), generator=g)
        loss[0, POISONS] = 0.01 + 0.01 * torch.rand(len(POISONS), generator=g)
    p_given = torch.exp(-log_loss.exp())  # the main head's probability of the given label
    probs = ((1 - p_given) / (K - 1)).unsqueeze(1).repeat(1, K)  # [N, K]
    probs.scatter_(1, given.unsqueeze(1), p_given.unsqueeze(1))
    return given, loss, probs


POISONS = torch.nonzero(torch.arange(N) % K == 2).flatten()[:10]


def _clean_label_run(threshold: float, poisoned: bool = True) -> tuple[IsolationState, dict[str, float]]:
    state = IsolationState(N, K, H)
    cfg = DecisionConfig(
        warmup_epochs=1,
        isolation_ratio=0.3,
        min_label_share=0.6,
        cleanse_scope="target_split",
        clean_label_separation=threshold,
    )
    for epoch in range(4):
        given, loss, probs = _clean_label_epoch(epoch, poisoned)
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, probs, given)
        logs = state.decide(epoch, cfg)
    return state, logs


def test_clean_label_separation_outranks_an_easy_clean_class():
    """Clean-label poisons keep their true label, so an easy clean class can hold the flagged set's largest
    share; the class whose main-head losses split into a separated low cluster is the target instead."""
    without, _ = _clean_label_run(0.0)
    assert int(without.suspected_target) == 1, "label share alone suspects the easy clean class"
    state, logs = _clean_label_run(3.4)
    assert logs["train/class_separation_max"] > 3.4
    assert int(state.suspected_target) == 2
    assert int(state.target_source) == 1 and int(without.target_source) == 0
    poisons = torch.zeros(N, dtype=torch.bool)
    poisons[POISONS] = True
    assert torch.equal(state.isolated, poisons), "Otsu's split of the main head's losses isolates the poisons"
    assert torch.equal(state.ascend, poisons), "and every isolated sample is unlearned"
    assert (state.recovered[poisons & ~state.flagged] == -1).all(), "clean-label poisons: no label to recover"
    # the ascent then lifts the isolated samples' main-head loss: the set named by that view is kept
    given, loss, probs = _clean_label_epoch(4)
    probs[POISONS] = torch.full((len(POISONS), K), 1.0 / K)
    state.reset_accumulators()
    state.accumulate(torch.arange(N), loss, probs, given)
    state.decide(
        4,
        DecisionConfig(
            warmup_epochs=1,
            isolation_ratio=0.3,
            min_label_share=0.6,
            cleanse_scope="target_split",
            clean_label_separation=3.4,
        ),
    )
    assert int(state.suspected_target) == 2 and torch.equal(state.isolated, poisons)
    clean, logs = _clean_label_run(3.4, poisoned=False)  # no separated cluster: label share decides as before
    assert logs["train/class_separation_max"] < 3.4
    assert int(clean.suspected_target) == 1


def test_min_head_contrast_rejects_a_class_that_every_head_finds_easy():
    """A trap is specific to its head's pooling; an easy clean class is easy for both heads and is not
    taken as the target, however much of the flagged set it holds."""
    given = torch.arange(N) % K
    cfg = DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.6, min_head_contrast=0.2)
    state = IsolationState(N, K, H)
    for epoch in range(4):
        loss = torch.rand(H, N, generator=torch.Generator().manual_seed(epoch)) + 1.0  # [H, N]
        loss[:, given == 1] = 0.01  # class 1 is easy for both heads
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, torch.full((N, K), 1.0 / K), given)
        logs = state.decide(epoch, cfg)
    assert logs["train/flagged_label_share"] >= 0.6 and logs["train/flagged_head_contrast"] < 0.2
    assert int(state.suspected_target) == -1 and not state.isolated.any()
    (trapped,) = _run(split=False, min_label_share=0.6, min_head_contrast=0.2)  # head 0 alone traps the poisons
    assert int(trapped.suspected_target) == 0 and trapped.isolated[:8].all()


def test_clean_label_separation_counts_on_the_first_decisions_only():
    """A class whose losses split only late (an easy clean class piling up at the floor) is not named."""
    state = IsolationState(N, K, H)
    cfg = DecisionConfig(
        warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.6, target_patience=2, clean_label_separation=3.4
    )
    for epoch in range(6):
        given, loss, probs = _clean_label_epoch(epoch, poisoned=epoch >= 2)  # the split appears after 2 decisions
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, probs, given)
        logs = state.decide(epoch, cfg)
        assert logs["train/candidate_target"] != 2.0
    assert logs["train/class_separation_max"] > 3.4


def test_clean_label_separation_ignores_a_class_whose_unfitted_members_are_mislabelled():
    """Dirty-label poisons whose trigger is not learned yet form the high cluster (the main head predicts
    their true class): cutting the class's low cluster would unlearn its clean samples, so it is not named."""
    state = IsolationState(N, K, H)
    cfg = DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.6, clean_label_separation=3.4)
    for epoch in range(4):
        given, loss, probs = _clean_label_epoch(epoch)
        members = torch.nonzero(given == 2).flatten()
        fitted, unfitted = members[:10], members[10:]
        probs[fitted] = torch.tensor([0.0, 0.0, 1.0])  # the clean members, fitted
        probs[unfitted] = torch.tensor([0.9, 0.05, 0.05])  # the poisons, predicted as their true class 0
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, probs, given)
        logs = state.decide(epoch, cfg)
    assert logs["train/class_separation_max"] > 3.4
    assert int(state.suspected_target) == 1 and int(state.target_source) == 0, "label share decides, as before"


def test_confusion_spreads_tell_label_noise_from_every_class_from_look_alike_confusions():
    k = 4
    given = torch.arange(40) % k  # 10 members a class
    probs = torch.nn.functional.one_hot(given, k).float()
    probs[[0, 4, 8]] = torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), k).float()  # class 0: one to each other
    probs[[1, 5, 9]] = torch.nn.functional.one_hot(torch.tensor([2, 2, 2]), k).float()  # class 1: all to class 2
    spreads = confusion_spreads(probs, given, torch.ones(40, dtype=torch.bool), k)
    assert torch.allclose(spreads, torch.tensor([0.1, 0.0, 0.0, 0.0], dtype=torch.float64))
    probs[[0, 4, 8]] = 1.0 / k  # unconfident predictions do not count
    assert float(confusion_spreads(probs, given, torch.ones(40, dtype=torch.bool), k).max()) == 0.0


def _mislabelled_epoch(epoch: int, learned: bool = False):
    """K=3, 12 poisons given label 0 and drawn from classes 1 and 2 (6 each), which the main head still
    predicts as their true class; head 0 traps an easy clean class 1 (the label-share candidate)."""
    g = torch.Generator().manual_seed(epoch)
    given = torch.arange(N) % K
    poisons = torch.tensor([1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17])  # true classes 1 and 2 alternating
    given[poisons] = 0
    true = torch.arange(N) % K
    probs = torch.nn.functional.one_hot(true if not learned else given, K).float() * 0.9 + 0.1 / K
    loss = torch.rand(H, N, generator=g) + 0.5  # [H, N]
    loss[:, (given == 1)] = 0.005  # an easy clean class for both heads
    return given, loss, probs, poisons


def test_confusion_spread_names_a_target_whose_poisons_look_like_label_noise():
    """Dirty-label poisons the main head has not fitted yet (FTrojan) are predicted as their true classes:
    the target class is confused with every other class. It outranks the label share, and the members the
    main head gives to another class are cut, from the decision on (the cut only grows)."""
    cfg = DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.3, min_confusion_spread=0.2)
    state = IsolationState(N, K, H)
    for epoch in range(3):
        given, loss, probs, poisons = _mislabelled_epoch(epoch)
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, probs, given)
        logs = state.decide(epoch, cfg)
    assert logs["train/confusion_spread_max"] > 0.2
    assert int(state.suspected_target) == 0 and int(state.target_source) == 2
    expected = torch.zeros(N, dtype=torch.bool)
    expected[poisons] = True
    assert torch.equal(state.isolated, expected) and torch.equal(state.ascend, expected)
    assert torch.equal(state.recovered[poisons], (torch.arange(N) % K)[poisons]), "their true classes recovered"
    # the main head then learns the trigger: the cut is kept, the target too
    given, loss, probs, _ = _mislabelled_epoch(3, learned=True)
    state.reset_accumulators()
    state.accumulate(torch.arange(N), loss, probs, given)
    state.decide(3, cfg)
    assert torch.equal(state.isolated, expected) and int(state.suspected_target) == 0
    # a member of the target that the main head comes to give to another class joins the cut
    state.pred_ema[0] = torch.tensor([0.0, 1.0, 0.0])
    state.decide(4, cfg)
    assert state.isolated[0] and torch.equal(state.isolated[1:], expected[1:])
    off = IsolationState(N, K, H)  # without the test the easy clean class is suspected
    for epoch in range(3):
        given, loss, probs, _ = _mislabelled_epoch(epoch)
        off.reset_accumulators()
        off.accumulate(torch.arange(N), loss, probs, given)
        off.decide(epoch, DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.3))
    assert int(off.suspected_target) == 1


def test_confusion_spread_counts_on_the_first_decisions_only():
    cfg = DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.9, min_confusion_spread=0.2)
    state = IsolationState(N, K, H)
    for epoch in range(5):  # the label noise appears after the first two decisions: not named
        given, loss, probs, _ = _mislabelled_epoch(epoch, learned=epoch < 2)
        state.reset_accumulators()
        state.accumulate(torch.arange(N), loss, probs, given)
        logs = state.decide(epoch, cfg)
    assert logs["train/confusion_spread_max"] > 0.2 and int(state.suspected_target) == -1


def _warped_epoch(epoch: int, poisoned: bool = True, spread: bool = True):
    """K=3: every member's shallow losses and main-head loss follow one difficulty, except 7 poisons given
    label 0 that the main head fits far below everything (a trigger only the deep layers see) while the
    shallow heads rank them among the class's clean members. Each member's runner-up class is a
    look-alike (the next class), a poison's its true class (1 and 2 alternating) when ``spread``.
    No label dominates the flagged sets."""
    g = torch.Generator().manual_seed(epoch)
    given = torch.arange(N) % K
    poisons = torch.tensor([0, 3, 6, 9, 12, 15, 18]) if poisoned else torch.tensor([], dtype=torch.long)
    difficulty = torch.rand(N, generator=torch.Generator().manual_seed(0))  # the same every epoch
    loss = 0.5 + difficulty + 0.01 * torch.rand(H, N, generator=g)  # [H, N]
    p_given = 0.99 - 0.5 * difficulty
    p_given[poisons] = 1 - 1e-4 * (1 + torch.rand(len(poisons), generator=g))
    runner = (given + 1) % K
    if spread:
        runner[poisons] = 1 + torch.arange(len(poisons)) % 2
    probs = torch.zeros(N, K)
    probs[torch.arange(N), given] = p_given
    probs[torch.arange(N), runner] = 1 - p_given
    return given, loss, probs, poisons


def test_rank_agreements_drop_where_the_main_head_alone_fits_a_group():
    given, loss, probs, _ = _warped_epoch(0)
    main = -torch.log(probs[torch.arange(N), given])
    rho = rank_agreements(loss, main, given, torch.ones(N, dtype=torch.bool), K).max(dim=0).values
    assert float(rho[1]) > 0.95 and float(rho[2]) > 0.95, "clean classes: both heads rank alike"
    assert float(rho[0]) < 0.6, "class 0: the poisons sit lowest for the main head only"
    few = torch.zeros(N, dtype=torch.bool)
    few[[0, 1, 2, 4]] = True  # class 0 has two members here, class 1 two, class 2 none
    assert torch.isinf(rank_agreements(loss, main, given, few, K)).all()


def test_rank_agreement_names_a_target_whose_trigger_only_the_main_head_fits():
    """WaNet-like: named by the rank disagreement, the target is cut at Otsu's threshold of its members'
    main-head loss (the poisons, every one given a recovered label); without poisons nothing is named."""
    cfg = DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.9, max_rank_agreement=0.6)
    runs = {}
    for poisoned in (True, False):
        for config in (cfg, DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, min_label_share=0.9)):
            state = IsolationState(N, K, H)
            for epoch in range(3):
                given, loss, probs, poisons = _warped_epoch(epoch, poisoned)
                state.reset_accumulators()
                state.accumulate(torch.arange(N), loss, probs, given)
                logs = state.decide(epoch, config)
            runs[poisoned, config is cfg] = (state, logs, poisons)
    state, logs, poisons = runs[True, True]
    assert logs["train/rank_agreement_min"] < 0.6
    assert int(state.suspected_target) == 0 and int(state.target_source) == 3
    expected = torch.zeros(N, dtype=torch.bool)
    expected[poisons] = True
    assert torch.equal(state.isolated, expected) and torch.equal(state.ascend, expected)
    assert torch.equal(state.recovered[poisons], 1 + torch.arange(len(poisons)) % 2), "their true classes"
    assert int(runs[True, False][0].suspected_target) == -1, "without the test nothing is named"
    clean_state, clean_logs, _ = runs[False, True]
    assert clean_logs["train/rank_agreement_min"] > 0.6 and int(clean_state.suspected_target) == -1
    # runner-up classes that go to one look-alike are no label noise: not named
    one_source = IsolationState(N, K, H)
    for epoch in range(3):
        given, loss, probs, _ = _warped_epoch(epoch, spread=False)
        one_source.reset_accumulators()
        one_source.accumulate(torch.arange(N), loss, probs, given)
        logs = one_source.decide(epoch, cfg)
    assert logs["train/rank_agreement_min"] < 0.6 and int(one_source.suspected_target) == -1
    # the last resort: a label-share candidate (class 1, easiest for the shallow heads) is not overruled
    share_first = IsolationState(N, K, H)
    for epoch in range(3):
        given, loss, probs, _ = _warped_epoch(epoch)
        loss[:, given == 1] *= 0.01
        share_first.reset_accumulators()
        share_first.accumulate(torch.arange(N), loss, probs, given)
        share_first.decide(epoch, DecisionConfig(warmup_epochs=1, isolation_ratio=0.3, max_rank_agreement=0.6))
    assert int(share_first.suspected_target) == 1 and int(share_first.target_source) == 0


def test_target_split_keeps_a_sample_once_isolated():
    """The class's cut moves from epoch to epoch; a poison it once took stays unlearned (the ones it
    misses re-teach the trigger)."""
    (state,) = _run(split=False, epochs=4, cleanse_scope="target_split")
    assert int(state.suspected_target) == 0 and state.isolated[:8].all()
    given, loss, probs, _ = _epoch_data(4)
    loss[:, 0] = 2.0  # poison 0 now looks like the class's clean samples to every head
    state.reset_accumulators()
    state.accumulate(torch.arange(N), loss, probs, given)
    state.decide(
        4, DecisionConfig(warmup_epochs=2, isolation_ratio=0.2, target_patience=2, cleanse_scope="target_split")
    )
    assert state.isolated[0], "isolated once, isolated for good"
