"""Host-side image transforms of the streamed ImageNet-style pipeline: the reference's
RandomResizedCrop + horizontal flip for training, Resize + CenterCrop for evaluation.

Usage::

    rng = np.random.default_rng([seed, epoch, row])
    x = train_transform(pixels, 224, rng)     # [H, W, 3] uint8 -> [224, 224, 3] uint8
    x = eval_transform(pixels, 224)           # shorter side -> 256, centre 224 x 224

They follow torchvision's PIL path, which the reference uses (`transforms.RandomResizedCrop
(224)`, `RandomHorizontalFlip()`, `Resize(256)`, `CenterCrop(224)`): the crop box is drawn
as torchvision draws it (`resized_crop_box`), and PIL's bilinear resampling (antialiased
when shrinking) resizes in uint8, so the pixels match the reference's up to its own random
draws. Normalisation (and cutout) happen on the device, in the step
(`data.augmentation`). At another training size S, the evaluation resize keeps the
reference's ratio: shorter side round(S * 256 / 224).

Letters: H/W image size, S output size.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SCALE",
    "RATIO",
    "resized_crop_box",
    "eval_resize_size",
    "train_transform",
    "eval_transform",
]

SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults: area fraction of the crop
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # and its aspect ratio (width / height)


def resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> tuple[int, int, int, int]:
    """The random crop of RandomResizedCrop: `(top, left, crop height, crop width)`.

    As torchvision: up to 10 tries of an area fraction uniform in `scale` and a log-uniform
    aspect ratio in `ratio`, kept when the rounded box fits the image, at a uniformly
    random position; else the largest centred box whose aspect ratio is clamped to `ratio`.

    Args:
      height, width: the image's H and W (> 0).
      rng: NumPy generator (consumed: up to 10 x 2 draws, then 2).
      scale: (min, max) fraction of the image area.
      ratio: (min, max) aspect ratio w / h.

    Returns:
      `(top, left, h, w)` Python ints with 0 < h <= H, 0 < w <= W.

    Raises:
      Nothing of its own.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height  # fallback: centred, aspect ratio clamped
    if aspect < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def eval_resize_size(size: int) -> int:
    """The shorter side the evaluation resize goes to before the centre crop of `size`:
    256 for 224 (the reference's Resize(256) + CenterCrop(224)), round(size * 256 / 224)
    otherwise (128 for 112, 37 for 32).

    Args:
      size: S, the evaluation crop in px (> 0).

    Returns:
      Python int.

    Raises:
      Nothing of its own.
    """
    return int(round(size * 256 / 224))


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(pixels, np.uint8), "RGB")


def train_transform(
    pixels: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True
) -> np.ndarray:
    """RandomResizedCrop(size) then (with `flip`) RandomHorizontalFlip, as the reference.

    Args:
      pixels: `[H, W, 3]` uint8 RGB.
      size: S, the output side in px.
      rng: NumPy generator: the crop box, then one flip draw.
      flip: flip horizontally with probability 1/2.

    Returns:
      `[S, S, 3]` uint8.

    Raises:
      ValueError: `pixels` is not `[H, W, 3]` (from PIL).
    """
    from PIL import Image

    top, left, h, w = resized_crop_box(pixels.shape[0], pixels.shape[1], rng)
    image = _pil(pixels).resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
    )
    out = np.asarray(image, np.uint8)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def eval_transform(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize (shorter side to `eval_resize_size(size)`) then CenterCrop(size), as the
    reference's evaluation transform (Resize(256), CenterCrop(224) at S = 224).

    The longer side becomes int(short' * long / short), truncated, and the crop's top-left
    corner round((side - S) / 2), as torchvision computes them; the resized image is never
    smaller than S (short' >= S), so no padding arises.

    Args:
      pixels: `[H, W, 3]` uint8 RGB.
      size: S, the output side in px.

    Returns:
      `[S, S, 3]` uint8.

    Raises:
      ValueError: `pixels` is not `[H, W, 3]` (from PIL).
    """
    from PIL import Image

    height, width = pixels.shape[:2]
    short = eval_resize_size(size)
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    image = _pil(pixels)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.asarray(image, np.uint8)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(out[top : top + size, left : left + size])
