"""The E2ABL LightningModule: oracle-blind training, real isolation, argument checks."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.poison import ORACLE_KEYS
from e2abl_lightning.models.baselines import NoDefense
from e2abl_lightning.models.e2abl import E2ABL, IsolationPolicy
from e2abl_lightning.models.e2abl.loss import cleansing_losses, shallow_losses, total_loss
from e2abl_lightning.models.e2abl.policy import pseudo_labels
from tests.helpers import SMALL_FCN, SeparableSeries, gunpoint, quiet_trainer, tiny_fit


class _Blind(Dataset):
    """The same samples with the oracle keys removed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        for key in ORACLE_KEYS:
            item.pop(key)
        return item


class BlindUCR(UCRDataModule):
    def train_dataloader(self):
        loader = super().train_dataloader()
        return DataLoader(
            _Blind(loader.dataset), batch_size=loader.batch_size, shuffle=True, drop_last=loader.drop_last
        )


def _fit(datamodule_cls, epochs=4, **kwargs):
    return tiny_fit(epochs, gunpoint(datamodule_cls), model_kwargs=kwargs)


def test_oracle_keys_do_not_change_training():
    with_oracle, trainer, _ = _fit(UCRDataModule)
    blind, _, _ = _fit(BlindUCR)
    assert int(with_oracle.state.epochs_decided) > 0
    assert "isolation/precision" in trainer.callback_metrics
    sd_a, sd_b = with_oracle.state_dict(), blind.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key


@pytest.mark.parametrize("poison_seed", [0, 1])
def test_trapped_poisons_are_flagged_named_and_isolated(poison_seed):
    """Constructed data where every poison is far easier than every clean sample (noise with random
    labels, the target's clean members offset so the main head learns them; the trigger a large spike):
    the target is named and the flagged and isolated sets are its poisons exactly. Measured on poison
    seeds 0-2 with 1 thread: a candidate at the end of epoch 2, named at the end of epoch 3, the flagged
    set the 40 poisons from then on."""
    dm = SeparableSeries(poison_seed=poison_seed, target_offset=4.0)
    model, _, dm = tiny_fit(6, dm)
    poisoned, state = dm.train_set.poisoned, model.state
    assert int(state.epochs_decided) == 5  # warm-up 2: decisions at the ends of epochs 1..5
    assert int(state.suspected_target) == dm.target_label
    assert bool(poisoned[state.flagged].all()), "a clean sample was flagged"
    assert torch.equal(state.flagged, poisoned), f"{int(state.flagged.sum())} of {int(poisoned.sum())} poisons flagged"
    assert torch.equal(state.isolated, poisoned)
    assert int(state.flag_count.max()) >= 3  # named by the end of epoch 4 at the latest: isolated samples trained


def test_inference_uses_main_head_only():
    model = E2ABL(SMALL_FCN, 2, (1, 64))
    x = torch.randn(3, 1, 64)
    model.eval()
    assert torch.equal(model(x), model.net.backbone(x))
    out = model.net(x)
    assert out.main.shape == (3, 2) and out.shallow.shape == (2, 3, 2)


def test_user_module_with_named_shallow_layer():
    def factory(input_shape, num_classes):
        return torch.nn.Sequential(
            torch.nn.Conv1d(input_shape[0], 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool1d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, num_classes),
        )

    model = E2ABL(factory, 3, (2, 32), shallow_layer="1")
    assert model.net(torch.randn(4, 2, 32)).shallow.shape == (2, 4, 3)
    with pytest.raises(ValueError, match="shallow_layer='nope'"):
        E2ABL(factory, 3, (2, 32), shallow_layer="nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": lambda: IsolationPolicy(alpha=0.0)}, r"alpha=0.0 must be in \(0, 1\)"),
        ({"policy": lambda: IsolationPolicy(alpha=1.5)}, r"alpha=1.5 must be in \(0, 1\)"),
        ({"policy": lambda: IsolationPolicy(min_share=0.0)}, r"min_share=0.0 must be in \(0, 1\)"),
        ({"policy": lambda: IsolationPolicy(min_share=1.0)}, r"min_share=1.0 must be in \(0, 1\)"),
        ({"policy": lambda: IsolationPolicy(warmup_epochs=0)}, r"warmup_epochs=0 must be at least 1"),
        ({"shallow_poolings": ("median",)}, "shallow_poolings"),
    ],
    ids=["alpha_zero", "alpha_above_one", "min_share_zero", "min_share_one", "warmup_zero", "pooling"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E2ABL(SMALL_FCN, 2, (1, 64), **{k: v() if callable(v) else v for k, v in kwargs.items()})


@pytest.mark.parametrize(
    "removed", ["isolation_ratio", "warmup_epochs", "target_patience", "cleanse", "ascent_ceiling"]
)
def test_knobs_of_the_old_policy_are_refused_by_name(removed):
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{removed}'"):
        E2ABL(SMALL_FCN, 2, (1, 64), **{removed: 1})


def test_default_policy():
    model = E2ABL(SMALL_FCN, 2, (1, 64))
    assert model.policy == IsolationPolicy() == IsolationPolicy(alpha=0.2, min_share=0.05, warmup_epochs=1)


class _Shifted(_Blind):
    """Indices that are not dense 0..N-1."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["index"] = item["index"] + len(self.dataset)
        return item


class ShiftedUCR(UCRDataModule):
    def train_dataloader(self):
        loader = super().train_dataloader()
        return DataLoader(_Shifted(loader.dataset), batch_size=loader.batch_size)


def test_non_dense_training_indices_are_refused():
    with pytest.raises(ValueError, match="dense indices 0..N-1"):
        _fit(ShiftedUCR, epochs=1)


def test_with_nothing_isolated_the_backbone_trains_exactly_as_the_undefended_model():
    """Do no harm, as a mechanism: until a sample is isolated, E2ABL's main path is the undefended model's
    (the heads are initialised from a forked RNG and learn from detached features, the main loss is the
    plain cross-entropy), so the backbone ends where the undefended one does. Compared to float rounding:
    the two modules reduce the batch's loss in different calls, which a CPU may round differently; a
    broken mechanism (another data order, gradients into the stem) moves the weights far more."""

    def fit(model_cls, **kwargs):
        L.seed_everything(0, verbose=False)
        dm = gunpoint()
        model = model_cls(backbone=SMALL_FCN, num_classes=dm.num_classes, input_shape=dm.input_shape, **kwargs)
        start = copy.deepcopy(model.state_dict())
        quiet_trainer(3).fit(model, dm)
        return model, start

    e2abl, _ = fit(E2ABL, policy=IsolationPolicy(warmup_epochs=5))  # no decision in 3 epochs: nothing isolated
    undefended, start = fit(NoDefense)
    assert not bool(e2abl.state.isolated.any()) and int(e2abl.state.epochs_decided) == 0
    ours, theirs = e2abl.net.backbone.state_dict(), undefended.backbone.state_dict()
    assert ours.keys() == theirs.keys()
    assert not torch.equal(theirs["net.convblock1.0.weight"], start["backbone.net.convblock1.0.weight"])  # it trained
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)


def test_pseudo_labels_taken_once_per_epoch_give_the_step_the_same_loss_and_gradients():
    """The step indexes pseudo-labels computed for the whole bank at the epoch start (they read only decided
    state); a row of them is the row a per-batch computation gives, so the loss and every gradient match
    a step that computes them from the batch, bit for bit, on isolated and trusted samples."""
    n, k = 40, 3
    torch.manual_seed(0)
    model = E2ABL(backbone=SMALL_FCN, num_classes=k, input_shape=(1, 24))
    model.state.resize(n, k, len(model.net.heads) + 1)
    model.state.given.copy_(torch.arange(n) % k)
    model.state.pred_ema.copy_(torch.rand(n, k).softmax(dim=1))
    model.state.isolated[::3] = True
    index = torch.tensor([5, 0, 9, 33, 12, 3, 27, 39])
    x, y = torch.randn(len(index), 1, 24), model.state.given[index]

    def grads(loss: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out = model.net(x)  # the reference: pseudo-labels of the batch's own rows
    pseudo, confidence = pseudo_labels(model.state.pred_ema[index], y)
    per_main = cleansing_losses(out.main, y, model.state.isolated[index], pseudo, confidence)
    ref_loss, ref_grads = grads(total_loss(per_main, shallow_losses(out.shallow, y)))
    model.on_train_epoch_start()
    assert model._pseudo is not None
    with pytest.warns(UserWarning, match="log"):  # self.log outside a Trainer warns
        loss, step_grads = grads(model.training_step({"input": x, "target": y, "index": index}, 0))
    assert torch.equal(loss, ref_loss)
    assert len(step_grads) == len(ref_grads) > 0
    assert all(torch.equal(g, r) for g, r in zip(step_grads, ref_grads, strict=True))
    model.state.isolated.zero_()
    model.on_train_epoch_start()  # nothing isolated: the step is the undefended one and needs no pseudo-labels
    assert model._pseudo is None
