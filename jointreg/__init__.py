"""jointreg: few-label segmentation by joint registration and segmentation.

Importing this package is cheap: torch and friends load only when a feature needs them.
"""

__version__ = "0.1.0"
