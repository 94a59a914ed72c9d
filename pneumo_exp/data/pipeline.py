"""tf.data input pipelines from decoded uint8 arrays: no decoding per epoch.

Scaling and augmentation happen inside the model, so a batch is just a slice of memory.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pneumo_exp.data.labeled import LabeledImages


def make_dataset(data: LabeledImages, batch_size: int, *, shuffle: bool = False,
                 seed: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, float labels), shuffled each epoch if `shuffle`. tf.data's
    autotuner is off: on few cores it competes with training for a core, and slicing memory
    needs no tuning."""
    labels = data.labels.astype(np.float32).reshape(-1, 1)
    ds = tf.data.Dataset.from_tensor_slices((data.images, labels))
    if shuffle:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.batch(batch_size).prefetch(2).with_options(options)
