"""The classes-per-batch sampler (METHOD.md, Training; the reference's
NClassRandomSampler, without its hard-coded 10 classes)."""

import numpy as np
import pytest

from localjax.data import epoch_batches
from localjax.data.sampling import class_batches, classes_per_batch_active, epoch_order


def _labels(num_classes, per_class, seed=0, balanced=True):
    rng = np.random.default_rng(seed)
    if balanced:
        return rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int32)
    return rng.integers(0, num_classes, num_classes * per_class).astype(np.int32)


def _check_epoch(batches, labels, batch_size, n):
    order = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(labels)))  # each once
    sizes = [len(b) for b in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    distinct = np.array([len(np.unique(labels[b])) for b in batches])
    # never fewer than asked (the last batch may lack classes or slots)
    assert (distinct[:-1] >= min(n, batch_size, len(np.unique(labels)))).all()
    return distinct


@pytest.mark.parametrize(
    "num_classes, per_class, n, balanced",
    [(10, 6000, 2, False), (10, 6000, 5, False), (10, 6000, 10, False), (100, 500, 20, True)],
)
def test_batches_hold_the_asked_number_of_classes(num_classes, per_class, n, balanced):
    labels = _labels(num_classes, per_class, balanced=balanced)
    batches = epoch_order(labels, 128, seed=0, epoch=1, classes_per_batch=n, until_epoch=5)
    distinct = _check_epoch(batches, labels, 128, n)
    exact = np.mean(distinct == n)
    # more classes only where the chosen ones ran out of examples (end of the epoch)
    assert exact >= 0.98, (exact, np.flatnonzero(distinct != n))
    assert (np.flatnonzero(distinct != n) >= len(batches) - 5).all()


def test_plain_shuffling_has_many_classes_per_batch():
    # the sampler is not vacuous: plain batches of CIFAR-100 hold ~70 classes
    labels = _labels(100, 500)
    plain = epoch_order(labels, 128, seed=0, epoch=1)
    assert np.mean([len(np.unique(labels[b])) for b in plain]) > 50


def test_sampler_switches_off_after_until_epoch_and_is_deterministic():
    labels = _labels(10, 200)
    on = epoch_order(labels, 64, seed=3, epoch=4, classes_per_batch=2, until_epoch=4)
    again = epoch_order(labels, 64, seed=3, epoch=4, classes_per_batch=2, until_epoch=4)
    for a, b in zip(on, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = epoch_order(labels, 64, seed=3, epoch=3, classes_per_batch=2, until_epoch=4)
    assert not np.array_equal(np.concatenate(on), np.concatenate(other))
    off = epoch_order(labels, 64, seed=3, epoch=5, classes_per_batch=2, until_epoch=4)
    for a, b in zip(off, epoch_batches(len(labels), 64, 3, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    # until_epoch 0: on for the whole run
    forever = epoch_order(labels, 64, seed=3, epoch=400, classes_per_batch=2, until_epoch=0)
    assert np.median([len(np.unique(labels[b])) for b in forever]) == 2
    assert classes_per_batch_active(2, 0, 400) and not classes_per_batch_active(0, 0, 1)
    assert classes_per_batch_active(2, 4, 4) and not classes_per_batch_active(2, 4, 5)


def test_edge_cases_small_batches_many_classes_and_sparse_labels():
    rng = np.random.default_rng(1)
    labels = rng.choice([3, 17, 40], size=50)  # non-contiguous label values
    batches = class_batches(labels, 4, 10, rng)  # more classes asked than slots
    _check_epoch(batches, labels, 4, 10)
    single = class_batches(_labels(5, 40), 10, 1, rng)
    distinct = _check_epoch(single, _labels(5, 40), 10, 1)
    assert (distinct == 1).all()  # 40 per class = 4 full batches each


def test_bad_arguments():
    with pytest.raises(ValueError, match="classes_per_batch"):
        epoch_order(np.zeros(10, np.int32), 4, 0, 1, classes_per_batch=-1)
    with pytest.raises(ValueError, match="1-based; got 0"):
        epoch_order(np.zeros(10, np.int32), 4, 0, 0)
    with pytest.raises(ValueError, match="non-empty"):
        class_batches(np.zeros(0, np.int32), 4, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_size"):
        class_batches(np.zeros(5, np.int32), 0, 2, np.random.default_rng(0))
