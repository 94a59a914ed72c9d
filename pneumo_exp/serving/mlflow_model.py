"""Model code logged with each registered version (MLflow "models from code": no pickle)."""

import mlflow

from pneumo_exp.serving.model import PneumoniaClassifier

mlflow.models.set_model(PneumoniaClassifier())
