"""Training: typed recipes, registration and segmentation steps, the alternating loop, runs."""
