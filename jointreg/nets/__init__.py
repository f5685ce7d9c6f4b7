"""Neural networks: dimension-agnostic blocks, registration nets, segmentation nets."""
