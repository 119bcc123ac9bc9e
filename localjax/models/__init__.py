"""Model families, by the names the reference code uses (METHOD.md, Network).

Usage::

    net = build_model("vgg8b", num_classes=10, loss="predsim")   # a LocalNetwork
    net = build_model("mlp", 10, "backprop", num_layers=3)        # the backprop baseline

One file per family: `mlp.py` (the paper's MLP), `vgg.py` (the VGG configs). Every
family builds a `network.LocalNetwork`, so the per-block, memory-flat train step serves
it. A new family (ResNet, Wide ResNet) is a new file here plus its names in
`build_model`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.models.mlp import MLP
from localjax.models.vgg import VGG, VGG_CONFIGS
from localjax.network import LocalNetwork

__all__ = [
    "MLP",
    "VGG",
    "VGG_CONFIGS",
    "MODEL_NAMES",
    "LOSS_MODES",
    "COMPUTE_DTYPES",
    "compute_dtype",
    "build_model",
]

MODEL_NAMES = ("mlp", *VGG_CONFIGS)
LOSS_MODES = ("pred", "sim", "predsim", "backprop")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(dtype: Any) -> Any:
    """The compute dtype for a name of `COMPUTE_DTYPES`, or `dtype` itself.

    Args:
      dtype: `float32`, `bfloat16`, or a dtype (returned unchanged).

    Returns:
      A JAX dtype.

    Raises:
      ConfigError: an unknown name, listing the known ones.
    """
    if not isinstance(dtype, str):
        return dtype
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(COMPUTE_DTYPES)}.")
    return COMPUTE_DTYPES[dtype]


def build_model(
    name: str,
    num_classes: int,
    loss: str = "predsim",
    *,
    num_layers: int | None = None,
    num_hidden: int = 1024,
    feat_mult: float = 1.0,
    nonlin: str = "relu",
    dropout: float = 0.0,
    beta: float = 0.99,
    dim_in_decoder: int = 4096,
    bio: bool = False,
    target_proj_size: int = 128,
    unsup: str = "none",
    alpha: float = 0.0,
    detach: bool = True,
    dtype: Any = "float32",
) -> LocalNetwork:
    """Builds one of the paper's networks by name.

    Args:
      name: `mlp` or a key of `VGG_CONFIGS` (`vgg8b`, `vgg11b`, ...).
      num_classes: K.
      loss: `pred`, `sim`, `predsim` (local learning) or `backprop` (baseline, no heads).
      num_layers: dense blocks (default 3 for `mlp`, 1 after a VGG conv stack).
      num_hidden: units per dense block.
      feat_mult: VGG channel multiplier.
      nonlin, dropout: block nonlinearity and dropout rate.
      beta, dim_in_decoder, bio, target_proj_size, unsup, alpha: see `HeadConfig`.
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype: a name of `COMPUTE_DTYPES` (`float32`, `bfloat16`) or the
        dtype itself; parameters stay float32.

    Returns:
      An unbound `LocalNetwork` (see `MLP`, `VGG`).

    Raises:
      ConfigError (a ValueError): for an unknown model, loss or dtype name (the message
        lists the known ones), or an invalid head setting (from `HeadConfig`: beta/alpha outside [0, 1],
        num_classes < 2, unknown unsup).

    Implements the paper's networks and loss modes (METHOD.md, Network; Local losses).
    """
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}.")
    if loss not in LOSS_MODES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {list(LOSS_MODES)}.")
    dtype = compute_dtype(dtype)
    head = None
    if loss != "backprop":
        head = HeadConfig(
            loss=loss,
            num_classes=num_classes,
            beta=beta,
            dim_in_decoder=dim_in_decoder,
            bio=bio,
            target_proj_size=target_proj_size,
            unsup=unsup,
            alpha=alpha,
        )
    common = dict(
        num_classes=num_classes,
        head=head,
        num_hidden=num_hidden,
        nonlin=nonlin,
        dropout=dropout,
        detach=detach,
        dtype=dtype,
    )
    if name == "mlp":
        return MLP(num_layers=3 if num_layers is None else num_layers, **common)
    return VGG(
        config=name,
        feat_mult=feat_mult,
        num_layers=1 if num_layers is None else num_layers,
        **common,
    )
