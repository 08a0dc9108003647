"""Cost of LEDITS++ editing: the DiffEx reference loop vs diffex's invert-once indexing.

Same workload for both, on a tiny random-weight SD pipeline built into a temp dir
(8 images x 12 nodes x 2 samples, 64 px, 10 inversion steps by default):

  (a) reference: for every keyword and every sample, invert the image again, then edit
      (what the public DiffEx code does; it keeps nothing and has no baseline);
  (b) diffex: `run_index` (beam=0, the whole tree) with the `ledits:` editor: one session per
      image, one inversion per (image, sample seed) shared by all its nodes, cached on disk,
      plus the null-edit baseline per image (read from the inversion: a VAE decode, no UNet);
      classifier and store included. Run at batch=1 (the ratio) and at each --batches size
      (several images per UNet call; same UNet evaluations, fewer calls).

UNet sample evaluations are counted by wrapping the UNet's forward (adding the batch size of
each call); wall time is measured in the same run. The last line reads
`unet_evals_ratio=<x> wall_ratio=<y>` (diffex / reference).

`--full-size` also times one inversion + one edit at 512 px with full-size SD 1.5 shapes
(random weights) on this machine's CPU (or --device), using few steps and extrapolating,
for each image batch size in --full-batches. The prepared GPU check (fp16, batch 1/4/8):

  python bench/ledits_cost.py --full-only --device cuda --dtype float16 --full-steps 50 --full-batches 1,4,8

Usage: python bench/ledits_cost.py [--images 8 --nodes 12 --samples 2 --steps 10 --size 64 --batches 4]
       python bench/ledits_cost.py --full-size [--full-steps 3 --full-batches 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORDS = ["beard", "hat", "glasses", "smile", "red", "blue", "dog", "cat", "photo", "person", "a", "of"]


class UnetCounter:
    """Wraps `unet.forward`: counts sample evaluations (batch sizes) and the seconds spent."""

    def __init__(self, unet):
        self.evals = 0
        self.calls = 0
        self.seconds = 0.0
        inner = unet.forward

        def forward(sample, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(sample, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.evals += int(sample.shape[0])
                self.calls += 1

        unet.forward = forward

    def reset(self):
        self.evals, self.calls, self.seconds = 0, 0, 0.0


def make_images(directory: Path, n: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        rng = np.random.RandomState(i)
        a, b, c = rng.rand(3) * 6
        rgb = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], -1)
        pixels = ((rgb * 0.5 + 0.5) * 255).astype("uint8")
        path = directory / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def node_words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] + ("" if i < len(WORDS) else f" {i}") for i in range(n)]


def make_classifier():
    import numpy as np

    from diffex.scoring.base import Classifier

    class MeanColour(Classifier):
        """Trivial 3-class classifier (logits = mean RGB), so classifier time is negligible."""

        name = "mean-colour"
        spec = "bench:mean-colour"

        @property
        def class_names(self):
            return ("red", "green", "blue")

        @property
        def classifier_id(self):
            return "bench-mean-colour-v1"

        def logits(self, images):
            return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) / 64 for im in images])

    return MeanColour()


class Reference:
    """The DiffEx reference loop: re-invert for every keyword and every sample, then edit."""

    def __init__(self, model_path: Path, words: list[str], samples: int, args):
        from diffusers import LEditsPPPipelineStableDiffusion

        self.words, self.samples, self.args = words, samples, args
        self.pipe = LEditsPPPipelineStableDiffusion.from_pretrained(str(model_path))
        self.pipe.set_progress_bar_config(disable=True)
        self.counter = UnetCounter(self.pipe.unet)
        self.r = {"inversions": 0, "edits": 0, "baselines": 0, "unet_evals": 0, "wall": 0.0, "t_inv": 0.0, "t_edit": 0.0}

    def warm_up(self, path: Path) -> None:
        """First calls pay one-off kernel/allocator set-up: not timed."""
        from PIL import Image

        image = Image.open(path).convert("RGB")
        self.pipe.invert(image, num_inversion_steps=self.args.steps, skip=self.args.skip)
        self.pipe(editing_prompt=[self.words[0]], edit_guidance_scale=self.args.guidance, edit_threshold=self.args.threshold)
        self.counter.reset()

    def run_image(self, path: Path) -> None:
        import torch
        from PIL import Image

        args, pipe, words, samples, r = self.args, self.pipe, self.words, self.samples, self.r
        start = time.perf_counter()
        image = Image.open(path).convert("RGB").resize((args.size, args.size))
        for word in words:
            for sample in range(samples):
                t0 = time.perf_counter()
                pipe.invert(
                    image, num_inversion_steps=args.steps, skip=args.skip,
                    generator=torch.Generator().manual_seed(sample), height=args.size, width=args.size,
                )
                t1 = time.perf_counter()
                pipe(editing_prompt=[word], edit_guidance_scale=args.guidance, edit_threshold=args.threshold)
                t2 = time.perf_counter()
                r["t_inv"] += t1 - t0
                r["t_edit"] += t2 - t1
                r["inversions"] += 1
                r["edits"] += 1
        r["wall"] += time.perf_counter() - start
        r["unet_evals"] = self.counter.evals

    def result(self) -> dict:
        r = dict(self.r)
        r["t_inv"] /= max(1, r["inversions"])
        r["t_edit"] /= max(1, r["edits"])
        return r


class Diffex:
    """diffex's indexing path: `run_index` with the `ledits:` editor (one session per image)."""

    def __init__(self, model_path: Path, words: list[str], samples: int, args, work: Path, batch: int = 1):
        from diffex.editing import load_editor

        self.words, self.samples, self.args, self.work, self.batch = words, samples, args, work, batch
        spec = (
            f"ledits:{model_path}?size={args.size}&steps={args.steps}&skip={args.skip}"
            f"&guidance={args.guidance}&threshold={args.threshold}&batch={batch}"
        )
        self.editor = load_editor(spec)
        self.counter = UnetCounter(self.editor.pipeline().unet)
        self.taxonomy = {"domain": "bench", "categories": {w: [] for w in words}}
        self.wall = 0.0
        self.edits_computed = self.edits_reused = 0

    def warm_up(self, path: Path) -> None:
        from PIL import Image

        from diffex.types import Concept

        image = Image.open(path).convert("RGB")
        sessions = [self.editor.open(image, f"warm-up-{i}", self.work / "warm-cache") for i in range(self.batch)]
        self.editor.edit_batch(sessions, (Concept(self.words[0]),), 99)
        for session in sessions:
            session.close()
        self.counter.reset()
        for key in self.editor.counters:
            self.editor.counters[key] = 0
        self.editor.seconds.update({"invert": 0.0, "edit": 0.0, "reconstruct": 0.0})

    def run(self, paths: list[Path]) -> None:
        """Index `paths` (the full path: images, taxonomy, edits, classifier, store)."""
        from diffex.indexing.indexer import run_index

        start = time.perf_counter()
        stats = run_index(
            self.work / f"bench-b{self.batch}.duckdb", images=[str(p) for p in paths], taxonomy=self.taxonomy,
            classifier=make_classifier(), editor=self.editor, beam=0, samples=self.samples,
            progress=False, cache_dir=self.work / f"cache-b{self.batch}",
        )
        self.edits_computed += stats.edits_computed
        self.edits_reused += stats.edits_reused
        self.wall += time.perf_counter() - start

    def result(self) -> dict:
        c, sec = self.editor.counters, self.editor.seconds
        return {
            "inversions": c["inversions"], "edits": c["edits"], "baselines": c["reconstructions"],
            "unet_evals": self.counter.evals, "unet_calls": self.counter.calls, "wall": self.wall,
            "edits_computed": self.edits_computed,
            "t_inv": sec["invert"] / max(1, c["inversions"]),
            "t_edit": sec["edit"] / max(1, c["edits"]),
            "t_base": sec["reconstruct"] / max(1, c["reconstructions"]),
        }


def full_size(args) -> None:
    """One inversion + one edit at 512 px with SD 1.5 shapes and random weights."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel

    from ledits_fixtures import build_tokenizer

    device, dtype = args.device, getattr(torch, args.dtype)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower, as in SD 1.5
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=len(tokenizer.get_vocab()), hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(  # stable-diffusion-v1-5 unet/config.json
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(  # stable-diffusion-v1-5 vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        algorithm_type="sde-dpmsolver++", solver_order=2, steps_offset=1,
    )
    pipe = LEditsPPPipelineStableDiffusion(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    counter = UnetCounter(pipe.unet)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"full-size build: {time.perf_counter() - t0:.1f} s (UNet {params:.0f} M params) on {device} {args.dtype}")
    from diffex.editing.ledits.patches import _per_image_attention

    k, target = args.full_steps, args.steps_target
    note = "measured" if k == target else f"extrapolated linearly from {k} to {target} steps"

    def extrapolate(total: float, unet_s: float) -> float:
        return (total - unet_s) + unet_s * target / k  # fixed cost (VAE, text) + UNet cost per step

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    per_image = {}
    for batch in [int(b) for b in args.full_batches.split(",")]:
        images = [Image.new("RGB", (512, 512), (120 + 10 * i, 90, 60)) for i in range(batch)]
        gens = [torch.Generator(device).manual_seed(0) for _ in images]
        counter.reset()
        sync()
        t0 = time.perf_counter()
        try:
            pipe.invert(images if batch > 1 else images[0], num_inversion_steps=k, skip=0.1,
                        generator=gens if batch > 1 else gens[0], height=512, width=512)
            sync()
            inv_total, inv_unet, inv_evals = time.perf_counter() - t0, counter.seconds, counter.evals
            counter.reset()
            t0 = time.perf_counter()
            with _per_image_attention(pipe, batch):  # what diffex runs for several images
                pipe(editing_prompt=["beard"], edit_guidance_scale=10.0, edit_threshold=0.75, generator=gens[0])
            sync()
        except torch.cuda.OutOfMemoryError:
            print(f"batch {batch}: out of GPU memory")
            break
        edit_total, edit_unet, edit_evals = time.perf_counter() - t0, counter.seconds, counter.evals
        inv_x, edit_x = extrapolate(inv_total, inv_unet), extrapolate(edit_total, edit_unet)
        per_image[batch] = (inv_x / batch, edit_x / batch)
        mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else ""
        print(f"batch {batch}: measured with {k} steps: invert {inv_total:.2f} s ({inv_evals} UNet evals, "
              f"{inv_unet:.2f} s in UNet), edit {edit_total:.2f} s ({edit_evals} UNet evals, {edit_unet:.2f} s in UNet){mem}")
        print(f"full_size_{target}_steps batch={batch} ({note}): per image invert {inv_x / batch:.2f} s, "
              f"edit {edit_x / batch:.2f} s; per-image edit speed-up vs batch 1 "
              f"{per_image[min(per_image)][1] / (edit_x / batch):.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip", type=float, default=0.1)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--full-size", action="store_true", help="also time one edit at 512 px with SD 1.5 shapes")
    parser.add_argument("--full-only", action="store_true", help="only the --full-size timing")
    parser.add_argument("--full-steps", type=int, default=3, help="steps actually run at full size")
    parser.add_argument("--full-batches", default="1", help="image batch sizes timed at full size, e.g. 1,4,8")
    parser.add_argument("--batches", default="4", help="extra diffex image batch sizes on the tiny workload ('' for none)")
    parser.add_argument("--steps-target", type=int, default=50, help="steps to extrapolate the full-size cost to")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 keeps timings stable on a shared 2-core machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    import torch

    torch.set_num_threads(args.threads)
    if args.full_size or args.full_only:
        full_size(args)
        if args.full_only:
            return

    from ledits_fixtures import build_tiny_sd

    with tempfile.TemporaryDirectory(prefix="diffex-bench-") as tmp:
        work = Path(tmp)
        model_path = build_tiny_sd(work / "tiny-sd")
        (work / "images").mkdir()
        image_paths = make_images(work / "images", args.images, args.size)
        words = node_words(args.nodes)
        s = args.samples
        print(f"workload: {args.images} images x {args.nodes} nodes x {s} samples, {args.size} px, "
              f"{args.steps} steps, torch threads {torch.get_num_threads()}")

        ref = Reference(model_path, words, s, args)
        dx = Diffex(model_path, words, s, args, work)
        batched = {b: Diffex(model_path, words, s, args, work, batch=b) for b in (int(x) for x in args.batches.split(",") if x)}
        ref.warm_up(image_paths[0])
        dx.warm_up(image_paths[0])
        for other in batched.values():
            other.warm_up(image_paths[0])
        # Interleave so the runs see the same machine load (other jobs share these cores): the
        # reference and diffex batch=1 image by image, the batched runs per group of images.
        group = max([1, *batched])
        for start in range(0, len(image_paths), group):
            paths = image_paths[start : start + group]
            for path in paths:
                ref.run_image(path)
                dx.run([path])
            for other in batched.values():
                other.run(paths)
        ref, dx_obj, dx = ref.result(), dx, dx.result()
        batched = {b: other.result() for b, other in batched.items()}
        # Index everything again into the same store: nothing should be recomputed.
        dx_obj.counter.reset()
        t0 = time.perf_counter()
        before = dx_obj.edits_computed
        dx_obj.run(image_paths)
        again = {"edits_computed": dx_obj.edits_computed - before, "unet_evals": dx_obj.counter.evals,
                 "wall": time.perf_counter() - t0, "edits_reused": dx_obj.edits_reused}

        print()
        print(f"{'':<22}{'inversions':>11}{'edits':>7}{'baselines':>10}{'UNet evals':>12}{'wall s':>9}")
        for name, r in (("reference (a)", ref), ("diffex run_index (b)", dx)):
            print(f"{name:<22}{r['inversions']:>11}{r['edits']:>7}{r['baselines']:>10}{r['unet_evals']:>12}{r['wall']:>9.1f}")
        print(f"{'diffex re-run':<22}{0:>11}{again['edits_computed']:>7}{'':>10}{again['unet_evals']:>12}"
              f"{again['wall']:>9.1f}   ({again['edits_reused']} edits reused)")
        print(f"mean seconds: reference invert {ref['t_inv']:.3f} edit {ref['t_edit']:.3f}; "
              f"diffex invert {dx['t_inv']:.3f} edit {dx['t_edit']:.3f} baseline {dx['t_base']:.3f}")
        for b, r in batched.items():
            print(f"diffex batch={b}: {r['unet_evals']} UNet evals in {r['unet_calls']} calls "
                  f"(batch=1: {dx['unet_evals']} in {dx['unet_calls']}), wall {r['wall']:.1f} s, "
                  f"batch{b}_wall_ratio={r['wall'] / dx['wall']:.3f} (vs diffex batch=1)")

        # Scaling with nodes per image n (s samples, T steps). UNet evals per call: invert T
        # (batch 1, empty source prompt), edit 2T (unconditional + one concept), baseline 0
        # (read from the inversion).  reference: n*s*(inv + edit);  diffex: s*inv + n*s*edit
        # (one inversion per sample seed: LEDITS++ samples differ only through the inversion noise).
        T = args.steps
        inv_e, edit_e = T, 2 * T
        t_inv, t_edit, t_base = ref["t_inv"], ref["t_edit"], dx["t_base"]
        print()
        print("scaling with nodes per image (formula, evals exact for this pipeline, wall from measured means):")
        print(f"{'nodes':>6}{'UNet ratio':>12}{'wall ratio':>12}")
        for n in sorted({1, 3, 6, 12, 24, args.nodes}):
            ref_e = n * s * (inv_e + edit_e)
            unet_ratio = (s * inv_e + n * s * edit_e) / ref_e
            wall_ratio = (s * t_inv + t_base + n * s * t_edit) / (n * s * (t_inv + t_edit))
            print(f"{n:>6}{unet_ratio:>12.3f}{wall_ratio:>12.3f}")
        print(f"UNet ratio = (1 + 2n)/(3n): limit n->inf edit/(inv+edit) = {edit_e / (inv_e + edit_e):.3f}")

        unet_ratio = dx["unet_evals"] / ref["unet_evals"]
        wall_ratio = dx["wall"] / ref["wall"]
        summary = {"reference": ref, "diffex": dx, "diffex_rerun": again, "diffex_batched": batched}
        print()
        print("json: " + json.dumps(summary, default=float))
        print(f"unet_evals_ratio={unet_ratio:.3f} wall_ratio={wall_ratio:.3f}")


if __name__ == "__main__":
    main()
