"""Keras Tuner searches, their tuners and callbacks, distributed searches and
cross-validation. Importing this package loads nothing heavy."""
