"""Moved: the loading policy and SPEC option helpers now live in diffex/models.py, shared by
every backend (classifiers, embedders, editors, the VLM). Re-exported here for old imports."""

from ..models import (FALSE, PICKLE_SUFFIXES, TRUE, clean_config, flag, float_list, load_error,  # noqa: F401
                      local_dir, name_list, offline_mode, quiet, quiet_transformers, safetensors_required,
                      split_spec)
