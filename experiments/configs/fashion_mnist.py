"""Fashion-MNIST recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/fashion_mnist.py:mlp_predsim \
        --workdir=runs/fashion_mnist_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=fashion_mnist --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                     | published | localjax     | wall time |
| ----------------------- | --------- | ------------ | --------- |
| mlp_backprop            | 8.37      | 8.63         | 49.7 min  |
| mlp_pred                | 8.60      | 8.73         | 72.3 min  |
| mlp_sim                 | 9.70      | 9.59         | 81.4 min  |
| mlp_predsim             | 8.54      | 9.05         | 101.1 min |
| vgg8b_backprop          | 4.53      | not run here |           |
| vgg8b_pred              | 5.66      | not run here |           |
| vgg8b_sim               | 5.12      | not run here |           |
| vgg8b_predsim           | 4.65      | not run here |           |
| vgg8b_x2_backprop       | 4.55      | not run here |           |
| vgg8b_x2_pred           | 5.11      | not run here |           |
| vgg8b_x2_sim            | 4.92      | not run here |           |
| vgg8b_x2_predsim        | 4.33      | not run here |           |
| vgg8b_x2_predsim_cutout | 4.14      | not run here |           |

All rows: Adam, batch 128, 200 epochs, lr x 0.25 after epochs 100, 150, 175, 188.
Real data: Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or
--config.data_dir.

localjax's numbers: one run per row, seed 0, on a 2-core CPU shared with other jobs;
wall time sums the epochs' train + eval times. The median epoch took 14.1 s (backprop),
19.1 s (pred), 24.0 s (sim) and 25.9 s (predsim). `make train` (mlp_predsim, 5 epochs)
reaches 13.32 %; from a fresh clone, set-up and training took 3 min 20 s. The VGG rows
want a GPU.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "mlp_predsim"
ROWS = table(
    200,
    (100, 150, 175, 188),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("mlp", "backprop", 3, 1024, 1, 0.025, 0.0005, "relu", 4096, 8.37),
    ("mlp", "pred", 3, 1024, 1, 0.025, 0.0005, "relu", 4096, 8.6),
    ("mlp", "sim", 3, 1024, 1, 0.025, 0.0005, "leakyrelu", 4096, 9.7),
    ("mlp", "predsim", 3, 1024, 1, 0.025, 0.0005, "leakyrelu", 4096, 8.54),
    ("vgg8b", "backprop", 1, 1024, 1, 0.1, 0.0005, "relu", 4096, 4.53),
    ("vgg8b", "pred", 1, 1024, 1, 0.1, 0.0005, "relu", 1024, 5.66),
    ("vgg8b", "sim", 1, 1024, 1, 0.1, 0.0005, "leakyrelu", 4096, 5.12),
    ("vgg8b", "predsim", 1, 1024, 1, 0.1, 0.0005, "leakyrelu", 1024, 4.65),
    ("vgg8b", "backprop", 1, 1024, 2, 0.2, 0.0003, "relu", 4096, 4.55),
    ("vgg8b", "pred", 1, 1024, 2, 0.2, 0.0003, "relu", 4096, 5.11),
    ("vgg8b", "sim", 1, 1024, 2, 0.2, 0.0003, "leakyrelu", 4096, 4.92),
    ("vgg8b", "predsim", 1, 1024, 2, 0.2, 0.0003, "leakyrelu", 4096, 4.33),
    ("vgg8b", "predsim", 1, 1024, 2, 0.2, 0.0003, "leakyrelu", 4096, 4.14, dict(cutout_length=14)),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one published Fashion-MNIST row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("fashion_mnist", ROWS, row)
