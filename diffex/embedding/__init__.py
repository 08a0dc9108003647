"""The embed stage (issue 11 moves diffex/embed.py, embedders/, vectors.py and search.py here)."""
