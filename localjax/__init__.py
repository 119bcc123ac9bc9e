"""localjax: training neural networks with local error signals in JAX/Flax
(Nøkland & Eidnes 2019, arXiv 1901.06656)."""

from localjax.layers import HeadConfig, LocalConv, LocalDense, LocalHead
from localjax.losses import (
    bce_loss,
    pred_loss,
    predsim_loss,
    sim_loss,
    similarity_matrix,
)
from localjax.models import MLP, VGG, build_model, count_params, cut

__version__ = "0.1.0"
__all__ = [
    "HeadConfig",
    "LocalConv",
    "LocalDense",
    "LocalHead",
    "MLP",
    "VGG",
    "bce_loss",
    "build_model",
    "count_params",
    "cut",
    "pred_loss",
    "predsim_loss",
    "sim_loss",
    "similarity_matrix",
]
