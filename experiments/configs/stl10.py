"""STL-10 recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/stl10.py:vgg8b_predsim \
        --workdir=runs/stl10_vgg8b_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=stl10 --rows='vgg8b_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Test error (%):
published (Nøkland & Eidnes 2019, results.tsv) and localjax's own, measured at the
final epoch (docs/results.md), with the run's wall time:

| row                  | published | localjax     | wall time |
| -------------------- | --------- | ------------ | --------- |
| vgg8b_backprop       | 33.08     | not run here |           |
| vgg8b_pred           | 26.83     | not run here |           |
| vgg8b_sim            | 23.15     | not run here |           |
| vgg8b_predsim        | 20.51     | not run here |           |
| vgg8b_predsim_cutout | 19.25     | not run here |           |

All rows: Adam, batch 128, 400 epochs, lr x 0.25 after epochs 200, 300, 350, 375.
96 px input: the first conv is 7x7, stride 2, padding 3.
No row of this dataset has been run with localjax yet.
"""

from experiments.configs.recipe import build, table

DEFAULT_ROW = "vgg8b_predsim"
ROWS = table(
    400,
    (200, 300, 350, 375),
    # model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim_in_decoder, published
    ("vgg8b", "backprop", 1, 1024, 1, 0.1, 0.0005, "relu", 4096, 33.08),
    ("vgg8b", "pred", 1, 1024, 1, 0.1, 0.0005, "relu", 2048, 26.83),
    ("vgg8b", "sim", 1, 1024, 1, 0.1, 0.0005, "leakyrelu", 4096, 23.15),
    ("vgg8b", "predsim", 1, 1024, 1, 0.1, 0.0005, "leakyrelu", 2048, 20.51),
    ("vgg8b", "predsim", 1, 1024, 1, 0.1, 0.0005, "leakyrelu", 2048, 19.25, dict(cutout_length=48)),
)


def get_config(row: str = DEFAULT_ROW):
    """The config of one published STL-10 row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("stl10", ROWS, row)
