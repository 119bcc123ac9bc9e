"""SVHN recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/svhn.py:vgg8b_predsim \
        --workdir=runs/svhn_vgg8b_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=svhn --rows='vgg8b_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                  | published | localjax     | wall time |
| -------------------- | --------- | ------------ | --------- |
| vgg8b_backprop       | 2.29      | not run here |           |
| vgg8b_pred           | 2.12      | not run here |           |
| vgg8b_sim            | 1.89      | not run here |           |
| vgg8b_predsim        | 1.74      | not run here |           |
| vgg8b_predsim_cutout | 1.65      | not run here |           |

All rows: Adam, batch 128, 100 epochs, lr x 0.25 after epochs 50, 75, 89, 94.
Train set = train + extra (METHOD.md).
No row of this dataset has been run with localjax yet.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "vgg8b_predsim"
ROWS = table(
    100,
    (50, 75, 89, 94),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("vgg8b", "backprop", 1, 1024, 1, 0.3, 0.0003, "relu", 4096, 2.29),
    ("vgg8b", "pred", 1, 1024, 1, 0.3, 0.0003, "relu", 2048, 2.12),
    ("vgg8b", "sim", 1, 1024, 1, 0.3, 0.0003, "leakyrelu", 4096, 1.89),
    ("vgg8b", "predsim", 1, 1024, 1, 0.3, 0.0003, "leakyrelu", 2048, 1.74),
    ("vgg8b", "predsim", 1, 1024, 1, 0.15, 0.0003, "leakyrelu", 2048, 1.65, dict(cutout_length=16)),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one published SVHN row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("svhn", ROWS, row)
