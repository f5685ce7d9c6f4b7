"""Small shared utilities (atomic writes, progress bars, devices)."""
