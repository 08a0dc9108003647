"""The index run: the indexer that drives every stage (indexer.py, `run_index`) and the demo
run over the offline demo world (demo_run.py), and `diffex verify` (verify.py), which checks
what runs left: the store, its files, vector indexes and editor caches."""
