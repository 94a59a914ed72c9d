"""Where a model looked: Grad-CAM maps, overlays and grids, for trials (their most
confident errors) and for a registered version on any image files (`pneumo-exp explain`)."""
