"""CIFAR-100 recipes of the paper (recipes.tsv), one row per config name.

Run a row:

    python -m experiments.train --config=experiments/configs/cifar100.py:mlp_predsim \
        --workdir=runs/cifar100_mlp_predsim

or several, measured against the paper:

    python -m experiments.reproduce --dataset=cifar100 --rows='mlp_*' --root=runs/repro

Row names: {model}[_x{feat_mult}]_{loss}[_bio][_cutout] (see recipe.py). Published test
errors (%), Nøkland & Eidnes 2019 (results.tsv):

| row                | published |
| ------------------ | --------- |
| mlp_backprop       | 62.57     |
| mlp_pred           | 58.87     |
| mlp_sim            | 62.46     |
| mlp_predsim        | 56.88     |
| vgg8b_backprop     | 26.24     |
| vgg8b_pred         | 29.32     |
| vgg8b_sim          | 32.64     |
| vgg8b_predsim      | 24.07     |
| vgg11b_backprop    | 25.18     |
| vgg11b_pred        | 29.58     |
| vgg11b_sim         | 30.82     |
| vgg11b_predsim     | 24.05     |
| vgg11b_x2_backprop | 23.44     |
| vgg11b_x2_pred     | 26.91     |
| vgg11b_x2_sim      | 28.03     |
| vgg11b_x2_predsim  | 21.20     |
| vgg11b_x3_backprop | 23.69     |
| vgg11b_x3_pred     | 25.90     |
| vgg11b_x3_sim      | 28.01     |
| vgg11b_x3_predsim  | 20.13     |

All rows: Adam, batch 128, 400 epochs, lr x 0.25 after epochs 200, 300, 350, 375.
The sim/predsim rows use the classes-per-batch sampler (20 classes per batch until
epoch 200). results.tsv lists 27.3M parameters for the MLP, the CIFAR-10 count; with
100 outputs it has 27.5M.
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
        dropout=0.025,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=62.57,
    ),
    "mlp_pred": Recipe(
        model="mlp",
        loss="pred",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.025,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=58.87,
    ),
    "mlp_sim": Recipe(
        model="mlp",
        loss="sim",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.025,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=62.46,
    ),
    "mlp_predsim": Recipe(
        model="mlp",
        loss="predsim",
        num_layers=3,
        num_hidden=3000,
        feat_mult=1,
        dropout=0.025,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=56.88,
    ),
    "vgg8b_backprop": Recipe(
        model="vgg8b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.05,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=26.24,
    ),
    "vgg8b_pred": Recipe(
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
        published_error=29.32,
    ),
    "vgg8b_sim": Recipe(
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
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=32.64,
    ),
    "vgg8b_predsim": Recipe(
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
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=24.07,
    ),
    "vgg11b_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=1,
        dropout=0.05,
        lr=0.0005,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=25.18,
    ),
    "vgg11b_pred": Recipe(
        model="vgg11b",
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
        published_error=29.58,
    ),
    "vgg11b_sim": Recipe(
        model="vgg11b",
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
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=30.82,
    ),
    "vgg11b_predsim": Recipe(
        model="vgg11b",
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
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=24.05,
    ),
    "vgg11b_x2_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.1,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=23.44,
    ),
    "vgg11b_x2_pred": Recipe(
        model="vgg11b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.1,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=26.91,
    ),
    "vgg11b_x2_sim": Recipe(
        model="vgg11b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=2,
        dropout=0.1,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=28.03,
    ),
    "vgg11b_x2_predsim": Recipe(
        model="vgg11b",
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
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=21.2,
    ),
    "vgg11b_x3_backprop": Recipe(
        model="vgg11b",
        loss="backprop",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.15,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=23.69,
    ),
    "vgg11b_x3_pred": Recipe(
        model="vgg11b",
        loss="pred",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.15,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="relu",
        dim_in_decoder=4096,
        published_error=25.9,
    ),
    "vgg11b_x3_sim": Recipe(
        model="vgg11b",
        loss="sim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.15,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=28.01,
    ),
    "vgg11b_x3_predsim": Recipe(
        model="vgg11b",
        loss="predsim",
        num_layers=1,
        num_hidden=1024,
        feat_mult=3,
        dropout=0.15,
        lr=0.0003,
        epochs=400,
        milestones=(200, 300, 350, 375),
        nonlin="leakyrelu",
        dim_in_decoder=4096,
        classes_per_batch=20,
        classes_per_batch_until_epoch=200,
        published_error=20.13,
    ),
}


def get_config(row: str = DEFAULT_ROW):
    """The config of one published CIFAR-100 row; see the module docstring for the names.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    return build("cifar100", ROWS, row)
