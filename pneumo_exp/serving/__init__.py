"""A registered version in use. `PneumoniaClassifier` is importable from here because
versions registered before the package had subfolders load it from here."""

from pneumo_exp.serving.model import PneumoniaClassifier

__all__ = ["PneumoniaClassifier"]
