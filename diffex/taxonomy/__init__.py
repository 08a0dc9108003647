"""The taxonomy stage: the concept tree (tree.py), the file formats it is read from
(formats.py), curation of stored versions (curation.py) and proposing a tree with a VLM
(propose.py)."""
