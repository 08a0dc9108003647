"""Analysis over stored results: beam search over the taxonomy (beam.py) and comparing
classifier versions (compare.py)."""
