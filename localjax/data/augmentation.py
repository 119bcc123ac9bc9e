"""On-device augmentation and normalisation, run inside the jitted step (METHOD.md, Data).

Usage::

    x = augment(images_u8, key, spec)    # [B, H, W, C] uint8 -> float32, train
    x = augment(images_u8, key, spec, cutout_length=16)   # plus one cutout hole
    x = normalize(images_u8, spec)       # test: no augmentation

Padding for the random crop is applied to the raw [0, 1] image, before normalisation,
as in the reference (torchvision's RandomCrop(padding=p) then Normalize). Cutout
(DeVries & Taylor 2017, used by the paper's `*_cutout` rows) zeroes one square hole
*after* normalisation, as the reference appends `Cutout` after `Normalize`.

Letters: B batch, H/W image size, C channels (NHWC), L cutout side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from localjax.data.specs import DatasetSpec
from localjax.errors import ConfigError

__all__ = [
    "to_unit",
    "normalize",
    "random_crop",
    "random_flip",
    "cutout_mask",
    "cutout",
    "random_cutout",
    "augment",
]


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 `[B, H, W, C]` -> float32 in [0, 1].

    Args:
      images: `[B, H, W, C]` uint8 pixels 0..255 (any shape works).

    Returns:
      float32 array of the same shape, `images / 255`.

    Raises:
      Nothing of its own.

    The raw [0, 1] image the crop padding applies to (METHOD.md, Data).
    """
    return images.astype(jnp.float32) / 255.0


def _standardize(x: jax.Array, spec: DatasetSpec) -> jax.Array:
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)
    return (x - mean) / std


def normalize(images: jax.Array, spec: DatasetSpec) -> jax.Array:
    """uint8 `[B, H, W, C]` -> float32 `(x/255 − mean) / std`, per channel.

    Args:
      images: `[B, H, W, C]` uint8 pixels 0..255.
      spec: the dataset's `DatasetSpec`; `mean` and `std` of length 1 or C.

    Returns:
      `[B, H, W, C]` float32, normalised.

    Raises:
      Nothing of its own; jax raises (ValueError/TypeError) when `spec.mean`/`spec.std`
      do not broadcast against C.

    Implements the normalisation (METHOD.md, Data: mean, std); test sets use it alone.
    """
    return _standardize(to_unit(images), spec)


def random_crop(x: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Random crop of the original size from a zero-padded image, one offset per example.

    Args:
      x: `[B, H, W, C]` float.
      key: PRNG key.
      padding: zero padding in px on each side (> 0).

    Returns:
      `[B, H, W, C]` float, same dtype.

    Raises:
      Nothing of its own; a non-4-D `x` fails when its shape is unpacked (ValueError),
      a negative `padding` in `jnp.pad` (ValueError).

    Implements the random crop from a zero-padded image (METHOD.md, Data: crop, pad).
    """
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(x: jax.Array, key: jax.Array) -> jax.Array:
    """Horizontal flip of each example with probability 1/2.

    Args:
      x: `[B, H, W, C]` float images.
      key: PRNG key.

    Returns:
      `[B, H, W, C]` array of x's dtype.

    Raises:
      Nothing of its own; `x` of rank < 4 fails in its indexing (IndexError).

    Implements the horizontal flip (METHOD.md, Data: horizontal flip).
    """
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def cutout_mask(centers: jax.Array, height: int, width: int, length: int) -> jax.Array:
    """Keep-masks of one square cutout hole per example, at given centres.

    The hole covers rows `[cy − L//2, cy − L//2 + L)` and columns likewise, clipped at
    the image border, so it is L×L when it lies inside the image and smaller at the
    border. For even L (every published recipe: 14, 16, 48) this is exactly the
    reference's `[cy − L/2, cy + L/2)`; for odd L the reference's hole is one pixel
    narrower (L − 1), ours keeps the requested side.

    Args:
      centers: `[B, 2]` int array of hole centres `(row, col)`; any integers (centres
        outside the image give a clipped or empty hole).
      height: H of the image.
      width: W of the image.
      length: L, side of the hole in px; 0 gives all-ones masks.

    Returns:
      `[B, H, W, 1]` float32 array: 0 inside the hole, 1 elsewhere.

    Raises:
      ValueError: if `length` is negative or `centers` is not `[B, 2]`.

    Implements the Cutout hole (METHOD.md, Training: Cutout).
    """
    if length < 0:
        raise ValueError(f"cutout length must be >= 0; got {length}.")
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"cutout centres must be [B, 2] (row, col); got {tuple(centers.shape)}.")
    top = centers[:, 0] - length // 2  # [B]
    left = centers[:, 1] - length // 2
    rows = jnp.arange(height)[None, :]  # [1, H]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + length)  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + length)  # [B, W]
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
    return jnp.where(hole, 0.0, 1.0).astype(jnp.float32)[..., None]


def cutout(x: jax.Array, centers: jax.Array, length: int) -> jax.Array:
    """Zeroes one square hole per example at the given centres (all channels).

    Args:
      x: `[B, H, W, C]` float images (normalised: the hole becomes exactly 0).
      centers: `[B, 2]` int hole centres `(row, col)`; see `cutout_mask`.
      length: side of the hole in px (>= 0).

    Returns:
      `[B, H, W, C]` array of x's dtype.

    Raises:
      ValueError: as `cutout_mask`, or if `x` is not 4-D or batch sizes differ.

    Implements Cutout at given centres (METHOD.md, Training: Cutout).
    """
    if x.ndim != 4:
        raise ValueError(f"cutout expects [B, H, W, C] images; got shape {tuple(x.shape)}.")
    if centers.shape[0] != x.shape[0]:
        raise ValueError(f"cutout: {centers.shape[0]} centres for a batch of {x.shape[0]} images.")
    mask = cutout_mask(centers, x.shape[1], x.shape[2], length)
    return x * mask.astype(x.dtype)


def random_cutout(x: jax.Array, key: jax.Array, length: int, n_holes: int = 1) -> jax.Array:
    """Cutout with `n_holes` holes per example, each at a uniformly random centre.

    Each centre is drawn uniformly from the H×W pixel grid (as the reference's
    `np.random.randint(h)`, `randint(w)`); holes are clipped at the border and may
    overlap (the reference's `Cutout(n_holes, length)`).

    Args:
      x: `[B, H, W, C]` float images, normalised.
      key: PRNG key; the first hole draws from it as a one-hole cutout does, hole k > 0
        from `fold_in(key, k)`.
      length: side of each hole in px; 0 returns `x` unchanged.
      n_holes: holes per image (the reference's `--n_holes`), >= 1.

    Returns:
      `[B, H, W, C]` array of x's dtype.

    Raises:
      ValueError: if `length` is negative, `n_holes` < 1 or `x` is not 4-D.

    Implements Cutout (METHOD.md, Training: Cutout; the reference's `--n_holes`).
    """
    if length < 0:
        raise ValueError(f"cutout length must be >= 0; got {length}.")
    if n_holes < 1:
        raise ValueError(f"cutout n_holes must be >= 1; got {n_holes}.")
    if length == 0:
        return x
    if x.ndim != 4:
        raise ValueError(f"cutout expects [B, H, W, C] images; got shape {tuple(x.shape)}.")
    b, h, w, _ = x.shape
    for k in range(n_holes):
        row_key, col_key = jax.random.split(key if k == 0 else jax.random.fold_in(key, k))
        centers = jnp.stack(
            [
                jax.random.randint(row_key, (b,), 0, h),
                jax.random.randint(col_key, (b,), 0, w),
            ],
            axis=1,
        )  # [B, 2]
        x = cutout(x, centers, length)
    return x


def augment(
    images: jax.Array,
    key: jax.Array,
    spec: DatasetSpec,
    cutout_length: int = 0,
    n_holes: int = 1,
) -> jax.Array:
    """The training-time augmentation of `spec`, then normalisation.

    Args:
      images: `[B, H, W, C]` uint8.
      key: PRNG key (fold in the step number for a new draw each step).
      spec: the dataset's `DatasetSpec` (crop padding, flip, mean, std).
      cutout_length: side of the cutout holes in px (0 = off); holes at uniformly random
        centres, clipped at the border, zeroed after normalisation.
      n_holes: cutout holes per example (the reference's `--n_holes`, default 1).

    Returns:
      `[B, H, W, C]` float32, normalised.

    Raises:
      ConfigError: `cutout_length` negative or `n_holes` < 1.
      ValueError: a non-4-D `images` fails in `random_crop`.

    Implements the per-dataset augmentation and normalisation (METHOD.md, Data; Training:
    Cutout) inside the step (DESIGN.md, Decisions: data on device, augmentation in the
    step).
    """
    if cutout_length < 0 or n_holes < 1:
        raise ConfigError(f"cutout_length={cutout_length} must be >= 0 and n_holes={n_holes} >= 1.")
    crop_key, flip_key = jax.random.split(key)
    x = to_unit(images)
    if spec.crop_padding:
        x = random_crop(x, crop_key, spec.crop_padding)
    if spec.flip:
        x = random_flip(x, flip_key)
    x = _standardize(x, spec)
    if cutout_length:
        # a key apart from crop/flip, so runs without cutout keep their random stream
        x = random_cutout(x, jax.random.fold_in(key, 2), cutout_length, n_holes)
    return x
