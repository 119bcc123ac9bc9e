"""Cutout (METHOD.md, Training): hole geometry at centre and corners, the random
wrapper's properties, and its place in `augment` (after normalisation, in jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localjax.data import DatasetSpec
from localjax.data import augmentation as aug

SPEC = DatasetSpec("toy", 8, 2, 10, (0.5, 0.25), (0.5, 0.25))


def _hole(center, h=8, w=8, length=4):
    mask = aug.cutout_mask(jnp.asarray([center]), h, w, length)
    assert mask.shape == (1, h, w, 1) and mask.dtype == jnp.float32
    return np.asarray(mask[0, :, :, 0]) == 0  # [H, W] bool, True inside the hole


@pytest.mark.parametrize(
    "center, rows, cols",
    [
        ((4, 4), (2, 6), (2, 6)),  # inside: full 4x4 hole [c - 2, c + 2)
        ((0, 0), (0, 2), (0, 2)),  # top-left corner: clipped to 2x2
        ((7, 7), (5, 8), (5, 8)),  # bottom-right corner: clipped to 3x3
        ((0, 7), (0, 2), (5, 8)),  # top-right corner
        ((7, 1), (5, 8), (0, 3)),  # bottom-left, one px from the edge
    ],
)
def test_cutout_mask_geometry(center, rows, cols):
    expected = np.zeros((8, 8), bool)
    expected[rows[0] : rows[1], cols[0] : cols[1]] = True
    np.testing.assert_array_equal(_hole(center), expected)


def test_cutout_mask_odd_length_and_zero_length():
    hole = _hole((4, 4), length=3)
    expected = np.zeros((8, 8), bool)
    expected[3:6, 3:6] = True  # [c - 1, c + 2): side 3
    np.testing.assert_array_equal(hole, expected)
    assert not _hole((4, 4), length=0).any()


def test_cutout_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match=">= 0"):
        aug.cutout_mask(jnp.zeros((1, 2), jnp.int32), 8, 8, -1)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        aug.cutout_mask(jnp.zeros((2,), jnp.int32), 8, 8, 4)


def test_cutout_zeroes_all_channels_in_the_hole_only():
    x = jnp.full((2, 8, 8, 3), 7.0)
    out = np.asarray(aug.cutout(x, jnp.asarray([[4, 4], [0, 7]]), 4))
    for i, center in enumerate([(4, 4), (0, 7)]):
        hole = _hole(center)
        assert (out[i][hole] == 0).all() and (out[i][~hole] == 7).all()


def test_random_cutout_one_square_hole_per_example_uniform_centres():
    n, size, length = 512, 8, 4
    x = jnp.ones((n, size, size, 2))
    out = np.asarray(jax.jit(aug.random_cutout, static_argnums=2)(x, jax.random.key(0), length))
    holes = out[..., 0] == 0  # [N, H, W]
    np.testing.assert_array_equal(out[..., 0], out[..., 1])  # same hole in every channel
    tops, lefts = [], []
    for hole in holes:
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        # one solid rectangle, side <= L, clipped only at the border
        assert hole.sum() == len(rows) * len(cols) and hole[np.ix_(rows, cols)].all()
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        for span in (rows, cols):
            assert 1 <= len(span) <= length
            assert len(span) == length or span[0] == 0 or span[-1] == size - 1
        tops.append(rows[0])
        lefts.append(cols[0])
    # centres uniform over the grid: the hole's first row is max(c - 2, 0), c in 0..7
    counts = np.bincount(tops, minlength=6)
    assert counts[0] > counts[1:].max()  # centres 0, 1, 2 all start at row 0
    assert set(tops) == set(range(6)) and set(lefts) == set(range(6))
    # different examples get different holes
    assert len(set(zip(tops, lefts, strict=True))) > 20


def test_random_cutout_zero_length_is_identity():
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    assert aug.random_cutout(x, jax.random.key(0), 0) is x


def test_augment_applies_cutout_after_normalisation_inside_jit():
    images = jnp.full((16, 8, 8, 2), 255, jnp.uint8)
    fn = jax.jit(lambda im, k: aug.augment(im, k, SPEC, cutout_length=4))
    out = np.asarray(fn(images, jax.random.key(1)))
    plain = np.asarray(aug.normalize(images, SPEC))
    hole = out == 0
    assert hole.any()
    # the hole is exactly 0 (zeroed after normalisation, not (0 - mean) / std) ...
    assert (out[hole] == 0).all()
    # ... and everything else is the normalised image
    np.testing.assert_allclose(out[~hole], plain[~hole], rtol=1e-6)
    # without cutout the random stream of crop/flip is unchanged
    spec_aug = DatasetSpec("toy", 8, 2, 10, (0.5, 0.25), (0.5, 0.25), crop_padding=2, flip=True)
    rnd = jax.random.randint(jax.random.key(3), (4, 8, 8, 2), 0, 256).astype(jnp.uint8)
    a = aug.augment(rnd, jax.random.key(4), spec_aug)
    b = aug.augment(rnd, jax.random.key(4), spec_aug, cutout_length=3)
    keep = np.asarray(b) != 0
    np.testing.assert_allclose(np.asarray(a)[keep], np.asarray(b)[keep], rtol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        aug.augment(images, jax.random.key(0), SPEC, cutout_length=-1)


def test_random_cutout_n_holes_keeps_the_first_hole_and_adds_more():
    """The reference's --n_holes: hole 0 is the one-hole draw, the others are extra."""
    x = jnp.ones((64, 16, 16, 1))
    one = np.asarray(aug.random_cutout(x, jax.random.key(3), 4))
    three = np.asarray(aug.random_cutout(x, jax.random.key(3), 4, n_holes=3))
    assert np.all(three <= one)  # every pixel of the first hole stays cut
    cut_one, cut_three = (one == 0).sum(axis=(1, 2, 3)), (three == 0).sum(axis=(1, 2, 3))
    assert np.all(cut_three >= cut_one) and cut_three.mean() > 1.5 * cut_one.mean()
    with pytest.raises(ValueError, match="n_holes must be >= 1"):
        aug.random_cutout(x, jax.random.key(0), 4, n_holes=0)
    with pytest.raises(ValueError, match="n_holes=0 >= 1"):
        aug.augment(jnp.zeros((2, 8, 8, 1), jnp.uint8), jax.random.key(0), SPEC, 4, n_holes=0)
