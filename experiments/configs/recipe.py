"""The published recipes as data: one `Recipe` per row of the paper's tables.

Each dataset file (`mnist.py`, `cifar10.py`, ...) lists its rows in a dict `ROWS`
(name -> `Recipe`) and defines `get_config(row)` with `build`. Row names follow one
scheme (`row_name`):

    {model}[_x{feat_mult}]_{loss}[_bio][_cutout]

e.g. `mlp_predsim`, `vgg8b_x2_predsim_cutout`, `vgg11b_x3_sim`, `vgg8b_predsim_bio`:
`_x{m}` only when the channel multiplier m is not 1, `_bio` for the backprop-free
variant (METHOD.md, Backprop-free variant), `_cutout` when the recipe uses cutout.

A dataset may also list rows the paper does not publish (`published=False`: the
CIFAR-10/100 ResNet-18 and WRN-28-10 rows, at the reference code's defaults): they are
not in recipes.tsv and have no published error.

    python -m experiments.train --config=experiments/configs/cifar10.py:vgg11b_x3_predsim \
        --workdir=runs/cifar10_vgg11b_x3_predsim
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from experiments.configs import default

__all__ = ["Recipe", "row_name", "table", "build", "rows_table"]


class Recipe(NamedTuple):
    """One published run (a row of recipes.tsv) and its published test error.

    A named tuple: fields by name (`recipe.model`) or position (`recipe[0]` is the model).

    Attributes:
      model: `mlp`, `vgg8b` or `vgg11b` (the paper's rows); `resnet18` or `wresnet28-10`
        (rows the paper does not publish).
      loss: `backprop`, `pred`, `sim` or `predsim`.
      num_layers: dense blocks (after the conv stack for VGG).
      num_hidden: units per dense block.
      feat_mult: VGG channel multiplier.
      dropout: dropout rate.
      lr: initial Adam learning rate.
      epochs: training epochs.
      milestones: epochs after which the rate is multiplied by 0.25.
      nonlin: `relu` or `leakyrelu`.
      dim_in_decoder: largest input size of a conv block's pred decoder.
      beta: predsim weight of sim (0.99; 0.01 for the bio predsim rows).
      bio: the backprop-free variant.
      classes_per_batch: classes-per-batch sampler (0 = off).
      classes_per_batch_until_epoch: last epoch of that sampler (0 = all).
      cutout_length: cutout hole side in px (0 = off).
      published_error: test error (%) in results.tsv, or None where the table has none
        (the bio rows, and every row with `published=False`).
      published: the row is one of the paper's recipes (recipes.tsv). False: a row the
        paper does not publish (no recipe, no error), set from the reference code's
        defaults; the recipes test lists every such row by name.
    """

    model: str
    loss: str
    num_layers: int
    num_hidden: int
    feat_mult: float
    dropout: float
    lr: float
    epochs: int
    milestones: tuple[int, ...]
    nonlin: str
    dim_in_decoder: int
    beta: float = 0.99
    bio: bool = False
    classes_per_batch: int = 0
    classes_per_batch_until_epoch: int = 0
    cutout_length: int = 0
    published_error: float | None = None
    published: bool = True


def row_name(recipe: Recipe) -> str:
    """The row name of a recipe: `{model}[_x{feat_mult}]_{loss}[_bio][_cutout]`.

    Args:
      recipe: a `Recipe`.

    Returns:
      str, e.g. `vgg8b_x2_predsim_cutout`.
    """
    name = recipe.model
    if recipe.feat_mult != 1:
        mult = recipe.feat_mult
        name += f"_x{int(mult) if float(mult).is_integer() else mult}"
    name += f"_{recipe.loss}"
    if recipe.bio:
        name += "_bio"
    if recipe.cutout_length:
        name += "_cutout"
    return name


def table(epochs: int, milestones: tuple[int, ...], *rows: tuple) -> dict[str, Recipe]:
    """A dataset's `ROWS` from compact rows sharing its schedule.

    Args:
      epochs, milestones: shared by every row of the dataset's table.
      *rows: `(model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin,
        dim_in_decoder, published_error[, extras])`, in recipes.tsv's column order;
        `extras` is a dict of the remaining `Recipe` fields that differ from their
        defaults (beta, bio, classes_per_batch, classes_per_batch_until_epoch,
        cutout_length, published).

    Returns:
      `{row_name(recipe): recipe}` in the given order.

    Raises:
      ValueError: if two rows get the same name, or an unpublished row
        (`published=False`) carries a published error.
    """
    out: dict[str, Recipe] = {}
    for row in rows:
        model, loss, num_layers, num_hidden, feat_mult, dropout, lr, nonlin, dim, published = row[
            :10
        ]
        extras = row[10] if len(row) > 10 else {}
        r = Recipe(
            model,
            loss,
            num_layers,
            num_hidden,
            feat_mult,
            dropout,
            lr,
            epochs,
            tuple(milestones),
            nonlin,
            dim,
            published_error=published,
            **extras,
        )
        name = row_name(r)
        if not r.published and r.published_error is not None:
            raise ValueError(f"{name}: a row the paper does not publish has no published error.")
        if name in out:
            raise ValueError(f"two recipes are both named {name!r}.")
        out[name] = r
    return out


def build(dataset: str, rows: dict[str, Recipe], row: str) -> ml_collections.ConfigDict:
    """The full config of one row: `default.get_config()` with the recipe's fields.

    Args:
      dataset: dataset name in `localjax.data.SPECS` (e.g. `cifar10`).
      rows: the dataset file's `ROWS`.
      row: a key of `rows`.

    Returns:
      An `ml_collections.ConfigDict` (unlocked; `experiments.train` locks it).

    Raises:
      ValueError: for an unknown row name, listing the known ones.
    """
    if row not in rows:
        raise ValueError(f"unknown {dataset} row {row!r}; choose one of {list(rows)}.")
    r = rows[row]
    c = default.get_config()
    c.dataset = dataset
    c.model, c.loss = r.model, r.loss
    c.num_layers, c.num_hidden, c.feat_mult = r.num_layers, r.num_hidden, float(r.feat_mult)
    c.dropout, c.lr, c.nonlin = r.dropout, r.lr, r.nonlin
    c.dim_in_decoder, c.beta, c.bio = r.dim_in_decoder, r.beta, r.bio
    c.epochs, c.milestones = r.epochs, tuple(r.milestones)
    c.classes_per_batch = r.classes_per_batch
    c.classes_per_batch_until_epoch = r.classes_per_batch_until_epoch
    c.cutout_length = r.cutout_length
    c.published_error = r.published_error
    c.row = row
    return c


def rows_table(rows: dict[str, Recipe]) -> str:
    """A markdown table of row names and published errors (for docs).

    Args:
      rows: a dataset file's `ROWS`.

    Returns:
      str, one line per row.
    """
    lines = ["| row | published error (%) |", "| --- | --- |"]
    for name, r in rows.items():
        err = "-" if r.published_error is None else f"{r.published_error:.2f}"
        if not r.published:
            err = "not in the paper"
        lines.append(f"| {name} | {err} |")
    return "\n".join(lines)
