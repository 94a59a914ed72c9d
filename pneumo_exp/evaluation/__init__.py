"""Figures from labels and probabilities: metrics with intervals, calibration, the decision
threshold, and their plots. No TensorFlow, no MLflow."""
