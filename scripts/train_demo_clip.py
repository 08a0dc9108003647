"""Train the demo CLIP shipped in diffex/demo/clip/ (deterministic; ~40 minutes on 2 CPU cores).

    nice python scripts/train_demo_clip.py                # writes diffex/demo/clip/*
    python bench/demo_clip.py                             # measures what it learned

A plain transformers `CLIPModel` (ViT image tower, patch 8, on the demo's 64x64 faces) with
its own word-level tokenizer (a CLIP BPE vocabulary whose merges build every caption word
as one token), so it loads through exactly the same `clip:PATH` code as a real CLIP.

Captions describe a random 70% of a face's attributes in random order, sometimes by the
parent word ("a beard", "a hat") and sometimes by absence ("no hat", "clean shaven").
Two things make the tiny ViT learn small details in minutes (DEMO-NOTES saw it fail on
stubble, pencil mustaches and expressions with the contrastive loss alone):
  1. every batch holds counterfactual pairs: a face and the same face with one attribute
     changed (the demo editor's exact edit), both captions naming the changed slot, so the
     contrastive loss must look at exactly that detail; a third of the pairs change what an
     entangled edit changes (issue 13: a top hat perched on a beanie, two slots at once), so
     side effects of the misbehaving demo editor are visible to the model;
  2. two auxiliary losses, dropped after training (the shipped model is a pure CLIPModel):
     linear attribute classifiers on the image embedding (one per slot, and one per object
     for layered objects), and a direction loss that makes E(edit) - E(face) point along
     T("a face with X") - T("a face") for the edited concept X (between X and Y when both
     were added), which is the edit-validity and side-effect score diffex computes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffex.demo.world import (  # noqa: E402
    AGES, HIERARCHY, OPTIONAL_SLOTS, SLOT_LEAVES, SLOTS, WORLD_VERSION, FaceSpec, render, sample_spec,
)

OUT_DIR = Path(__file__).resolve().parents[1] / "diffex" / "demo" / "clip"
TRAIN_SEEDS = range(3_000_000, 3_012_000)   # bench/demo_clip.py holds out 9_000_000+
MEAN = [0.48145466, 0.4578275, 0.40821073]  # the CLIP normalisation, kept for familiarity
STD = [0.26862954, 0.26130258, 0.27577711]
COUNT_NOUNS = {"goatee", "full beard", "handlebar mustache", "pencil mustache", "beard", "mustache",
               "cap", "beanie", "top hat", "headband", "hat", "blue background", "green background",
               "orange background", "purple background"}
NEUTRAL = "a face"


def parent_of(leaf: str) -> str | None:
    for group, value in HIERARCHY.items():
        if isinstance(value, dict):
            for sub, leaves in value.items():
                if leaf in leaves:
                    return sub
    return None


def group_of(leaf: str) -> str:
    return next(slot for slot in SLOTS if leaf in SLOT_LEAVES[slot])


def with_article(phrase: str, rng: random.Random) -> str:
    if phrase in COUNT_NOUNS and rng.random() < 0.5:
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase
    return phrase


ABSENT = {
    "facial hair": ["clean shaven", "no beard", "no facial hair"],
    "eyewear": ["no glasses", "no eyewear"],
    "headwear": ["no hat", "no headwear"],
}


def phrase_for(slot: str, value: str, rng: random.Random) -> str:
    """One caption phrase for a slot's value: the leaf, sometimes its parent or group word."""
    if value == "none":
        return rng.choice(ABSENT[slot])
    r = rng.random()
    parent = parent_of(value)
    if slot in OPTIONAL_SLOTS and r < 0.12:
        return slot  # "facial hair", "eyewear", "headwear"
    if parent and r < 0.3:
        return with_article(parent, rng)
    return with_article(value, rng)


def slot_phrase(spec: FaceSpec, slot: str, rng: random.Random) -> str:
    """The slot's phrase, naming every object layered in it ("a beanie and a top hat")."""
    first = phrase_for(slot, spec.attrs[slot], rng)
    extras = [with_article(x, rng) for x in spec.extras if group_of(x) == slot]
    return " and ".join([first] + extras) if extras else first


def caption(spec: FaceSpec, rng: random.Random, must: tuple[str, ...] = ()) -> str:
    """A random 70% of the attributes (always those in `must`, the slots an edit changed), random order."""
    slots = list(SLOTS) + ["age"]
    chosen = [s for s in slots if rng.random() < 0.7 or s in must]
    if rng.random() < 0.03 and not must:
        chosen = []
    rng.shuffle(chosen)
    phrases = [(spec.age if s == "age" else slot_phrase(spec, s, rng)) for s in chosen]
    if not phrases:
        return NEUTRAL
    if len(phrases) > 1 and rng.random() < 0.3:
        return "a face with " + ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return "a face with " + ", ".join(phrases)


def new_value(spec: FaceSpec, slot: str, rng: random.Random, allow_none: bool = True) -> str:
    values = [v for v in list(SLOT_LEAVES[slot]) + (["none"] if slot in OPTIONAL_SLOTS and allow_none else [])
              if v != spec.attrs[slot]]
    return rng.choice(values)


def counterfactual(spec: FaceSpec, rng: random.Random) -> tuple[FaceSpec, tuple[str, ...], dict[str, float], float]:
    """The same face with what an edit changes: (new spec, slots changed, {leaf: weight} the change
    points to, sign). Mostly one slot (sign -1 when an object was removed: the change points away
    from it); else what an entangled edit does (issue 13): an object drawn over the slot's own
    (a top hat perched on a beanie), a new object together with a second one in its slot, or two
    slots at once. The weights split the direction target between the concepts added."""
    free = [s for s in SLOTS if not any(group_of(x) == s for x in spec.extras)]
    r = rng.random()
    if r < 0.2:
        slot = rng.choice(OPTIONAL_SLOTS)
        if slot in free:
            if spec.attrs[slot] != "none":
                extra = new_value(spec, slot, rng, allow_none=False)
                return spec.with_extra(extra), (slot,), {extra: 1.0}, 1.0
            first = rng.choice(SLOT_LEAVES[slot])
            extra = rng.choice([x for x in SLOT_LEAVES[slot] if x != first])
            return spec.with_attr(slot, first).with_extra(extra), (slot,), {first: 0.5, extra: 0.5}, 1.0
    elif r < 0.35 and len(free) >= 2:
        a, b = rng.sample(free, 2)
        va, vb = new_value(spec, a, rng, allow_none=False), new_value(spec, b, rng, allow_none=False)
        return spec.with_attr(a, va).with_attr(b, vb), (a, b), {va: 0.5, vb: 0.5}, 1.0
    slot = rng.choice(free)
    value = new_value(spec, slot, rng)
    old = spec.attrs[slot]
    return spec.with_attr(slot, value), (slot,), ({value: 1.0} if value != "none" else {old: 1.0}), (1.0 if value != "none" else -1.0)


def with_layers(spec: FaceSpec, rng: random.Random) -> FaceSpec:
    """One base face in ten carries a second object over an occupied optional slot."""
    held = [s for s in OPTIONAL_SLOTS if spec.attrs[s] != "none"]
    if held and rng.random() < 0.1:
        slot = rng.choice(held)
        return spec.with_extra(new_value(spec, slot, rng, allow_none=False))
    return spec


# --------------------------------------------------------------------------- tokenizer

def all_words() -> list[str]:
    words = {"a", "an", "face", "with", "and", "no", "clean", "shaven", "of", "photo", "person", ","}
    words.update(AGES)
    for slot in SLOTS:
        words.update(slot.split())
        for leaf in SLOT_LEAVES[slot]:
            words.update(leaf.split())
    for value in HIERARCHY.values():
        if isinstance(value, dict):
            for sub in value:
                words.update(sub.split())
    return sorted(words)


def build_tokenizer(out: Path):
    """A CLIP BPE vocabulary: the 256 byte symbols (alone and word-final), merges that build each
    caption word as one token, then <|startoftext|> and <|endoftext|> LAST (EOS at id 2 would
    switch transformers' CLIP text model to its old "pool at the highest id" rule)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    for sym in alphabet:
        vocab[sym + "</w>"] = len(vocab)
    # merges learnt by the tokenizers BPE trainer on the word list itself: trained to the end,
    # encoding a training word replays its merges, so every word comes out as one token
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), ByteLevel(add_prefix_space=False)])
    bpe.train_from_iterator(all_words(), trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=0, show_progress=False, end_of_word_suffix="</w>", initial_alphabet=alphabet))
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in json.loads(bpe.to_str())["model"]["merges"]]
    for merge in merges:
        left, right = merge.split(" ")
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=40)
    for word in all_words():
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
    assert tok.eos_token_id == len(vocab) - 1 and tok.eos_token_id != 2
    return tok


# --------------------------------------------------------------------------- data

def render_pairs(seeds) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Base faces and their counterfactuals (see `counterfactual`), as uint8 [N, 64, 64, 3]."""
    specs, edits = [], []
    for seed in seeds:
        rng = random.Random(f"demo-clip-edit:{seed}")
        spec = with_layers(sample_spec(seed), rng)
        specs.append(spec)
        edits.append(counterfactual(spec, rng))
    base = np.stack([np.asarray(render(s)) for s in specs])
    edit = np.stack([np.asarray(render(e[0])) for e in edits])
    return base, edit, specs, edits


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def attr_targets(spec: FaceSpec) -> list[int]:
    out = []
    for slot in SLOTS:
        values = list(SLOT_LEAVES[slot]) + (["none"] if slot in OPTIONAL_SLOTS else [])
        out.append(values.index(spec.attrs[slot]))
    out.append(list(AGES).index(spec.age))
    return out


def head_sizes() -> list[int]:
    return [len(SLOT_LEAVES[s]) + (1 if s in OPTIONAL_SLOTS else 0) for s in SLOTS] + [len(AGES)]


OBJECTS = [leaf for slot in OPTIONAL_SLOTS for leaf in SLOT_LEAVES[slot]]


def presence(spec: FaceSpec) -> list[float]:
    """1.0 for every object drawn on the face (its slot's value or a layered extra)."""
    shown = set(spec.attrs.values()) | set(spec.extras)
    return [1.0 if leaf in shown else 0.0 for leaf in OBJECTS]


# --------------------------------------------------------------------------- model

def build_model(tok):
    from transformers import CLIPConfig, CLIPModel

    vocab_size = len(tok.get_vocab())
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=96, intermediate_size=384,
                           num_hidden_layers=4, num_attention_heads=4, num_channels=3),
        projection_dim=64,
    )
    return CLIPModel(config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=96, help="counterfactual pairs per batch (2x images)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=len(TRAIN_SEEDS))
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.time()
    tok = build_tokenizer(args.out)
    from transformers import CLIPImageProcessor, CLIPProcessor

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                           image_mean=MEAN, image_std=STD, resample=3),
        tokenizer=tok,
    )
    seeds = list(TRAIN_SEEDS)[: args.n_train]
    base, edit, specs, edits = render_pairs(seeds)
    print(f"rendered {2 * len(seeds)} faces in {time.time() - t0:.0f} s", flush=True)
    base_t, edit_t = to_tensor(base), to_tensor(edit)
    del base, edit
    y_base = torch.tensor([attr_targets(s) for s in specs])
    y_edit = torch.tensor([attr_targets(e[0]) for e in edits])

    y_base_obj = torch.tensor([presence(s) for s in specs])
    y_edit_obj = torch.tensor([presence(e[0]) for e in edits])

    leaves = [leaf for slot in SLOTS for leaf in SLOT_LEAVES[slot]]
    leaf_index = {leaf: i for i, leaf in enumerate(leaves)}
    # direction target: a distribution over the leaves the change points to (split between two
    # concepts an entangled edit added), with a sign (-1: an object was removed)
    dir_target = torch.zeros(len(edits), len(leaves))
    for k, (_, _, weights, _) in enumerate(edits):
        for leaf, w in weights.items():
            dir_target[k, leaf_index[leaf]] = w
    dir_sign = torch.tensor([e[3] for e in edits])
    concept_texts = [f"a face with {leaf}" for leaf in leaves]

    model = build_model(tok)
    sizes = head_sizes()
    heads = torch.nn.Linear(model.config.projection_dim, sum(sizes) + len(OBJECTS))
    params = [{"params": [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n],
               "weight_decay": 0.05},
              {"params": [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)],
               "weight_decay": 0.0},
              {"params": heads.parameters(), "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98))
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(seeds), generator=gen)
    pos = 0
    concept_tok = tok(concept_texts + [NEUTRAL], padding=True, return_tensors="pt")
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        if pos + args.pairs > len(order):
            order, pos = torch.randperm(len(seeds), generator=gen), 0
        idx = order[pos:pos + args.pairs]
        pos += args.pairs
        images = torch.cat([base_t[idx], edit_t[idx]])
        caps = [caption(specs[i], rng, must=edits[i][1]) for i in idx.tolist()]
        caps += [caption(edits[i][0], rng, must=edits[i][1]) for i in idx.tolist()]
        text = tok(caps, padding=True, truncation=True, max_length=40, return_tensors="pt")
        img_raw = model.get_image_features(pixel_values=images).pooler_output
        txt_raw = model.get_text_features(**text).pooler_output
        img, txt = F.normalize(img_raw, dim=-1), F.normalize(txt_raw, dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.t()
        target = torch.arange(len(caps))
        loss_clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        # auxiliary attribute heads on the (unnormalised) image embedding
        out = heads(img_raw)
        y = torch.cat([y_base[idx], y_edit[idx]])
        chunks = out.split(sizes + [len(OBJECTS)], dim=1)
        loss_attr = sum(F.cross_entropy(chunk, y[:, j]) for j, chunk in enumerate(chunks[:-1])) / len(sizes)
        y_obj = torch.cat([y_base_obj[idx], y_edit_obj[idx]])
        loss_attr = loss_attr + F.binary_cross_entropy_with_logits(chunks[-1], y_obj)
        # direction loss: the image change points along the edited concept's text direction
        ct = F.normalize(model.get_text_features(**concept_tok).pooler_output, dim=-1)
        text_dirs = F.normalize(ct[:-1] - ct[-1:], dim=-1)
        n = len(idx)
        img_dirs = F.normalize(img[n:] - img[:n], dim=-1) * dir_sign[idx].unsqueeze(1)
        loss_dir = F.cross_entropy(10.0 * img_dirs @ text_dirs.t(), dir_target[idx])
        loss = loss_clip + loss_attr + 0.5 * loss_dir
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step}/{args.steps} loss {loss.item():.3f} clip {loss_clip.item():.3f} "
                  f"attr {loss_attr.item():.3f} dir {loss_dir.item():.3f} scale {scale.item():.1f} "
                  f"{el:.0f}s eta {el / (step + 1) * (args.steps - step - 1):.0f}s", flush=True)

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps({
        "script": "scripts/train_demo_clip.py", "world_version": WORLD_VERSION, "steps": args.steps,
        "pairs_per_batch": args.pairs, "lr": args.lr, "train_seeds": [seeds[0], seeds[-1]],
        "seconds": round(time.time() - t0),
    }, indent=2) + "\n")
    print(f"saved to {args.out} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
