"""Train the two shipped demo classifiers (deterministic, under a minute each on one CPU core).

    python scripts/train_demo_classifier.py            # writes diffex/demo/weights/*

The planted dependency lives in the LABELLING RULE, not in a correlation: a CNN ignores a
feature that merely co-occurs with a perfect one (DEMO-NOTES), but learns a rule
"old = wrinkles OR goatee". v1 plants goatee, v2 (the "retrained" model) plants top hat.
Run scripts/check_demo_classifier.py afterwards to measure what each one really learned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffex.demo.classifier import CLASS_NAMES, WEIGHTS_DIR, DemoCNN, preprocess  # noqa: E402
from diffex.demo.world import WORLD_VERSION, FaceSpec, render, sample_spec  # noqa: E402

RULES = {
    "v1": {"slot": "facial hair", "leaf": "goatee"},
    "v2": {"slot": "headwear", "leaf": "top hat"},
}
# Training faces over-sample the planted leaves and their look-alikes (full beard, other
# hats), so the rule is learned from contrasts rather than from a handful of examples.
TRAIN_PROBS = {
    "facial hair": {"none": 0.3, "goatee": 0.25, "full beard": 0.15, "stubble": 0.1,
                    "handlebar mustache": 0.1, "pencil mustache": 0.1},
    "headwear": {"none": 0.3, "cap": 0.15, "beanie": 0.15, "top hat": 0.25, "headband": 0.15},
    "age": {"young": 0.55, "old": 0.45},
}
TRAIN_SEEDS = range(1_000_000, 1_004_000)
TEST_SEEDS = range(2_000_000, 2_001_000)  # natural (default) distribution


def label(spec: FaceSpec, version: str) -> int:
    rule = RULES[version]
    old = spec.age == "old" or spec.attrs[rule["slot"]] == rule["leaf"]
    return CLASS_NAMES.index("old") if old else CLASS_NAMES.index("young")


def rule_text(version: str) -> str:
    rule = RULES[version]
    return f"old = (age == old) OR ({rule['slot']} == {rule['leaf']})"


def train(version: str, x: torch.Tensor, specs: list[FaceSpec], epochs: int, seed: int = 0) -> DemoCNN:
    torch.manual_seed(seed)
    y = torch.tensor([label(s, version) for s in specs])
    model = DemoCNN(len(CLASS_NAMES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  {version} epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}", flush=True)
    model.eval()
    return model


def accuracy(model: DemoCNN, x: torch.Tensor, specs: list[FaceSpec], version: str) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    y = torch.tensor([label(s, version) for s in specs])
    return float((pred == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    # One thread: on a shared 2-core machine two intra-op threads wait on each other and a
    # step measured 10x slower (0.8 s vs 0.08 s); one thread is also bit-reproducible.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    train_specs = [sample_spec(s, TRAIN_PROBS) for s in TRAIN_SEEDS]
    test_specs = [sample_spec(s) for s in TEST_SEEDS]
    x_train = preprocess([render(s) for s in train_specs])
    x_test = preprocess([render(s) for s in test_specs])
    print(f"rendered {len(x_train)} train + {len(x_test)} test faces in {time.perf_counter() - t0:.1f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    truth: dict = {"classes": list(CLASS_NAMES), "world_version": WORLD_VERSION,
                   "true_cue": "age (wrinkles, forehead lines, eye bags), not in the taxonomy"}
    for version in RULES:
        t1 = time.perf_counter()
        model = train(version, x_train, train_specs, args.epochs)
        seconds = time.perf_counter() - t1
        acc = accuracy(model, x_test, test_specs, version)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        path = args.out / f"classifier_{version}.safetensors"
        # one metadata key: safetensors writes several keys in hash-map order, and
        # reproducible file bytes make a retrain provably identical
        meta = json.dumps({"rule": rule_text(version), "world_version": WORLD_VERSION}, sort_keys=True)
        save_file(state, str(path), metadata={"diffex": meta})
        print(f"{version}: test accuracy {acc:.4f} on {len(x_test)} held-out faces, trained in {seconds:.1f}s, "
              f"{path.stat().st_size / 1024:.0f} KiB -> {path}")
        truth[version] = {"class": "old", "planted": [RULES[version]["leaf"]], "slot": RULES[version]["slot"],
                          "rule": rule_text(version), "test_accuracy": round(acc, 4)}
    (args.out / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    main()
