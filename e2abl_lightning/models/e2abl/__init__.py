"""E2ABL: end-to-end anti-backdoor learning (arXiv 2401.03215)."""

from e2abl_lightning.models.e2abl.lightning_model import E2ABL
from e2abl_lightning.models.e2abl.policy import IsolationPolicy
from e2abl_lightning.models.e2abl.state import IsolationState
from e2abl_lightning.models.e2abl.torch_model import FusedShallowHeads, ShallowHead, TwoHeadNet, TwoHeadOutput

__all__ = [
    "E2ABL",
    "FusedShallowHeads",
    "IsolationPolicy",
    "IsolationState",
    "ShallowHead",
    "TwoHeadNet",
    "TwoHeadOutput",
]
