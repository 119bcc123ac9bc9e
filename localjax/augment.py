"""On-device augmentation and normalisation, run inside the jitted step (METHOD.md, Data).

Usage::

    x = augment(images_u8, key, spec)    # [B, H, W, C] uint8 -> float32, train
    x = normalize(images_u8, spec)       # test: no augmentation

Padding for the random crop is applied to the raw [0, 1] image, before normalisation,
as in the reference (torchvision's RandomCrop(padding=p) then Normalize).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from localjax.data import DatasetSpec

__all__ = ["to_unit", "normalize", "random_crop", "random_flip", "augment"]


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 `[B, H, W, C]` -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def _standardize(x: jax.Array, spec: DatasetSpec) -> jax.Array:
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)
    return (x - mean) / std


def normalize(images: jax.Array, spec: DatasetSpec) -> jax.Array:
    """uint8 `[B, H, W, C]` -> float32 `(x/255 − mean) / std`, per channel."""
    return _standardize(to_unit(images), spec)


def random_crop(x: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Random crop of the original size from a zero-padded image, one offset per example.

    Args:
      x: `[B, H, W, C]` float.
      key: PRNG key.
      padding: zero padding in px on each side (> 0).

    Returns:
      `[B, H, W, C]` float, same dtype.
    """
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(x: jax.Array, key: jax.Array) -> jax.Array:
    """Horizontal flip of each example with probability 1/2. `[B, H, W, C]` -> same."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def augment(
    images: jax.Array, key: jax.Array, spec: DatasetSpec, cutout_length: int = 0
) -> jax.Array:
    """The training-time augmentation of `spec`, then normalisation.

    Args:
      images: `[B, H, W, C]` uint8.
      key: PRNG key (fold in the step number for a new draw each step).
      spec: the dataset's `DatasetSpec` (crop padding, flip, mean, std).
      cutout_length: side of the cutout hole in px (0 = off); not implemented yet.

    Returns:
      `[B, H, W, C]` float32, normalised.
    """
    crop_key, flip_key = jax.random.split(key)
    x = to_unit(images)
    if spec.crop_padding:
        x = random_crop(x, crop_key, spec.crop_padding)
    if spec.flip:
        x = random_flip(x, flip_key)
    return _standardize(x, spec)
