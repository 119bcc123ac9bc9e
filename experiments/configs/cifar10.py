"""CIFAR-10 recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/cifar10.py:mlp_predsim \
        --workdir=runs/cifar10_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=cifar10 --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Published test
errors (%), Nøkland & Eidnes 2019 (results.tsv):

| row                      | published |
| ------------------------ | --------- |
| mlp_backprop             | 33.56     |
| mlp_pred                 | 32.33     |
| mlp_sim                  | 33.48     |
| mlp_predsim              | 30.93     |
| vgg8b_backprop           | 5.99      |
| vgg8b_pred               | 8.40      |
| vgg8b_sim                | 7.16      |
| vgg8b_predsim            | 5.58      |
| vgg11b_backprop          | 5.56      |
| vgg11b_pred              | 8.39      |
| vgg11b_sim               | 6.70      |
| vgg11b_predsim           | 5.30      |
| vgg11b_x2_backprop       | 4.91      |
| vgg11b_x2_pred           | 7.30      |
| vgg11b_x2_sim            | 6.66      |
| vgg11b_x2_predsim        | 4.42      |
| vgg11b_x3_backprop       | 5.02      |
| vgg11b_x3_pred           | 7.37      |
| vgg11b_x3_sim            | 9.34      |
| vgg11b_x3_predsim        | 3.97      |
| vgg11b_x3_predsim_cutout | 3.60      |
| vgg8b_pred_bio           | -         |
| vgg8b_sim_bio            | -         |
| vgg8b_predsim_bio        | -         |
| vgg8b_x2_predsim_bio     | -         |

All rows: Adam, batch 128, 400 epochs, lr x 0.25 after epochs 200, 300, 350, 375.
The `_bio` rows are the backprop-free variant (Sec. 2.4); results.tsv has no error
for them.
"""

from experiments.configs.recipe import Recipe, build

DEFAULT_ROW = "mlp_predsim"
ROWS = {
    "mlp_backprop": Recipe(
        model="mlp",
        loss="backprop",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.1,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=33.56,
    ),
    "mlp_pred": Recipe(
        model="mlp",
        loss="pred",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.1,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=32.33,
    ),
    "mlp_sim": Recipe(
        model="mlp",
        loss="sim",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.1,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=33.48,
    ),
    "mlp_predsim": Recipe(
        model="mlp",
        loss="predsim",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.1,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=30.93,
    ),
    "vgg8b_backprop": Recipe(
        model="vgg8b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=5.99,
    ),
    "vgg8b_pred": Recipe(
        model="vgg8b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=2048,
        published_error=8.4,
    ),
    "vgg8b_sim": Recipe(
        model="vgg8b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=7.16,
    ),
    "vgg8b_predsim": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=2048,
        published_error=5.58,
    ),
    "vgg11b_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=5.56,
    ),
    "vgg11b_pred": Recipe(
        model="vgg11b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=2048,
        published_error=8.39,
    ),
    "vgg11b_sim": Recipe(
        model="vgg11b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=6.7,
    ),
    "vgg11b_predsim": Recipe(
        model="vgg11b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=2048,
        published_error=5.3,
    ),
    "vgg11b_x2_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.25,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=4.91,
    ),
    "vgg11b_x2_pred": Recipe(
        model="vgg11b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.25,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=7.3,
    ),
    "vgg11b_x2_sim": Recipe(
        model="vgg11b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.25,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=6.66,
    ),
    "vgg11b_x2_predsim": Recipe(
        model="vgg11b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.25,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=4.42,
    ),
    "vgg11b_x3_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.3,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=5.02,
    ),
    "vgg11b_x3_pred": Recipe(
        model="vgg11b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.3,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=7.37,
    ),
    "vgg11b_x3_sim": Recipe(
        model="vgg11b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.3,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=9.34,
    ),
    "vgg11b_x3_predsim": Recipe(
        model="vgg11b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.3,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=3.97,
    ),
    "vgg11b_x3_predsim_cutout": Recipe(
        model="vgg11b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.3,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        cutout_length=16,
        published_error=3.6,
    ),
    "vgg8b_pred_bio": Recipe(
        model="vgg8b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.05,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        bio=True,
        published_error=None,
    ),
    "vgg8b_sim_bio": Recipe(
        model="vgg8b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.05,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        bio=True,
        published_error=None,
    ),
    "vgg8b_predsim_bio": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.05,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        beta=0.01,
        bio=True,
        published_error=None,
    ),
    "vgg8b_x2_predsim_bio": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.1,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        beta=0.01,
        bio=True,
        published_error=None,
    ),
}


def get_config(row: str = DEFAULT_ROW):
    """The config of one published CIFAR-10 row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("cifar10", ROWS, row)
