"""Which examples each batch of an epoch holds (METHOD.md, Training: batch 128,
`classes_per_batch`).

Usage::

    for idx in epoch_order(labels, 128, seed=0, epoch=3):   # idx: [<=128] int32
        ...
    # CIFAR-100 sim/predsim recipes: ~20 classes per batch up to epoch 200
    batches = epoch_order(labels, 128, seed=0, epoch=3, classes_per_batch=20,
                          until_epoch=200)

Plain shuffling, or the classes-per-batch sampler (`class_batches`): every example is
used exactly once per epoch either way, the last partial batch is kept, and the order
depends only on (seed, epoch), so a resumed run repeats it.

Letters: N examples, K classes, B batch size, n classes per batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["epoch_batches", "epoch_order", "class_batches", "classes_per_batch_active"]


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of example indices for one epoch, the last partial one kept.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.

    Args:
      num_examples: N > 0.
      batch_size: examples per batch, > 0.
      seed: run seed.
      epoch: epoch number (1-based).

    Returns:
      ceil(N / batch_size) int32 index arrays covering every example once.

    Raises:
      ValueError: if N or batch_size is not positive.

    Implements the epoch order (METHOD.md, Training: batch 128, last partial batch kept;
    DESIGN.md, Decisions: reproducibility).
    """
    if num_examples <= 0 or batch_size <= 0:
        raise ValueError(
            f"need num_examples > 0 and batch_size > 0; got {num_examples}, {batch_size}."
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_examples).astype(np.int32)
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


def classes_per_batch_active(classes_per_batch: int, until_epoch: int, epoch: int) -> bool:
    """Whether the classes-per-batch sampler builds this epoch's batches.

    As in the reference: on while `classes_per_batch > 0` and either `until_epoch` is 0
    (until the end of training) or `epoch <= until_epoch`; plain shuffling afterwards.

    Args:
      classes_per_batch: n, the number of distinct classes wanted per batch (0 = off).
      until_epoch: last epoch (1-based) of the sampler; 0 = every epoch.
      epoch: the epoch (1-based).

    Returns:
      Python bool.

    Raises:
      Nothing of its own.

    Implements the switch of the sampler (METHOD.md, Training: `classes_per_batch` until
    a given epoch).
    """
    return classes_per_batch > 0 and (until_epoch <= 0 or epoch <= until_epoch)


def class_batches(
    labels: np.ndarray, batch_size: int, classes_per_batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches that each hold examples of about `classes_per_batch` distinct classes.

    The reference's `NClassRandomSampler` takes the classes of n random examples and
    fills the batch with further examples of those classes; it hard-codes 10 classes
    in one place, so with 100 classes its batches hold the classes of its first n
    draws (often fewer than n). This version is exact for any K:

    1. draw n distinct classes among those with examples left, each with probability
       proportional to its remaining count (so classes run out evenly, and a class is
       as likely as under plain shuffling to be seen);
    2. take one example of each, then fill the batch uniformly at random from the
       remaining examples of these classes (a multivariate hypergeometric draw);
    3. only when these classes hold fewer than B examples in total, draw further
       classes the same way until the batch is full or no example is left.

    Hence every batch holds exactly min(n, classes left) distinct classes except where
    step 3 adds classes (near the end of an epoch, when classes run low), every
    example is used exactly once, and only the last batch may be short.

    Args:
      labels: `[N]` int class labels (any integer values; K = number of distinct ones).
      batch_size: B > 0.
      classes_per_batch: n > 0; n >= K puts every class left into each batch.
      rng: numpy Generator (consumed).

    Returns:
      ceil(N / B) int32 index arrays into `labels` covering every example once, each of
      length B except possibly the last; examples within a batch are shuffled.

    Raises:
      ValueError: if `labels` is not 1-D or empty, or `batch_size` or
        `classes_per_batch` is not positive.

    Implements the classes-per-batch sampler (METHOD.md, Training: `classes_per_batch`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [N] array; got shape {labels.shape}.")
    if batch_size <= 0 or classes_per_batch <= 0:
        raise ValueError(
            f"need batch_size > 0 and classes_per_batch > 0; got {batch_size}, {classes_per_batch}."
        )
    _, class_of = np.unique(labels, return_inverse=True)  # [N] -> class ids 0..K-1
    num_classes = int(class_of.max()) + 1
    # one shuffled queue per class; `taken[k]` examples of class k are used up
    queues = [rng.permutation(np.flatnonzero(class_of == k)) for k in range(num_classes)]
    left = np.array([len(q) for q in queues], np.int64)  # [K]
    taken = np.zeros(num_classes, np.int64)
    batches = []
    while left.sum() > 0:
        chosen = np.zeros(0, np.int64)
        want = classes_per_batch
        # pick classes until the batch can be filled (step 1, then step 3 if needed)
        while True:
            avail = np.flatnonzero(left > 0)
            avail = np.setdiff1d(avail, chosen, assume_unique=True)
            if avail.size == 0:
                break
            k = min(want, avail.size)
            p = left[avail] / left[avail].sum()
            chosen = np.concatenate([chosen, rng.choice(avail, size=k, replace=False, p=p)])
            if left[chosen].sum() >= batch_size:
                break
            want = 1  # step 3: one more class at a time
        size = int(min(batch_size, left[chosen].sum()))
        if size < len(chosen):  # last few examples: fewer slots than classes
            chosen = chosen[:size]
        counts = np.ones(len(chosen), np.int64)  # one of each chosen class
        extra = size - len(chosen)
        if extra > 0:
            counts += rng.multivariate_hypergeometric(left[chosen] - 1, extra)
        parts = []
        for k, c in zip(chosen, counts, strict=True):
            parts.append(queues[k][taken[k] : taken[k] + c])
            taken[k] += c
            left[k] -= c
        batches.append(rng.permutation(np.concatenate(parts)).astype(np.int32))
    return batches


def epoch_order(
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    classes_per_batch: int = 0,
    until_epoch: int = 0,
) -> list[np.ndarray]:
    """The batches of one epoch as index arrays (METHOD.md, Training: batch 128,
    `classes_per_batch`).

    Args:
      labels: `[N]` int labels of the training set.
      batch_size: examples per batch (> 0).
      seed: run seed; the order depends only on (seed, epoch), so resumed runs repeat it.
      epoch: 1-based epoch.
      classes_per_batch: n > 0 builds batches of about n distinct classes
        (`class_batches`); 0 = plain shuffling.
      until_epoch: last epoch using the classes-per-batch sampler; later epochs shuffle
        plainly. 0 = the sampler stays on for the whole run (the reference's default).

    Returns:
      ceil(N / batch_size) int32 index arrays covering every example once; only the
      last may be shorter than `batch_size`.

    Raises:
      ValueError: on an empty `labels`, a non-positive `batch_size`, an `epoch` below 1,
        or a negative `classes_per_batch`.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based; got {epoch}.")
    if classes_per_batch < 0:
        raise ValueError(f"classes_per_batch must be >= 0; got {classes_per_batch}.")
    if classes_per_batch_active(classes_per_batch, until_epoch, epoch):
        rng = np.random.default_rng([seed, epoch, classes_per_batch])
        return class_batches(labels, batch_size, classes_per_batch, rng)
    return epoch_batches(len(labels), batch_size, seed, epoch)
