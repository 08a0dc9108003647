"""Analysis over stored results: beam search over the taxonomy (beam.py), comparing
classifier versions (compare.py) and the policy checks of `diffex check` (policy.py)."""
