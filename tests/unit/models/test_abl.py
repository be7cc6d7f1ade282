"""ABL (Li et al., NeurIPS 2021) as one LightningModule: losses, schedule, isolation, unlearning."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from torch import Tensor

from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.baselines import ABL
from e2abl_lightning.models.baselines.abl import (
    SCHEDULES,
    abl_phase,
    ascent_losses,
    flooding,
    isolate_lowest,
    isolation_objective,
    lga,
    resolve_schedule,
)
from tests.helpers import quiet_trainer


def tiny_fcn(input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    return FCN(input_shape, num_classes, layers=(8, 16, 8))


def make(**kwargs) -> ABL:
    return ABL(tiny_fcn, 3, (1, 32), **kwargs)


# ---- pure losses -------------------------------------------------------------------------------------
def test_lga_hand_computed() -> None:
    loss = torch.tensor([0.2, 0.5, 1.0, 3.0])
    # sign(L - 0.5) * L: below gamma the loss is negated (ascent), at gamma it is 0
    assert torch.allclose(lga(loss, 0.5), torch.tensor([-0.2, 0.0, 1.0, 3.0]))
    assert torch.allclose(isolation_objective(torch.tensor(0.3), "lga", gamma=0.5), torch.tensor(-0.3))
    assert torch.allclose(isolation_objective(torch.tensor(0.3), "lga", gamma=0.2), torch.tensor(0.3))


def test_flooding_hand_computed() -> None:
    loss = torch.tensor([0.2, 0.5, 1.0, 3.0])
    # |L - 0.5| + 0.5
    assert torch.allclose(flooding(loss, 0.5), torch.tensor([0.8, 0.5, 1.0, 3.0]))
    x = torch.tensor(0.2, requires_grad=True)
    isolation_objective(x, "flooding", flood_level=0.5).backward()
    assert float(x.grad) == -1.0  # below the flood level: gradient ascent
    with pytest.raises(ValueError, match="isolation_loss"):
        isolation_objective(x, "mse")


def test_lga_gradient_is_ascent_below_gamma() -> None:
    x = torch.tensor(0.3, requires_grad=True)
    lga(x, 0.5).backward()
    assert float(x.grad) == -1.0
    y = torch.tensor(0.9, requires_grad=True)
    lga(y, 0.5).backward()
    assert float(y.grad) == 1.0


def test_ascent_losses_and_ceiling() -> None:
    ce = torch.tensor([0.5, 2.0, 9.0], requires_grad=True)
    out = ascent_losses(ce, ceiling=5.0)
    assert torch.allclose(out, torch.tensor([-0.5, -2.0, -5.0]))
    out.sum().backward()
    assert ce.grad.tolist() == [-1.0, -1.0, 0.0]  # no ascent above the ceiling
    assert torch.allclose(ascent_losses(torch.tensor([9.0])), torch.tensor([-9.0]))


# ---- isolation rule ------------------------------------------------------------------------------------
def test_isolate_lowest_stable_ties_by_index() -> None:
    losses = torch.tensor([0.5, 0.1, 0.1, 0.3, 0.1, 0.9, 0.2, 0.7, 0.6, 0.4])
    assert torch.nonzero(isolate_lowest(losses, 0.2)).flatten().tolist() == [1, 2]  # ties: lower index first
    assert torch.nonzero(isolate_lowest(losses, 0.3)).flatten().tolist() == [1, 2, 4]
    assert torch.nonzero(isolate_lowest(losses, 0.5)).flatten().tolist() == [1, 2, 3, 4, 6]
    assert int(isolate_lowest(losses, 0.01).sum()) == 1  # at least one sample
    assert torch.nonzero(isolate_lowest(losses, 0.01)).flatten().tolist() == [1]
    big = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    mask = isolate_lowest(big, 0.01)
    assert int(mask.sum()) == 10
    assert float(big[mask].max()) <= float(big[~mask].min())


# ---- schedule --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("official", (10, 60, 5)), ("common", (20, 60, 20))],
)
def test_presets(schedule: str, expected: tuple[int, int, int]) -> None:
    assert resolve_schedule(schedule) == expected == SCHEDULES[schedule]
    model = make(schedule=schedule)
    t, f, u = expected
    assert model.total_epochs == t + f + u
    phases = [model.phase(e) for e in range(t + f + u)]
    assert phases == [0] * t + [1] * f + [2] * u
    # official code: the first unlearning epoch only evaluates
    assert [model.ascends(e) for e in range(t + f - 1, t + f + u + 1)] == [False, False] + [True] * (u - 1) + [False]


def test_official_phase_boundaries() -> None:
    s = SCHEDULES["official"]
    assert [abl_phase(e, s) for e in (0, 9, 10, 69, 70, 74)] == [0, 0, 1, 1, 2, 2]
    s = SCHEDULES["common"]
    assert [abl_phase(e, s) for e in (0, 19, 20, 79, 80, 99)] == [0, 0, 1, 1, 2, 2]


def test_custom_schedule_and_errors() -> None:
    model = make(
        schedule="custom", isolation_epochs=2, finetune_epochs=0, unlearning_epochs=3, unlearn_eval_first=False
    )
    assert model.schedule == (2, 0, 3)
    assert [model.phase(e) for e in range(5)] == [0, 0, 2, 2, 2]
    assert [model.ascends(e) for e in range(6)] == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match="needs finetune_epochs"):
        make(schedule="custom", isolation_epochs=2, unlearning_epochs=3)
    with pytest.raises(ValueError, match="isolation_epochs given with schedule='official'"):
        make(schedule="official", isolation_epochs=3)
    with pytest.raises(ValueError, match="schedule='nope'"):
        make(schedule="nope")
    with pytest.raises(ValueError, match="isolation_epochs=0"):
        make(schedule="custom", isolation_epochs=0, finetune_epochs=1, unlearning_epochs=2)
    with pytest.raises(ValueError, match="unlearn_eval_first"):
        make(schedule="custom", isolation_epochs=1, finetune_epochs=1, unlearning_epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"isolation_ratio": 0.0}, "isolation_ratio=0.0"),
        ({"isolation_ratio": 1.5}, "isolation_ratio=1.5"),
        ({"isolation_loss": "mse"}, "isolation_loss='mse'"),
        ({"lga_gamma": -1.0}, "lga_gamma=-1.0"),
        ({"flooding_level": 0.0}, "flooding_level=0.0"),
        ({"finetune_lr": 0.0}, "finetune_lr=0.0"),
        ({"unlearn_lr": -1e-3}, "unlearn_lr=-0.001"),
        ({"finetune_lr_milestones": (40, 20)}, "finetune_lr_milestones"),
        ({"finetune_lr_milestones": (60,)}, "finetune_lr_milestones"),
        ({"finetune_lr_gamma": 2.0}, "finetune_lr_gamma=2.0"),
        ({"unlearn_batch_size": 0}, "unlearn_batch_size=0"),
        ({"unlearn_loss_ceiling": 0.0}, "unlearn_loss_ceiling=0.0"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_max_epochs_check() -> None:
    model = make(schedule="official")
    model.trainer = L.Trainer(max_epochs=40, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"max_epochs=40 is smaller than ABL's schedule of 75 epochs") as err:
        model.on_fit_start()
    assert "set trainer.max_epochs=75" in str(err.value) and "schedule='custom'" in str(err.value)
    model.trainer = L.Trainer(max_epochs=80, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="max_epochs=80 is larger"):
        model.on_fit_start()
    model.trainer = L.Trainer(max_epochs=75, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.on_fit_start()


def test_phase_lr() -> None:
    model = make(finetune_lr=0.1, finetune_lr_milestones=(40,), unlearn_lr=5e-4)
    assert model.phase_lr(5, 0.01) is None  # isolation: the optimiser's lr
    assert model.phase_lr(10, 0.01) == pytest.approx(0.1)
    assert model.phase_lr(49, 0.01) == pytest.approx(0.1)
    assert model.phase_lr(50, 0.01) == pytest.approx(0.01)  # x0.1 at fine-tuning epoch 40
    assert model.phase_lr(72, 0.01) == pytest.approx(5e-4)
    assert make(unlearn_lr=None).phase_lr(15, 0.01) is None


# ---- per-phase losses: masks by weight, ascent only on isolated samples --------------------------------
def test_phase_losses_mask_by_isolation() -> None:
    model = make(schedule="custom", isolation_epochs=1, finetune_epochs=1, unlearning_epochs=3, unlearn_batch_size=2)
    model._resize_state(6)
    model.isolated[torch.tensor([1, 4])] = True
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    ce_values = torch.tensor([0.5, 0.2, 1.0, 2.0, 0.1, 1.5])

    ce = ce_values.clone().requires_grad_()
    loss = model.phase_loss(ce, index, epoch=0)  # isolation: LGA of the batch mean (0.883 > 0.5: descend)
    assert torch.allclose(loss, ce_values.mean())

    ce = ce_values.clone().requires_grad_()
    loss = model.phase_loss(ce, index, epoch=1)  # fine-tuning: mean CE over the non-isolated
    assert torch.allclose(loss, ce_values[[0, 2, 3, 5]].mean())
    loss.backward()
    assert ce.grad[[1, 4]].abs().sum() == 0

    ce = ce_values.clone().requires_grad_()
    assert float(model.phase_loss(ce, index, epoch=2).detach()) == 0.0  # the evaluation-only unlearning epoch

    ce = ce_values.clone().requires_grad_()  # unlearning steps use batches of isolated samples, not this one
    assert float(model.phase_loss(ce, index, epoch=3).detach()) == 0.0

    ce = ce_values.clone().requires_grad_()
    assert float(model.phase_loss(ce, index, epoch=5).detach()) == 0.0  # past the schedule: evaluation only


def test_unlearning_steps_on_batches_of_isolated_samples_only() -> None:
    from torch.utils.data import DataLoader

    from e2abl_lightning.data.poison import PoisonedDataset

    torch.manual_seed(0)
    n, k = 40, 3
    x, y = torch.randn(n, 1, 32), torch.arange(n) % k
    reads = [0]

    class CountingDataset(PoisonedDataset):
        def __getitem__(self, index: int) -> dict:
            reads[0] += 1
            return super().__getitem__(index)

    dataset = CountingDataset(x, y, y, torch.zeros(n, dtype=torch.bool))
    model = make(
        schedule="custom",
        isolation_epochs=1,
        finetune_epochs=0,
        unlearning_epochs=3,
        isolation_ratio=0.25,
        unlearn_batch_size=4,
    )
    seen: dict[int, list[Tensor]] = {}
    steps: dict[int, int] = {}
    reads_by_epoch: list[int] = []

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            steps[trainer.current_epoch] = steps.get(trainer.current_epoch, 0) + 1

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            reads_by_epoch.append(reads[0] - sum(reads_by_epoch))

    forward = model.forward

    def spy_forward(inputs: Tensor) -> Tensor:
        if model.ascends():
            seen.setdefault(model.current_epoch, []).append(inputs.detach().clone())
        return forward(inputs)

    model.forward = spy_forward  # type: ignore[method-assign]
    trainer = quiet_trainer(4, [Spy()])
    trainer.fit(model, DataLoader(dataset, batch_size=8, shuffle=True))
    isolated = torch.nonzero(model.isolated).flatten()
    assert isolated.numel() == 10
    # 5 isolation steps, none in the evaluation-only epoch, ceil(10 / 4) = 3 in each of the 2 ascent epochs
    assert steps == {0: 5, 2: 3, 3: 3}
    for epoch in (2, 3):
        batches = seen[epoch]
        assert [b.shape[0] for b in batches] == [4, 3, 3]
        rows = torch.cat(batches)  # every isolated sample once per epoch, nothing else
        matches = (rows[:, None] == x[None]).flatten(2).all(dim=2)  # [10, n]
        assert sorted(matches.float().argmax(dim=1).tolist()) == isolated.tolist()
    assert not torch.equal(torch.cat(seen[2]), torch.cat(seen[3]))  # reshuffled each epoch
    # the loader reads every sample each epoch; isolation scores them once more; the isolated samples
    # are read for the ascent once (epoch 2), not again in epoch 3
    assert reads_by_epoch == [2 * n, n, n + 10, n]


def test_checkpoint_restores_isolated_set() -> None:
    model = make()
    model._resize_state(7)
    model.isolated[torch.tensor([2, 5])] = True
    model.isolation_decided.fill_(True)
    state = {"state_dict": model.state_dict()}
    restored = make()
    restored.on_load_checkpoint(state)
    restored.load_state_dict(state["state_dict"])
    assert restored.num_samples == 7
    assert torch.nonzero(restored.isolated).flatten().tolist() == [2, 5]
    assert bool(restored.isolation_decided)
    assert "oracle_poisoned" not in state["state_dict"]  # oracle flags are metrics only, never checkpointed


# ---- a short real training on constructed data ------------------------------------------------------
class _History(L.Callback):
    """Records val ASR per epoch (observes only)."""

    def __init__(self) -> None:
        self.asr: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/asr" in trainer.callback_metrics:
            self.asr[trainer.current_epoch] = float(trainer.callback_metrics["val/asr"])


@pytest.mark.parametrize("poison_seed", [0, 1])
def test_abl_isolates_poisons_and_unlearning_removes_the_backdoor(poison_seed: int) -> None:
    """Constructed data where every poison is far easier than every clean sample (noise with random labels;
    the trigger a large spike): ABL's lowest-loss 10% is poisons only, and two ascent epochs take the
    learned backdoor away. Measured on poison seeds 0-2 with 1 and 2 threads: isolated 20 of 20 poisoned,
    ASR 1.0 before the ascent and 0.0 after it, every time."""
    from e2abl_lightning.callbacks import BackdoorEvalCallback
    from tests.helpers import SMALL_FCN, SeparableSeries

    L.seed_everything(poison_seed, verbose=False)
    dm = SeparableSeries(poison_seed=poison_seed)
    model = ABL(
        SMALL_FCN,
        dm.num_classes,
        dm.input_shape,
        schedule="custom",
        isolation_epochs=3,
        finetune_epochs=1,
        unlearning_epochs=4,
        lga_gamma=0.5,
        isolation_ratio=0.1,
        unlearn_lr=1e-2,
        unlearn_batch_size=4,
    )
    history = _History()
    trainer = quiet_trainer(8, [BackdoorEvalCallback(dm.num_classes, dm.target_label), history], limit_val_batches=1.0)
    trainer.fit(model, datamodule=dm)
    poisoned = dm.train_set.poisoned
    assert int(model.isolated.sum()) == round(0.1 * len(poisoned))
    assert bool(poisoned[model.isolated].all()), "a clean sample was isolated"
    assert float(trainer.callback_metrics["isolation/precision"]) == 1.0
    # epoch 4 is the evaluation-only first unlearning epoch: the model before any ascent
    before, after = history.asr[4], history.asr[7]
    assert before > 0.9 and after < 0.1, f"ASR {before:.2f} -> {after:.2f}: the ascent did not remove the backdoor"
    assert float(trainer.callback_metrics["train/unlearn_ce"]) > math.log(dm.num_classes)  # ascended past chance
