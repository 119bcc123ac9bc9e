"""Fashion-MNIST recipes of the paper (recipes.tsv), one row per config name.

Run a row (real data from Debian's `dataset-fashion-mnist`, or --config.data_dir):

    python -m experiments.train --config=experiments/configs/fashion_mnist.py:mlp_predsim \
        --workdir=runs/fmnist_mlp_predsim

Rows and published test errors (%), Nøkland & Eidnes 2019, Table 2:

| row                       | published |
| ------------------------- | --------- |
| mlp_backprop              | 8.37      |
| mlp_pred                  | 8.60      |
| mlp_sim                   | 9.70      |
| mlp_predsim               | 8.54      |
| vgg8b_backprop            | 4.53      |
| vgg8b_pred                | 5.66      |
| vgg8b_sim                 | 5.12      |
| vgg8b_predsim             | 4.65      |
| vgg8b_x2_backprop         | 4.55      |
| vgg8b_x2_pred             | 5.11      |
| vgg8b_x2_sim              | 4.92      |
| vgg8b_x2_predsim          | 4.33      |
| vgg8b_x2_predsim_cutout   | 4.14      |

All rows: 200 epochs, Adam, batch 128, lr x 0.25 after epochs 100, 150, 175, 188.
On 2 CPU cores an MLP epoch takes ~20 s (about 1 h per 200-epoch row); VGG rows want a GPU.
"""

from experiments.configs import default

_MILESTONES = (100, 150, 175, 188)
# row -> (model, loss, num_layers, feat_mult, dropout, lr, nonlin, dim_in_decoder,
#         cutout_length, published error)
ROWS = {
    "mlp_backprop": ("mlp", "backprop", 3, 1, 0.025, 5e-4, "relu", 4096, 0, 8.37),
    "mlp_pred": ("mlp", "pred", 3, 1, 0.025, 5e-4, "relu", 4096, 0, 8.60),
    "mlp_sim": ("mlp", "sim", 3, 1, 0.025, 5e-4, "leakyrelu", 4096, 0, 9.70),
    "mlp_predsim": ("mlp", "predsim", 3, 1, 0.025, 5e-4, "leakyrelu", 4096, 0, 8.54),
    "vgg8b_backprop": ("vgg8b", "backprop", 1, 1, 0.1, 5e-4, "relu", 4096, 0, 4.53),
    "vgg8b_pred": ("vgg8b", "pred", 1, 1, 0.1, 5e-4, "relu", 1024, 0, 5.66),
    "vgg8b_sim": ("vgg8b", "sim", 1, 1, 0.1, 5e-4, "leakyrelu", 4096, 0, 5.12),
    "vgg8b_predsim": ("vgg8b", "predsim", 1, 1, 0.1, 5e-4, "leakyrelu", 1024, 0, 4.65),
    "vgg8b_x2_backprop": ("vgg8b", "backprop", 1, 2, 0.2, 3e-4, "relu", 4096, 0, 4.55),
    "vgg8b_x2_pred": ("vgg8b", "pred", 1, 2, 0.2, 3e-4, "relu", 4096, 0, 5.11),
    "vgg8b_x2_sim": ("vgg8b", "sim", 1, 2, 0.2, 3e-4, "leakyrelu", 4096, 0, 4.92),
    "vgg8b_x2_predsim": ("vgg8b", "predsim", 1, 2, 0.2, 3e-4, "leakyrelu", 4096, 0, 4.33),
    "vgg8b_x2_predsim_cutout": ("vgg8b", "predsim", 1, 2, 0.2, 3e-4, "leakyrelu", 4096, 14, 4.14),
}


def get_config(row: str = "mlp_predsim"):
    """The config of one published row; see the module docstring for the names.

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    if row not in ROWS:
        raise ValueError(f"unknown fashion_mnist row {row!r}; choose one of {list(ROWS)}.")
    (model, loss, num_layers, feat_mult, dropout, lr, nonlin, dim_in_decoder, cutout, published) = (
        ROWS[row]
    )
    c = default.get_config()
    c.dataset = "fashion_mnist"
    c.model, c.loss, c.num_layers, c.feat_mult = model, loss, num_layers, float(feat_mult)
    c.dropout, c.lr, c.nonlin, c.dim_in_decoder = dropout, lr, nonlin, dim_in_decoder
    c.cutout_length = cutout
    c.milestones, c.epochs = _MILESTONES, 200
    c.published_error = published
    return c
