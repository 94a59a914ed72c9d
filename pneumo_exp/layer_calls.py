"""A layer's `call` replaced on the object for a while: how the training step takes a
faster route (hypermodels/fused.py, data/resample.py) while the layer's class,
configuration and weights, and so the saved network, stay Keras' own."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def calls_replaced(layers: Iterable[Any], call: Callable[..., Any]) -> Iterator[None]:
    """Within: each of `layers` is called through `call(layer, ...)`; one already replaced
    (an enclosing context) is left to it. Restored on leaving, an exception included."""
    replaced = [layer for layer in layers if "call" not in vars(layer)]
    for layer in replaced:
        layer.call = functools.partial(call, layer)
    try:
        yield
    finally:
        for layer in replaced:
            del layer.call
