"""localjax: training neural networks with local error signals in JAX/Flax
(Nøkland & Eidnes 2019, arXiv 1901.06656).

Usage::

    import localjax as lj

    block = lj.LocalBlock(MyUnit(64), head=lj.HeadConfig("predsim", num_classes=10))
    out, local = block.apply(variables, x, labels)      # local["loss"]: the local loss
    step = jax.jit(lj.make_train_step(model, optax.adam(5e-4)), donate_argnums=0)

The public API (`__all__`): the local losses (METHOD.md, Local losses), the blocks and their heads
(`LocalDense`, `LocalConv`, and `LocalBlock` for any Linen module), the model
composition helpers (`cut`, `apply_blocks`, `OutputLayer`), the paper's networks (`MLP`,
`VGG`, `build_model`), the fused train step and its state, and checks for models you
compose yourself (`check_gradient_isolation`, `check_labels`, `checked_step`).
README.md ("Local losses in your own models") walks through them.
"""

from localjax.compose import (
    GradientLeakError,
    LocalBlock,
    check_gradient_isolation,
    check_labels,
    checked_step,
    local_objective,
    summarize_metrics,
    to_nnx,
)
from localjax.feedback import fa_matmul
from localjax.layers import HeadConfig, LocalConv, LocalDense, LocalHead
from localjax.losses import (
    bce_loss,
    bio_pred_targets,
    pred_loss,
    predsim_loss,
    sim_loss,
    similarity_matrix,
)
from localjax.models import (
    MLP,
    VGG,
    OutputLayer,
    apply_blocks,
    build_model,
    count_params,
    cut,
    output_loss_weight,
)
from localjax.step import (
    TrainState,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
    milestone_schedule,
)

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
]
