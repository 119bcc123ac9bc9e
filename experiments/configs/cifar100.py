"""CIFAR-100 recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/cifar100.py:mlp_predsim \
        --workdir=runs/cifar100_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=cifar100 --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                  | published | localjax     | wall time |
| -------------------- | --------- | ------------ | --------- |
| mlp_backprop         | 62.57     | not run here |           |
| mlp_pred             | 58.87     | not run here |           |
| mlp_sim              | 62.46     | not run here |           |
| mlp_predsim          | 56.88     | not run here |           |
| vgg8b_backprop       | 26.24     | not run here |           |
| vgg8b_pred           | 29.32     | not run here |           |
| vgg8b_sim            | 32.64     | not run here |           |
| vgg8b_predsim        | 24.07     | not run here |           |
| vgg11b_backprop      | 25.18     | not run here |           |
| vgg11b_pred          | 29.58     | not run here |           |
| vgg11b_sim           | 30.82     | not run here |           |
| vgg11b_predsim       | 24.05     | not run here |           |
| vgg11b_x2_backprop   | 23.44     | not run here |           |
| vgg11b_x2_pred       | 26.91     | not run here |           |
| vgg11b_x2_sim        | 28.03     | not run here |           |
| vgg11b_x2_predsim    | 21.20     | not run here |           |
| vgg11b_x3_backprop   | 23.69     | not run here |           |
| vgg11b_x3_pred       | 25.90     | not run here |           |
| vgg11b_x3_sim        | 28.01     | not run here |           |
| vgg11b_x3_predsim    | 20.13     | not run here |           |
| resnet18_predsim     | none      | not run here |           |
| wresnet28-10_predsim | none      | not run here |           |

All rows: Adam, batch 128, 400 epochs, lr x 0.25 after epochs 200, 300, 350, 375.
The paper's sim/predsim rows use the classes-per-batch sampler (20 classes per batch
until epoch 200). results.tsv lists 27.3M parameters for the MLP, the CIFAR-10 count;
with 100 outputs it has 27.5M.
The paper publishes no ResNet rows: `resnet18_predsim` (ResNet-18) and
`wresnet28-10_predsim` (WRN-28-10) are not recipes of the paper but the reference code's
defaults for those models (predsim, lr 5e-4, no dropout, relu, dim_in_decoder 4096, no
classes-per-batch sampler; the schedule above); they have no published error to compare
with (`published=False`).
The reference code itself cannot train `resnet18_predsim`: its BasicBlock sizes a strided
unit's pred decoder for the unit's input, and the first such unit stops with a shape
error (tools/reference_param_counts.py --check-forward); localjax sizes the decoder from
the block's output (tests/test_resnet.py). Its WRN-28-10 trains as is.
No row of this dataset has been run with localjax yet.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "mlp_predsim"
ROWS = table(
    400,
    (200, 300, 350, 375),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("mlp", "backprop", 3, 3000, 1, 0.025, 0.0005, "relu", 4096, 62.57),
    ("mlp", "pred", 3, 3000, 1, 0.025, 0.0005, "relu", 4096, 58.87),
    (
        "mlp",
        "sim",
        3,
        3000,
        1,
        0.025,
        0.0005,
        "leakyrelu",
        4096,
        62.46,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    (
        "mlp",
        "predsim",
        3,
        3000,
        1,
        0.025,
        0.0005,
        "leakyrelu",
        4096,
        56.88,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    ("vgg8b", "backprop", 1, 1024, 1, 0.05, 0.0005, "relu", 4096, 26.24),
    ("vgg8b", "pred", 1, 1024, 1, 0.05, 0.0005, "relu", 4096, 29.32),
    (
        "vgg8b",
        "sim",
        1,
        1024,
        1,
        0.05,
        0.0005,
        "leakyrelu",
        4096,
        32.64,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    (
        "vgg8b",
        "predsim",
        1,
        1024,
        1,
        0.05,
        0.0005,
        "leakyrelu",
        4096,
        24.07,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    ("vgg11b", "backprop", 1, 1024, 1, 0.05, 0.0005, "relu", 4096, 25.18),
    ("vgg11b", "pred", 1, 1024, 1, 0.05, 0.0005, "relu", 4096, 29.58),
    (
        "vgg11b",
        "sim",
        1,
        1024,
        1,
        0.05,
        0.0005,
        "leakyrelu",
        4096,
        30.82,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    (
        "vgg11b",
        "predsim",
        1,
        1024,
        1,
        0.05,
        0.0005,
        "leakyrelu",
        4096,
        24.05,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    ("vgg11b", "backprop", 1, 1024, 2, 0.1, 0.0003, "relu", 4096, 23.44),
    ("vgg11b", "pred", 1, 1024, 2, 0.1, 0.0003, "relu", 4096, 26.91),
    (
        "vgg11b",
        "sim",
        1,
        1024,
        2,
        0.1,
        0.0003,
        "leakyrelu",
        4096,
        28.03,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    (
        "vgg11b",
        "predsim",
        1,
        1024,
        2,
        0.1,
        0.0003,
        "leakyrelu",
        4096,
        21.2,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    ("vgg11b", "backprop", 1, 1024, 3, 0.15, 0.0003, "relu", 4096, 23.69),
    ("vgg11b", "pred", 1, 1024, 3, 0.15, 0.0003, "relu", 4096, 25.9),
    (
        "vgg11b",
        "sim",
        1,
        1024,
        3,
        0.15,
        0.0003,
        "leakyrelu",
        4096,
        28.01,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    (
        "vgg11b",
        "predsim",
        1,
        1024,
        3,
        0.15,
        0.0003,
        "leakyrelu",
        4096,
        20.13,
        dict(classes_per_batch=20, classes_per_batch_until_epoch=200),
    ),
    # not in the paper (published=False): the residual networks at the reference code's
    # defaults (train.py's argparse: predsim, lr 5e-4, dropout 0, relu, dim_in_decoder
    # 4096, beta 0.99, feat_mult 1, Adam, batch 128, no classes-per-batch sampler; num_layers and
    # num_hidden are not used by these models)
    ("resnet18", "predsim", 1, 1024, 1, 0.0, 0.0005, "relu", 4096, None, dict(published=False)),
    (
        "wresnet28-10",
        "predsim",
        1,
        1024,
        1,
        0.0,
        0.0005,
        "relu",
        4096,
        None,
        dict(published=False),
    ),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one CIFAR-100 row (the paper's, or a ResNet row it does not publish);
    see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("cifar100", ROWS, row)
