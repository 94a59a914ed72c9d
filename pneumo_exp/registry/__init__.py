"""The MLflow Model Registry: promotion of the best validation trials (selected, calibrated,
thresholded, tested once, packaged, registered, carded, aliased), the pyfunc package of a
version, and its model card."""
