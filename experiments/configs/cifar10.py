"""CIFAR-10 recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/cifar10.py:mlp_predsim \
        --workdir=runs/cifar10_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=cifar10 --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                      | published | localjax     | wall time |
| ------------------------ | --------- | ------------ | --------- |
| mlp_backprop             | 33.56     | not run here |           |
| mlp_pred                 | 32.33     | not run here |           |
| mlp_sim                  | 33.48     | not run here |           |
| mlp_predsim              | 30.93     | not run here |           |
| vgg8b_backprop           | 5.99      | not run here |           |
| vgg8b_pred               | 8.40      | not run here |           |
| vgg8b_sim                | 7.16      | not run here |           |
| vgg8b_predsim            | 5.58      | not run here |           |
| vgg11b_backprop          | 5.56      | not run here |           |
| vgg11b_pred              | 8.39      | not run here |           |
| vgg11b_sim               | 6.70      | not run here |           |
| vgg11b_predsim           | 5.30      | not run here |           |
| vgg11b_x2_backprop       | 4.91      | not run here |           |
| vgg11b_x2_pred           | 7.30      | not run here |           |
| vgg11b_x2_sim            | 6.66      | not run here |           |
| vgg11b_x2_predsim        | 4.42      | not run here |           |
| vgg11b_x3_backprop       | 5.02      | not run here |           |
| vgg11b_x3_pred           | 7.37      | not run here |           |
| vgg11b_x3_sim            | 9.34      | not run here |           |
| vgg11b_x3_predsim        | 3.97      | not run here |           |
| vgg11b_x3_predsim_cutout | 3.60      | not run here |           |
| vgg8b_pred_bio           | -         | not run here |           |
| vgg8b_sim_bio            | -         | not run here |           |
| vgg8b_predsim_bio        | -         | not run here |           |
| vgg8b_x2_predsim_bio     | -         | not run here |           |
| resnet18_predsim         | none      | not run here |           |
| wresnet28-10_predsim     | none      | not run here |           |

All rows: Adam, batch 128, 400 epochs, lr x 0.25 after epochs 200, 300, 350, 375.
The `_bio` rows are the backprop-free variant (METHOD.md, Backprop-free variant);
results.tsv has no error for them.
The paper publishes no ResNet rows: `resnet18_predsim` (ResNet-18) and
`wresnet28-10_predsim` (WRN-28-10) are not recipes of the paper but the reference code's
defaults for those models (predsim, lr 5e-4, no dropout, relu, dim_in_decoder 4096; the
schedule above); they have no published error to compare with (`published=False`).
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
    ("mlp", "backprop", 3, 3000, 1, 0.1, 0.0005, "relu", 4096, 33.56),
    ("mlp", "pred", 3, 3000, 1, 0.1, 0.0005, "relu", 4096, 32.33),
    ("mlp", "sim", 3, 3000, 1, 0.1, 0.0005, "leakyrelu", 4096, 33.48),
    ("mlp", "predsim", 3, 3000, 1, 0.1, 0.0005, "leakyrelu", 4096, 30.93),
    ("vgg8b", "backprop", 1, 1024, 1, 0.2, 0.0005, "relu", 4096, 5.99),
    ("vgg8b", "pred", 1, 1024, 1, 0.2, 0.0005, "relu", 2048, 8.4),
    ("vgg8b", "sim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 4096, 7.16),
    ("vgg8b", "predsim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 2048, 5.58),
    ("vgg11b", "backprop", 1, 1024, 1, 0.2, 0.0005, "relu", 4096, 5.56),
    ("vgg11b", "pred", 1, 1024, 1, 0.2, 0.0005, "relu", 2048, 8.39),
    ("vgg11b", "sim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 4096, 6.7),
    ("vgg11b", "predsim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 2048, 5.3),
    ("vgg11b", "backprop", 1, 1024, 2, 0.25, 0.0003, "relu", 4096, 4.91),
    ("vgg11b", "pred", 1, 1024, 2, 0.25, 0.0003, "relu", 4096, 7.3),
    ("vgg11b", "sim", 1, 1024, 2, 0.25, 0.0003, "leakyrelu", 4096, 6.66),
    ("vgg11b", "predsim", 1, 1024, 2, 0.25, 0.0003, "leakyrelu", 4096, 4.42),
    ("vgg11b", "backprop", 1, 1024, 3, 0.3, 0.0003, "relu", 4096, 5.02),
    ("vgg11b", "pred", 1, 1024, 3, 0.3, 0.0003, "relu", 4096, 7.37),
    ("vgg11b", "sim", 1, 1024, 3, 0.3, 0.0003, "leakyrelu", 4096, 9.34),
    ("vgg11b", "predsim", 1, 1024, 3, 0.3, 0.0003, "leakyrelu", 4096, 3.97),
    ("vgg11b", "predsim", 1, 1024, 3, 0.3, 0.0003, "leakyrelu", 4096, 3.6, dict(cutout_length=16)),
    ("vgg8b", "pred", 1, 1024, 1, 0.05, 0.0005, "relu", 4096, None, dict(bio=True)),
    ("vgg8b", "sim", 1, 1024, 1, 0.05, 0.0005, "leakyrelu", 4096, None, dict(bio=True)),
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
        None,
        dict(beta=0.01, bio=True),
    ),
    (
        "vgg8b",
        "predsim",
        1,
        1024,
        2,
        0.1,
        0.0003,
        "leakyrelu",
        4096,
        None,
        dict(beta=0.01, bio=True),
    ),
    # not in the paper (published=False): the residual networks at the reference code's
    # defaults (train.py's argparse: predsim, lr 5e-4, dropout 0, relu, dim_in_decoder
    # 4096, beta 0.99, feat_mult 1, Adam, batch 128, no cutout; num_layers and
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
    """The config of one CIFAR-10 row (the paper's, or a ResNet row it does not publish);
    see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("cifar10", ROWS, row)
