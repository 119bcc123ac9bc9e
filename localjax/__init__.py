"""localjax: training neural networks with local error signals in JAX/Flax
(Nøkland & Eidnes 2019, arXiv 1901.06656).

Usage::

    import localjax as lj

    head = lj.HeadConfig("predsim", num_classes=10)
    net = lj.LocalNetwork(
        layers=(lj.LocalBlock(MyUnit(64), head=head, name="unit_0"),
                lj.LocalBlock(MyUnit(64), head=head, name="unit_1")),
        output=lj.OutputLayer(10, zero_init=True),
    )
    state = lj.create_train_state(net, tx, key, x[:2], labels[:2])
    step = jax.jit(lj.make_train_step(net, tx), donate_argnums=0)   # per-block gradients

The public API (`__all__`): the local losses (METHOD.md, Local losses), the blocks and their heads
(`LocalDense`, `LocalConv`, and `LocalBlock` for any Linen module), the network
(`LocalNetwork`, `cut`, `apply_blocks`, `OutputLayer`), the paper's networks (`MLP`,
`VGG`, `build_model`), the fused train step and its state, and checks for models you
compose yourself (`check_gradient_isolation`, `check_labels`, `checked_step`).
docs/guide.md walks through them; docs/DESIGN.md maps the files.

Read the method in this order: `losses.py`, `heads.py`, `blocks.py`, `network.py`,
`models/`; what runs it sits in `training/`, `data/`, `ops/` and `perf/`.
"""

from localjax.blocks import LocalBlock, LocalConv, LocalDense
from localjax.checks import GradientLeakError, check_gradient_isolation, checked_step
from localjax.errors import ConfigError, DatasetError, TrainingError
from localjax.heads import HeadConfig, LocalHead
from localjax.losses import (
    bce_loss,
    bio_pred_targets,
    check_labels,
    pred_loss,
    predsim_loss,
    sim_loss,
    similarity_matrix,
)
from localjax.models import MLP, VGG, build_model
from localjax.network import (
    LocalNetwork,
    OutputLayer,
    apply_blocks,
    count_params,
    cut,
    output_loss_weight,
)
from localjax.nnx_bridge import to_nnx
from localjax.objective import local_objective, summarize_metrics
from localjax.ops.feedback import fa_matmul
from localjax.training.optimizer import make_optimizer, milestone_schedule
from localjax.training.state import TrainState, create_train_state
from localjax.training.steps import make_eval_step, make_multi_step, make_train_step

__version__ = "0.1.0"
__all__ = [
    # local losses (METHOD.md, Local losses; Backprop-free variant)
    "similarity_matrix",
    "sim_loss",
    "pred_loss",
    "predsim_loss",
    "bce_loss",
    "bio_pred_targets",
    "fa_matmul",
    # blocks and heads (METHOD.md, Network; Local losses; paper Fig. 1)
    "HeadConfig",
    "LocalHead",
    "LocalDense",
    "LocalConv",
    "LocalBlock",
    # composing models (METHOD.md, Network; Local losses)
    "LocalNetwork",
    "cut",
    "apply_blocks",
    "OutputLayer",
    "output_loss_weight",
    "MLP",
    "VGG",
    "build_model",
    "count_params",
    # training (METHOD.md, Training)
    "TrainState",
    "create_train_state",
    "make_train_step",
    "make_eval_step",
    "make_multi_step",
    "make_optimizer",
    "milestone_schedule",
    "local_objective",
    "summarize_metrics",
    # checks for models you compose
    "check_gradient_isolation",
    "GradientLeakError",
    "check_labels",
    "checked_step",
    # Flax NNX
    "to_nnx",
    # errors a user acts on
    "ConfigError",
    "DatasetError",
    "TrainingError",
]
