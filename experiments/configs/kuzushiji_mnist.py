"""Kuzushiji-MNIST recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/kuzushiji_mnist.py:mlp_predsim \
        --workdir=runs/kuzushiji_mnist_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=kuzushiji_mnist --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Published test
errors (%), Nøkland & Eidnes 2019 (results.tsv):

| row                  | published |
| -------------------- | --------- |
| mlp_backprop         | 5.99      |
| mlp_pred             | 7.26      |
| mlp_sim              | 9.80      |
| mlp_predsim          | 7.33      |
| vgg8b_backprop       | 1.53      |
| vgg8b_pred           | 2.22      |
| vgg8b_sim            | 2.19      |
| vgg8b_predsim        | 1.36      |
| vgg8b_predsim_cutout | 0.99      |

All rows: Adam, batch 128, 100 epochs, lr x 0.25 after epochs 50, 75, 89, 94.
"""

from experiments.configs.recipe import Recipe, build

DEFAULT_ROW = "mlp_predsim"
ROWS = {
    "mlp_backprop": Recipe(
        model="mlp",
        loss="backprop",
        num_layers=3,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=5.99,
    ),
    "mlp_pred": Recipe(
        model="mlp",
        loss="pred",
        num_layers=3,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=7.26,
    ),
    "mlp_sim": Recipe(
        model="mlp",
        loss="sim",
        num_layers=3,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=9.8,
    ),
    "mlp_predsim": Recipe(
        model="mlp",
        loss="predsim",
        num_layers=3,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.2,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=7.33,
    ),
    "vgg8b_backprop": Recipe(
        model="vgg8b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=1.53,
    ),
    "vgg8b_pred": Recipe(
        model="vgg8b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="relu",
        dim_in_decoder=1024,
        published_error=2.22,
    ),
    "vgg8b_sim": Recipe(
        model="vgg8b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        published_error=2.19,
    ),
    "vgg8b_predsim": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.3,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=1024,
        published_error=1.36,
    ),
    "vgg8b_predsim_cutout": Recipe(
        model="vgg8b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.15,
        lr=0.0005,
        epochs=100,
        milestones=(50, 75, 89, 94),
        nonlin="leakyrelu",
        dim_in_decoder=1024,
        cutout_length=14,
        published_error=0.99,
    ),
}


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
