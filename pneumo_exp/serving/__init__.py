"""A registered version in use: the pyfunc model (bytes in, probability and label out),
predicting on files and folders, and evaluating on a labelled folder.

`PneumoniaClassifier` is importable from here because versions registered before the
package had subfolders load it as `pneumo_exp.serving.PneumoniaClassifier`.
"""

from pneumo_exp.serving.model import PneumoniaClassifier

__all__ = ["PneumoniaClassifier"]
