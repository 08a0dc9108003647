"""Analyses over a filled store: beam search, comparison, adaptive schedules, confounds and the
policy checks of `diffex check` (policy.py)."""
