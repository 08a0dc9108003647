"""How long do the read commands take as whole processes (interpreter start and imports
included), and what heavy libraries do they import?

Times `diffex --help`, `diffex info`, `diffex query` (top_subtypes) and `diffex search` (the
README's text query) against the demo store, each the median of --repeat runs, and lists
which of torch, transformers, diffusers and faiss each command imported (`python -X
importtime`). Builds the demo store first when --db does not exist (`diffex demo`).

Runs `python -m diffex.cli.main` with this interpreter, so PYTHONPATH picks the code
measured (e.g. an older checkout). Last line: `search_s=<x> query_s=<y> info_s=<z>`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "diffusers", "faiss")


def _command(name: str, db: str) -> list[str]:
    return {
        "help": ["--help"],
        "info": ["info", "--db", db],
        "query": ["query", "--db", db, "SELECT * FROM top_subtypes('old', 10)"],
        "search": ["search", "--db", db, "a face with a goatee", "--class", "old", "--k", "5"],
    }[name]


def _run(args: list[str], importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run([sys.executable, *flags, "-m", "diffex.cli.main", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"diffex {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done


def heavy_imports(args: list[str]) -> list[str]:
    """Which of HEAVY the command imported (top-level package names in -X importtime)."""
    seen = set()
    for line in _run(args, importtime=True).stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module in HEAVY:
                seen.add(module)
    return sorted(seen)


def median_seconds(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _run(args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="data/demo.duckdb", help="demo store (built with `diffex demo` if missing)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not Path(args.db).exists():
        print(f"building {args.db} with diffex demo ...", file=sys.stderr)
        _run(["demo", "--db", args.db, "--json"])
    _run(_command("search", args.db))  # warm the OS file cache and any per-user memo once
    results = {}
    for name in ("help", "info", "query", "search"):
        cmd = _command(name, args.db)
        results[name] = median_seconds(cmd, args.repeat)
        heavy = heavy_imports(cmd)
        print(f"diffex {name:6s} {results[name]:6.2f} s  (median of {args.repeat}; imports {', '.join(heavy) or 'none of ' + '/'.join(HEAVY)})")
    print(f"help_s={results['help']:.2f}")
    print(f"search_s={results['search']:.2f} query_s={results['query']:.2f} info_s={results['info']:.2f}")


if __name__ == "__main__":
    main()
