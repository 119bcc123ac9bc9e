"""Model families, by the names the reference code uses (METHOD.md, Network).

Usage::

    net = build_model("vgg8b", num_classes=10, loss="predsim")   # a LocalNetwork
    net = build_model("mlp", 10, "backprop", num_layers=3)        # the backprop baseline

One file per family: `mlp.py` (the paper's MLP), `vgg.py` (the VGG configs), `resnet.py`
(resnet18 ... resnet152), `wide_resnet.py` (wresnet<depth>-<k>, adapted `...a`). Every
family builds a `network.LocalNetwork`, so the per-block, memory-flat train step serves
it. A new family is a new file here plus its names in `build_model`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.models.mlp import MLP
from localjax.models.resnet import FINAL_POOLS, RESNET_CONFIGS, ResNet, check_final_pool
from localjax.models.vgg import VGG, VGG_CONFIGS
from localjax.models.wide_resnet import WIDE_RESNET_NAMES, WideResNet, parse_wide_resnet
from localjax.network import LocalNetwork

__all__ = [
    "MLP",
    "VGG",
    "VGG_CONFIGS",
    "ResNet",
    "RESNET_CONFIGS",
    "FINAL_POOLS",
    "WideResNet",
    "WIDE_RESNET_NAMES",
    "MODEL_NAMES",
    "LOSS_MODES",
    "COMPUTE_DTYPES",
    "compute_dtype",
    "build_model",
]

# the reference's model table; build_model also takes any wresnet<6n+4>-<k>[a]
MODEL_NAMES = ("mlp", *VGG_CONFIGS, *RESNET_CONFIGS, *WIDE_RESNET_NAMES)
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
    similarity_std: bool = True,
    pre_act: bool = False,
    no_batch_norm: bool = False,
    detach: bool = True,
    dtype: Any = "float32",
    final_pool: str = "reference",
) -> LocalNetwork:
    """Builds one of the paper's networks by name.

    Args:
      name: one of `MODEL_NAMES`: `mlp`, a key of `VGG_CONFIGS` (`vgg8b`, `vgg11b`, ...),
        of `RESNET_CONFIGS` (`resnet18` ... `resnet152`), or a Wide ResNet
        `wresnet<depth>-<k>` / adapted `wresnet<depth>-<k>a` (the reference's table:
        `WIDE_RESNET_NAMES`; any depth 6n + 4 is built).
      num_classes: K.
      loss: `pred`, `sim`, `predsim` (local learning) or `backprop` (baseline, no heads).
      num_layers: dense blocks (default 3 for `mlp`, 1 after a VGG conv stack); not used
        by the ResNets.
      num_hidden: units per dense block (mlp, VGG).
      feat_mult: channel multiplier (VGG; ResNet: stage widths int(feat_mult·64), ...;
        Wide ResNet: every width, 1 = the reference, which ignores it there).
      nonlin, dropout: block nonlinearity and dropout rate (where each family puts its
        dropout: see `ResNet`, `WideResNet`).
      beta, dim_in_decoder, bio, target_proj_size, unsup, alpha, similarity_std: see
        `HeadConfig` (`similarity_std=False` is the reference's `--no-similarity-std`).
      pre_act: the ResNets' pre-activation variant (the reference's `--pre-act`).
      no_batch_norm: the reference's `--no-batch-norm`: no BatchNorm in any block
        (dense and conv blocks, every convolution of a residual unit, pre-activation
        and loss-only ones included); an MLP or VGG then has no `batch_stats`. As in
        the reference, a ResNet's projection shortcuts keep their BatchNorm, a Wide
        ResNet keeps its final one, and no layer gains a bias (ResNet convolutions have
        none either way; dense, VGG and Wide ResNet layers have one either way).
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype: a name of `COMPUTE_DTYPES` (`float32`, `bfloat16`) or the
        dtype itself; parameters stay float32.
      final_pool: the (Wide) ResNets' last plain layer, one of `FINAL_POOLS`:
        `reference` (the reference's final average pool, or an adapted Wide ResNet's max
        pool, its output flattened: sized for 32 px inputs) or `global` (the mean over
        H and W, the standard ImageNet head: the output layer's input no longer depends
        on the input size); see `ResNet`, `WideResNet`.

    Returns:
      An unbound `LocalNetwork` (see `MLP`, `VGG`).

    Raises:
      ConfigError (a ValueError): for an unknown model, loss or dtype name (the message
        lists the known ones), or an invalid head setting (from `HeadConfig`: beta/alpha
        outside [0, 1], num_classes < 2, unknown unsup); a Wide ResNet depth that is not
        6n + 4; an unknown `final_pool`; `unsup="recon"`, `pre_act` or
        `final_pool="global"` where the model does not support it.

    Implements the paper's networks and loss modes (METHOD.md, Network; Local losses).
    """
    wide = parse_wide_resnet(name)  # ConfigError for a depth that is not 6n + 4
    if name not in MODEL_NAMES and wide is None:
        raise ConfigError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}.")
    residual = wide is not None or name in RESNET_CONFIGS
    check_final_pool(final_pool)
    if final_pool != "reference" and not residual:
        raise ConfigError(
            f"final_pool={final_pool!r} applies to the ResNets and Wide ResNets; {name!r} "
            "flattens its features into dense layers (keep final_pool='reference')."
        )
    if pre_act and name not in RESNET_CONFIGS:
        raise ConfigError(
            f"pre_act is the ResNets' option (the reference's --pre-act); {name!r} has none "
            "(Wide ResNets are pre-activation already)."
        )
    if residual and loss != "backprop" and unsup == "recon":
        raise ConfigError(
            f"unsup='recon' is not available for {name!r}: the reference's reconstruction "
            "decoder (a transposed conv of the block's own geometry) does not fit its "
            "strided convolutions; use unsup='none' or 'sim'."
        )
    if loss not in LOSS_MODES:
        hint = (
            " (bio is a switch, not a loss: --config.bio=True with pred, sim or predsim)"
            if loss == "bio"
            else ""
        )
        raise ConfigError(f"unknown loss {loss!r}; choose one of {list(LOSS_MODES)}{hint}.")
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
            similarity_std=similarity_std,
        )
    if name in RESNET_CONFIGS:
        return ResNet(
            num_classes,
            head,
            config=name,
            feat_mult=feat_mult,
            pre_act=pre_act,
            nonlin=nonlin,
            dropout=dropout,
            detach=detach,
            dtype=dtype,
            batch_norm=not no_batch_norm,
            final_pool=final_pool,
        )
    if wide is not None:
        depth, k, adapted = wide
        return WideResNet(
            num_classes,
            head,
            depth=depth,
            widen_factor=k,
            adapted=adapted,
            feat_mult=feat_mult,
            nonlin=nonlin,
            dropout=dropout,
            detach=detach,
            dtype=dtype,
            batch_norm=not no_batch_norm,
            final_pool=final_pool,
        )
    common = dict(
        num_classes=num_classes,
        head=head,
        num_hidden=num_hidden,
        nonlin=nonlin,
        dropout=dropout,
        detach=detach,
        dtype=dtype,
        batch_norm=not no_batch_norm,
    )
    if name == "mlp":
        return MLP(num_layers=3 if num_layers is None else num_layers, **common)
    return VGG(
        config=name,
        feat_mult=feat_mult,
        num_layers=1 if num_layers is None else num_layers,
        **common,
    )
