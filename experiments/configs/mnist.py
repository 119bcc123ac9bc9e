"""MNIST recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/mnist.py:mlp_predsim \
        --workdir=runs/mnist_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=mnist --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                  | published | localjax     | wall time |
| -------------------- | --------- | ------------ | --------- |
| mlp_backprop         | 0.75      | not run here |           |
| mlp_pred             | 0.68      | not run here |           |
| mlp_sim              | 0.80      | not run here |           |
| mlp_predsim          | 0.62      | not run here |           |
| vgg8b_backprop       | 0.26      | not run here |           |
| vgg8b_pred           | 0.40      | not run here |           |
| vgg8b_sim            | 0.65      | not run here |           |
| vgg8b_predsim        | 0.31      | not run here |           |
| vgg8b_predsim_cutout | 0.26      | not run here |           |

All rows: Adam, batch 128, 100 epochs, lr x 0.25 after epochs 50, 75, 89, 94.
No row of this dataset has been run with localjax yet.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "mlp_predsim"
ROWS = table(
    100,
    (50, 75, 89, 94),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("mlp", "backprop", 3, 1024, 1, 0.1, 0.0005, "relu", 4096, 0.75),
    ("mlp", "pred", 3, 1024, 1, 0.1, 0.0005, "relu", 4096, 0.68),
    ("mlp", "sim", 3, 1024, 1, 0.1, 0.0005, "leakyrelu", 4096, 0.8),
    ("mlp", "predsim", 3, 1024, 1, 0.1, 0.0005, "leakyrelu", 4096, 0.62),
    ("vgg8b", "backprop", 1, 1024, 1, 0.2, 0.0005, "relu", 4096, 0.26),
    ("vgg8b", "pred", 1, 1024, 1, 0.2, 0.0005, "relu", 1024, 0.4),
    ("vgg8b", "sim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 4096, 0.65),
    ("vgg8b", "predsim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 1024, 0.31),
    ("vgg8b", "predsim", 1, 1024, 1, 0.2, 0.0005, "leakyrelu", 1024, 0.26, dict(cutout_length=14)),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one published MNIST row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("mnist", ROWS, row)
