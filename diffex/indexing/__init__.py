"""The index run: the indexer that drives every stage (indexer.py, `run_index`) and the demo
run over the offline demo world (demo_run.py)."""
