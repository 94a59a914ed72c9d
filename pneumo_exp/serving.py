"""The deployable model: raw image bytes in, probability of pneumonia and a label out.

A registered version is an MLflow pyfunc model logged from code (`mlflow_model.py`, no
pickle) whose artifact is the Keras model (loaded in Keras' safe mode) and whose config is
the preprocessing (image size, channels) and the decision threshold chosen on validation.
Images are decoded with `decode_image`, exactly as in training.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.images import UnreadableImageError, decode_image

IMAGE_COLUMN = "image"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
UNREADABLE = "unreadable"


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc model over a DataFrame with an `image` column of encoded image files (bytes,
    or base64 text as in a served JSON request)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False,
                                             safe_mode=True)
        config = context.model_config
        self.image_size = int(config["image_size"])
        self.channels = int(config["channels"])
        self.threshold = float(config["threshold"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        images = [_as_bytes(v) for v in model_input[IMAGE_COLUMN]]
        batch, readable = [], []
        for i, data in enumerate(images):
            try:
                batch.append(decode_image(data, self.image_size, self.channels))
                readable.append(i)
            except UnreadableImageError:
                pass
        prob = np.full(len(images), np.nan)
        if batch:
            prob[readable] = self.model.predict(np.stack(batch).astype(np.float32),
                                                batch_size=64, verbose=0).ravel()
        labels = [UNREADABLE if np.isnan(p) else CLASS_NAMES[int(p >= self.threshold)]
                  for p in prob]
        return pd.DataFrame({"probability": prob, "label": labels})


def _as_bytes(value: Any) -> Any:
    """Bytes pass through; base64 text (served JSON) is decoded; decode_image reads both."""
    import io

    if isinstance(value, str):
        value = base64.b64decode(value)
    return io.BytesIO(bytes(value))


def images_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The model's input for image files: one row of raw bytes per file."""
    return pd.DataFrame({IMAGE_COLUMN: [Path(p).read_bytes() for p in paths]})


def signature() -> mlflow.models.ModelSignature:
    from mlflow.types import ColSpec, Schema

    return mlflow.models.ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label")]))
