"""E2ABL under DDP (2 CPU processes, gloo) against one process with the same global batch and seed.

What "the same" means here. The design promises two things:

1. every rank holds the identical state bank: the accumulators are all-reduced and the decision is a
   deterministic function of them. That is bit-exact and asserted bit-exactly (each rank saves its
   state bank and weights to a file);
2. DDP with batch ``b`` on ``W`` ranks is the one-process run with batch ``W * b``. That holds exactly
   in real arithmetic only for a genuinely equivalent set-up: the same samples in every global batch
   (the single process uses the same DistributedSampler permutation, see ``_e2abl_fit.DDPOrder``)
   and a normalisation that does not depend on the batch (BatchNorm's batch statistics would be per
   rank, and SyncBatchNorm needs a GPU: the backbone and heads use GroupNorm(1, C) here). In floating
   point the gradient is then summed in another order, so the weights drift apart by ~1e-6 per Adam step
   (7e-5 after the 50 steps here: the target is named after two passing epochs, so the run is 5
   epochs long), the margins agree to ~1e-5, and the discrete decisions (flagged, isolated, suspected
   target, recovered labels) agree exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_e2abl_fit.py")
DISCRETE = (
    "content",
    "flagged",
    "isolated",
    "recovered",
    "given",
    "flag_count",
    "first_flagged",
    "suspected_target",
    "candidate_target",
    "candidate_streak",
    "quiet_streak",
    "view",
    "epochs_decided",
    "detectable",
    "acc_count",
    "acc_given",
    "oracle_poisoned",
    "oracle_true",
)
#: per-sample floats: equal up to the order of the gradient sums (atol): the margins and probabilities to
#: 1e-5; the scores are the margins' within-class z (divided by a MAD down to ~0.07 here), so to 1e-3
CONTINUOUS = {"acc_sketch": 1e-4, "pred_ema": 1e-5, "acc_margin": 1e-5, "acc_prob": 1e-5, "score": 1e-3, "last_z": 1e-3}


def _launch(out: Path, devices: int, batch_size: int, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--devices", str(devices), "--batch-size", str(batch_size)]
    args += list(extra)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{what} timed out:\n{output[-3000:]}")
    assert proc.returncode == 0, f"{what} failed:\n{output[-3000:]}"


@pytest.mark.slow
def test_ddp_two_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    b = 10  # 200 training series: 100 per rank, 10 steps per epoch either way (no padding, no drop)
    single = _launch(tmp_path / "single", 1, 2 * b, tmp_path, "--epochs", "5")
    ddp = _launch(tmp_path / "ddp", 2, b, tmp_path, "--epochs", "5")
    _finish(single, "single-process fit")
    _finish(ddp, "DDP fit")

    one = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert rank0["world_size"] == rank1["world_size"] == 2 and one["world_size"] == 1
    assert one["steps"] == rank0["steps"] == rank1["steps"] == 50  # 5 epochs x 10 global batches

    # 1. the ranks are bit-identical: state bank (decided state and synced accumulators) and weights
    assert rank0["state"].keys() == rank1["state"].keys()
    for name in rank0["state"]:
        assert torch.equal(rank0["state"][name], rank1["state"][name]), f"state.{name} differs between ranks"
    for name in rank0["weights"]:
        assert torch.equal(rank0["weights"][name], rank1["weights"][name]), f"{name} differs between ranks"

    # every training sample was seen exactly once per epoch across the ranks (a rank's accumulators
    # must not be overwritten by DDP's buffer broadcast)
    assert torch.equal(rank0["state"]["acc_count"], torch.ones(200))

    # 2. the same decisions as one process with the same global batch; floats equal up to summation order
    state = one["state"]
    assert int(state["epochs_decided"]) == 4 and int(state["flagged"].sum()) > 0  # decisions from epoch 1 (warm-up 2)
    assert int(state["suspected_target"]) == 0 and int(state["isolated"].sum()) > 0
    # flagged at three decisions: named by the end of epoch 3, so epoch 4 trained isolated samples under DDP
    assert int(state["flag_count"].max()) >= 3
    for name in DISCRETE:
        assert torch.equal(state[name], rank0["state"][name]), f"state.{name}: one process != DDP"
    assert {*DISCRETE, *CONTINUOUS} == set(state), "a state buffer is compared neither exactly nor closely"
    for name, atol in CONTINUOUS.items():
        torch.testing.assert_close(state[name], rank0["state"][name], atol=atol, rtol=1e-5, equal_nan=True, msg=name)
    for name in one["weights"]:
        a, b_ = one["weights"][name], rank0["weights"][name]
        if a.is_floating_point():
            torch.testing.assert_close(a, b_, atol=2e-4, rtol=1e-5, msg=name)  # 50 steps of drift, see above
        else:
            assert torch.equal(a, b_), name


@pytest.mark.slow
def test_abl_under_ddp_keeps_ranks_identical_and_isolates_as_one_process(tmp_path: Path) -> None:
    """ABL's unlearning batches are cut identically on every rank and shared between them: the run
    ends (no rank waits for another's step), with bit-identical weights and isolated set on both
    ranks, and the isolated set of one process with the same global batch."""
    b = 5
    single = _launch(tmp_path / "single", 1, 2 * b, tmp_path, "--model", "abl")
    ddp = _launch(tmp_path / "ddp", 2, b, tmp_path, "--model", "abl")
    _finish(single, "single-process ABL fit")
    _finish(ddp, "DDP ABL fit")
    one = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert rank0["world_size"] == rank1["world_size"] == 2
    isolated = one["state"]["isolated"]
    assert int(isolated.sum()) == 10  # 20% of the 50 training series
    assert torch.equal(rank0["state"]["isolated"], rank1["state"]["isolated"])
    assert torch.equal(rank0["state"]["isolated"], isolated)
    for name in rank0["weights"]:
        assert torch.equal(rank0["weights"][name], rank1["weights"][name]), f"{name} differs between ranks"
    for run in (one, rank0, rank1):  # the ascent ran: the isolated batches' CE was logged in its epochs
        assert run["metrics"]["train/unlearn_ce"] > 0
