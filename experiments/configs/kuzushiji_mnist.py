"""Kuzushiji-MNIST recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/kuzushiji_mnist.py:mlp_predsim \
        --workdir=runs/kuzushiji_mnist_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=kuzushiji_mnist --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                  | published | localjax     | wall time |
| -------------------- | --------- | ------------ | --------- |
| mlp_backprop         | 5.99      | not run here |           |
| mlp_pred             | 7.26      | not run here |           |
| mlp_sim              | 9.80      | not run here |           |
| mlp_predsim          | 7.33      | not run here |           |
| vgg8b_backprop       | 1.53      | not run here |           |
| vgg8b_pred           | 2.22      | not run here |           |
| vgg8b_sim            | 2.19      | not run here |           |
| vgg8b_predsim        | 1.36      | not run here |           |
| vgg8b_predsim_cutout | 0.99      | not run here |           |

All rows: Adam, batch 128, 100 epochs, lr x 0.25 after epochs 50, 75, 89, 94.
No row of this dataset has been run with localjax yet.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "mlp_predsim"
ROWS = table(
    100,
    (50, 75, 89, 94),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("mlp", "backprop", 3, 1024, 1, 0.2, 0.0005, "relu", 4096, 5.99),
    ("mlp", "pred", 3, 1024, 1, 0.2, 0.0005, "relu", 4096, 7.26),
    ("mlp", "sim", 3, 1024, 1, 0.2, 0.0005, "leakyrelu", 4096, 9.8),
    ("mlp", "predsim", 3, 1024, 1, 0.2, 0.0005, "leakyrelu", 4096, 7.33),
    ("vgg8b", "backprop", 1, 1024, 1, 0.3, 0.0005, "relu", 4096, 1.53),
    ("vgg8b", "pred", 1, 1024, 1, 0.3, 0.0005, "relu", 1024, 2.22),
    ("vgg8b", "sim", 1, 1024, 1, 0.3, 0.0005, "leakyrelu", 4096, 2.19),
    ("vgg8b", "predsim", 1, 1024, 1, 0.3, 0.0005, "leakyrelu", 1024, 1.36),
    ("vgg8b", "predsim", 1, 1024, 1, 0.15, 0.0005, "leakyrelu", 1024, 0.99, dict(cutout_length=14)),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one published Kuzushiji-MNIST row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("kuzushiji_mnist", ROWS, row)
