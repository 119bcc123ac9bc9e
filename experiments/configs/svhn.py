"""SVHN recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/svhn.py:vgg8b_predsim \
        --workdir=runs/svhn_vgg8b_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=svhn --rows='vgg8b_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Published test
errors (%), Nøkland & Eidnes 2019 (results.tsv):

| row                  | published |
| -------------------- | --------- |
| vgg8b_backprop       | 2.29      |
| vgg8b_pred           | 2.12      |
| vgg8b_sim            | 1.89      |
| vgg8b_predsim        | 1.74      |
| vgg8b_predsim_cutout | 1.65      |

All rows: Adam, batch 128, 100 epochs, lr x 0.25 after epochs 50, 75, 89, 94.
Train set = train + extra (METHOD.md).
"""

from experiments.configs.recipe import Recipe, build

DEFAULT_ROW = "vgg8b_predsim"
ROWS = {
    "vgg8b_backprop": Recipe(
        model="vgg8b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0003,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=2.29,
    ),
    "vgg8b_pred": Recipe(
        model="vgg8b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0003,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=2048,
        published_error=2.12,
    ),
    "vgg8b_sim": Recipe(
        model="vgg8b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0003,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=1.89,
    ),
    "vgg8b_predsim": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0003,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=2048,
        published_error=1.74,
    ),
    "vgg8b_predsim_cutout": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.15,
        lr=0.0003,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=2048,
        cutout_length=16,
        published_error=1.65,
    ),
}


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
