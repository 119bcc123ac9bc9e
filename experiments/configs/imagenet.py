"""ImageNet rows: the reference's ResNets on ImageNet (`--dataset ImageNet`), and predsim
rows on downsampled ImageNet (TFDS `imagenet_resized/32x32`) sized for one GPU day.

Run a row:

    python -m experiments.train --config=experiments/configs/imagenet.py:resnet18_predsim_112 \
        --config.data_dir=/data/imagenet --config.data_workers=12 --workdir=runs/in_r18_112

`data_dir` holds `train/<class>/*.JPEG` and `val/<class>/*.JPEG` (or TFDS's prepared
`imagenet2012` under `data_dir/tfds`); the ImageNet rows stream (docs/datasets.md,
"ImageNet and streaming"), the `resized32_*` rows fit the device (3.7 GiB) and are held
there. The paper publishes no ImageNet row; the paper's first author reports 43.4 % top-1
error with local losses (at 112 px), with no recipe.

| row                        | px  | GFLOP train | GFLOP infer | params (M)  | img/s | h/epoch |
| -------------------------- | --- | ----------- | ----------- | ----------- | ----- | ------- |
| resnet18_predsim           | 224 | 298         | 53.5        | 36.3/111.6  | 93    | 3.8     |
| resnet18_predsim_112       | 112 | 74.8        | 13.1        | 15.8/91.1   | 1037  | 0.34    |
| resnet50_predsim           | 224 | 3563        | 127         | 123.9/517.5 | -     | -       |
| resized32_vgg8b_predsim    | 32  | 14.2        | 1.74        | 9.9/45.0    | 11720 | 0.030   |
| resized32_resnet18_predsim | 32  | 6.5         | 0.97        | 11.7/93.9   | 13093 | 0.027   |

Data: `imagenet` for the first three, `imagenet_resized_32` for the `resized32_*` rows.
GFLOP per image: training = `localjax.perf.flops.model_flops` at batch 128 / 128
(matmuls and convolutions, forward and backward, the local heads included; XLA's cost
analysis of the lowered CPU train step agrees within 10 %: 313.6, 73.3, 3776.7, 13.1, 5.7);
inference = XLA's cost analysis of the evaluation forward (output layer only, no heads).
params: inference / with the local heads. img/s: one H200, float32, batch 128 (ResNet-50:
64 tried), the jitted train step on data already on the device (no input pipeline), mean
over up to 40 steps after 3 warm-up steps; ResNet-50 at 224 px did not finish compiling
and warming up within 230 s, so it has no rate. epoch: 1.28 M images at that rate.
Measured 2026-12-04.

The reference's ResNets keep the CIFAR stem (3x3 conv, stride 1, no max-pool), so every
stage runs at 16x the standard ResNet's spatial size: at 224 px the inference forward costs
~15x the standard network's (3.6 GFLOP for ResNet-18, 8.2 for ResNet-50), and every
block's local head (a 3x3 conv projection for the similarity loss) runs at that resolution
too. The 224 px rows need hours to days per epoch on one GPU (ResNet-18: 64 GPU-days for
400 epochs), hence `image_size` (the first author's 112 px: 5.7 GPU-days for 400 epochs).
By default (`final_pool="reference"`) localjax flattens the final 4x4 average pool's
output into the output layer (7x7x512 features at 224 px for ResNet-18, 7x7x2048 for
ResNet-50: most of the inference parameters); the reference's output layer takes 512 x
expansion features, the 1x1 map of 32 px inputs, so the reference's code stops there on
larger inputs. `--config.final_pool=global` gives the standard ImageNet head instead: the
mean over the final map's H and W, then the output layer on 512 x expansion features at
any input size (ResNet-18: 11.7 M inference parameters at 32, 64 and 224 px, counted with
`count_params`). The rows keep the flattening head, with which the table was measured.

The ImageNet rows are the reference's defaults (predsim, Adam, lr 5e-4, 400 epochs, lr x
0.25 after epochs 200, 300, 350, 375, batch 128, relu, no dropout, dim_in_decoder 4096,
no sampler). The `resized32_*` rows use that 400-epoch schedule, which one H200 runs in
about 12 h (vgg8b) and 11 h (resnet18) at the measured step rate, leaving half a day
for evaluation and the loop's overhead. Like CIFAR-100's sim/predsim recipes they sample
about 20 classes per batch until epoch 200 (with 1000 classes, a plain batch of 128
rarely holds two examples of a class, which the similarity loss needs). The vgg8b row
takes CIFAR-100's vgg8b predsim recipe otherwise. No row has been run to completion with
localjax yet.
"""

import ml_collections

from experiments.configs import default

DEFAULT_ROW = "resnet18_predsim_112"
_REFERENCE = dict(
    loss="predsim",
    lr=5e-4,
    lr_decay=0.25,
    epochs=400,
    milestones=(200, 300, 350, 375),
    batch_size=128,
    nonlin="relu",
    dropout=0.0,
    dim_in_decoder=4096,
    beta=0.99,
    num_layers=1,
    num_hidden=1024,
    feat_mult=1.0,
    eval_batch_size=500,
)
_SAMPLER = dict(classes_per_batch=20, classes_per_batch_until_epoch=200)
ROWS: dict[str, dict] = {
    "resnet18_predsim": dict(_REFERENCE, dataset="imagenet", model="resnet18", image_size=224),
    "resnet18_predsim_112": dict(_REFERENCE, dataset="imagenet", model="resnet18", image_size=112),
    "resnet50_predsim": dict(_REFERENCE, dataset="imagenet", model="resnet50", image_size=224),
    "resized32_vgg8b_predsim": dict(
        _REFERENCE,
        **_SAMPLER,
        dataset="imagenet_resized_32",
        model="vgg8b",
        dropout=0.05,
        nonlin="leakyrelu",
    ),
    "resized32_resnet18_predsim": dict(
        _REFERENCE, **_SAMPLER, dataset="imagenet_resized_32", model="resnet18"
    ),
}


def get_config(row: str = DEFAULT_ROW) -> ml_collections.ConfigDict:
    """The config of one ImageNet row; see the module docstring for the rows.

    Args:
      row: a key of `ROWS` (the text after `:` in `--config=...py:row`).

    Returns:
      An `ml_collections.ConfigDict` (unlocked; `experiments.train` locks it).

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    if row not in ROWS:
        raise ValueError(f"unknown imagenet row {row!r}; choose one of {list(ROWS)}.")
    c = default.get_config()
    for key, value in ROWS[row].items():
        c[key] = value
    c.row = row
    return c
