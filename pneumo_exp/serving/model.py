"""The deployable model: raw image bytes in, probability of pneumonia and a label out; an
MLflow pyfunc model logged from code (`mlflow_model.py`, no pickle) with its Keras members
(loaded in Keras' safe mode) and its contract (contract.py) as its config."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.images import OUTSIDE, UNREADABLE, Decoded, Preprocessing, decode_many
from pneumo_exp.data.views import ORIGINAL, view_images
from pneumo_exp.evaluation.calibration import apply_temperature
from pneumo_exp.serving.batch_norm import image_shift
from pneumo_exp.serving.contract import SHIFT_LIMIT, VersionContract
from pneumo_exp.serving.features import pooled_features
from pneumo_exp.serving.population import judge

IMAGE_COLUMN = "image"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


def member_artifact(i: int) -> str:
    return f"keras_model_{i}"


@dataclass
class Member:
    """One Keras model of a packaged version, with the preprocessing it was trained on."""

    model: Any  # keras.Model
    image_size: int
    channels: int

    @property
    def preprocessing(self) -> Preprocessing:
        return self.image_size, self.channels


def member_probability(member: Member, arrays: Mapping[Preprocessing, np.ndarray],
                       batch_size: int = 64, views: Sequence[str] = (ORIGINAL,)) -> np.ndarray:
    """One member's mean probability of PNEUMONIA over the `views` of each image (test-time
    augmentation, data/views.py), on the images decoded at its own preprocessing."""
    return np.mean([member.model.predict(view_images(arrays[member.preprocessing], view),
                                         batch_size=batch_size, verbose=0).ravel()
                    for view in views], axis=0)


def ensemble_probability(members: Sequence[Member], arrays: Mapping[Preprocessing, np.ndarray],
                         views: Sequence[str] = (ORIGINAL,)) -> np.ndarray:
    """The mean of the members' probabilities (member_probability), before calibration."""
    return np.mean([member_probability(m, arrays, views=views) for m in members], axis=0)


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc model over a DataFrame with an `image` column of encoded image files (bytes,
    or base64 text as in a served JSON request). Returns `probability` and `label`; an image
    unread, no chest radiograph, or of a patient outside a `refuse` population gets no
    probability (`reason` says why); `check` flags one outside a `flag` population or whose
    features lie unlike validation's."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        self.artifacts = dict(context.artifacts)  # local paths, by name
        self.contract = VersionContract.from_dict(context.model_config,
                                                  artifacts=self.artifacts)
        self.members = [
            Member(keras.saving.load_model(context.artifacts[member_artifact(i)],
                                           compile=False, safe_mode=True), size, channels)
            for i, (size, channels) in enumerate(self.contract.members)]

    @property
    def threshold(self) -> float:
        return self.contract.threshold

    def decode(self, images: Sequence[Any]) -> Decoded:
        """The readable images (bytes or base64 text) decoded for each member's
        preprocessing."""
        return decode_many([io.BytesIO(base64.b64decode(data) if isinstance(data, str)
                                       else bytes(data)) for data in images],
                           [m.preprocessing for m in self.members])

    def probabilities(self, arrays: Mapping[Preprocessing, np.ndarray]) -> np.ndarray:
        """The calibrated mean of the members' probabilities of PNEUMONIA over the views."""
        return apply_temperature(ensemble_probability(self.members, arrays, self.contract.views),
                                 self.contract.temperature)

    def features(self, arrays: Mapping[Preprocessing, np.ndarray]) -> np.ndarray:
        """The members' pooled features of each image as decoded (features.py)."""
        return pooled_features([m.model for m in self.members],
                               [arrays[m.preprocessing] for m in self.members])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        images = list(model_input[IMAGE_COLUMN])
        decoded = self.decode(images)
        prob: list[float | None] = [None] * len(images)
        reason: list[str | None] = [None] * len(images)
        check: list[str | None] = [None] * len(images)
        labels = [UNREADABLE] * len(images)
        for i, why in decoded.skipped:
            reason[i], labels[i] = why, decoded.labels.get(i, UNREADABLE)
        if decoded.readable:
            reference = self.contract.features
            distances = (None if reference is None
                         else reference.distance(self.features(decoded.arrays)))
            # a version from before feature references: the check it kept, if any
            limit = None if reference else self.contract.reference.get(SHIFT_LIMIT)
            shifts = image_shift([m.model for m in self.members],
                                 [decoded.arrays[m.preprocessing] for m in self.members]
                                 ) if limit else None
            for k, (i, p) in enumerate(zip(decoded.readable,
                                           self.probabilities(decoded.arrays), strict=True)):
                notes = []
                population = judge(self.contract.population, decoded.facts.get(i))
                if population is not None and population.refuse:
                    reason[i], labels[i] = population.reason, OUTSIDE
                    continue
                prob[i], labels[i] = float(p), CLASS_NAMES[int(p >= self.threshold)]
                if population is not None:
                    notes.append(population.reason)
                if distances is not None and distances[k] > reference.limit:
                    notes.append(f"unlike the training images: its features lie at "
                                 f"{distances[k]:.1f} from validation's, beyond the "
                                 f"{reference.limit:.1f} of all but 1% of them")
                if shifts is not None and shifts[k] > limit:
                    notes.append(f"unlike the training images: shift {shifts[k]:.2f}, above "
                                 f"the {limit:.2f} of all but 1% of validation's")
                check[i] = "; ".join(notes) or None
        # object dtype: an unreadable file is None, i.e. null in JSON, not NaN
        return pd.DataFrame({"probability": pd.Series(prob, dtype=object), "label": labels,
                             "reason": pd.Series(reason, dtype=object),
                             "check": pd.Series(check, dtype=object)})


def images_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The model's input for image files: one row of raw bytes per file."""
    return pd.DataFrame({IMAGE_COLUMN: [Path(p).read_bytes() for p in paths]})


def signature() -> mlflow.models.ModelSignature:
    from mlflow.types import ColSpec, Schema

    return mlflow.models.ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", "probability", required=False),
                        ColSpec("string", "label"),
                        ColSpec("string", "reason", required=False),
                        ColSpec("string", "check", required=False)]))


def classifier(model: mlflow.pyfunc.PyFuncModel) -> PneumoniaClassifier:
    """The PneumoniaClassifier inside a loaded pyfunc model (its Keras members, threshold
    and temperature), for adaptation and explanations."""
    inner = model.unwrap_python_model()
    if not hasattr(inner, "members"):  # the model's own copy of this class, or another model
        raise TypeError(f"{type(inner).__name__} is not a pneumo-exp classifier")
    return inner
