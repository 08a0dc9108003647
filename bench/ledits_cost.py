"""Cost of LEDITS++ editing: the DiffEx reference loop vs diffex's invert-once indexing.

Same workload for both, on a tiny random-weight SD pipeline built into a temp dir
(8 images x 12 nodes x 2 samples, 64 px, 10 inversion steps by default):

  (a) reference: for every keyword and every sample, invert the image again, then edit
      (what the public DiffEx code does; it keeps nothing and has no baseline);
  (b) diffex: `run_index` (beam=0, the whole tree) with the `ledits:` editor: one session per
      image, one inversion per (image, sample seed) shared by all its nodes, cached on disk,
      plus the null-edit baseline per image; classifier and store included.

UNet sample evaluations are counted by wrapping the UNet's forward (adding the batch size of
each call); wall time is measured in the same run. The last line reads
`unet_evals_ratio=<x> wall_ratio=<y>` (diffex / reference).

`--full-size` also times one inversion + one edit at 512 px with full-size SD 1.5 shapes
(random weights) on this machine's CPU (or --device), using few steps and extrapolating.

Usage: python bench/ledits_cost.py [--images 8 --nodes 12 --samples 2 --steps 10 --size 64]
       python bench/ledits_cost.py --full-size [--full-steps 3]
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

    from diffex.classifiers.base import Classifier

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

    def __init__(self, model_path: Path, words: list[str], samples: int, args, work: Path):
        from diffex.editors import load_editor

        self.words, self.samples, self.args, self.work = words, samples, args, work
        spec = (
            f"ledits:{model_path}?size={args.size}&steps={args.steps}&skip={args.skip}"
            f"&guidance={args.guidance}&threshold={args.threshold}"
        )
        self.editor = load_editor(spec)
        self.counter = UnetCounter(self.editor.pipeline().unet)
        self.taxonomy = {"domain": "bench", "categories": {w: [] for w in words}}
        try:
            from diffex.indexer import run_index
        except ImportError:  # pragma: no cover - before the indexer existed
            run_index = None
        self.run_index = run_index
        self.wall = 0.0
        self.edits_computed = self.edits_reused = 0

    def warm_up(self, path: Path) -> None:
        from PIL import Image

        from diffex.types import Concept

        with self.editor.open(Image.open(path).convert("RGB"), "warm-up", self.work / "warm-cache") as session:
            session.edit([Concept(self.words[0])], seed=99)
        self.counter.reset()
        for key in self.editor.counters:
            self.editor.counters[key] = 0
        self.editor.seconds.update({"invert": 0.0, "edit": 0.0})

    def run(self, paths: list[Path]) -> None:
        """Index `paths` (the full path: images, taxonomy, edits, classifier, store)."""
        start = time.perf_counter()
        if self.run_index is not None:
            stats = self.run_index(
                self.work / "bench.duckdb", images=[str(p) for p in paths], taxonomy=self.taxonomy,
                classifier=make_classifier(), editor=self.editor, beam=0, samples=self.samples,
                progress=False, cache_dir=self.work / "cache",
            )
            self.edits_computed += stats.edits_computed
            self.edits_reused += stats.edits_reused
        else:  # TODO: drop once diffex.indexer.run_index is always present
            from PIL import Image

            from diffex.types import Concept

            for path in paths:
                with self.editor.open(Image.open(path).convert("RGB"), path.name, self.work / "cache") as session:
                    session.reconstruct()
                    for word in self.words:
                        for seed in range(self.samples):
                            session.edit([Concept(word)], seed)
                    self.edits_computed += 1 + len(self.words) * self.samples
        self.wall += time.perf_counter() - start

    def result(self) -> dict:
        c, sec = self.editor.counters, self.editor.seconds
        return {
            "inversions": c["inversions"], "edits": c["edits"], "baselines": c["reconstructions"],
            "unet_evals": self.counter.evals, "wall": self.wall, "edits_computed": self.edits_computed,
            "t_inv": sec["invert"] / max(1, c["inversions"]),
            "t_edit": sec["edit"] / max(1, c["edits"] + c["reconstructions"]),
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
    image = Image.new("RGB", (512, 512), (120, 90, 60))
    k, target = args.full_steps, args.steps_target
    gen = torch.Generator(device).manual_seed(0)
    t0 = time.perf_counter()
    pipe.invert(image, num_inversion_steps=k, skip=0.1, generator=gen, height=512, width=512)
    inv_total, inv_unet, inv_evals = time.perf_counter() - t0, counter.seconds, counter.evals
    counter.reset()
    t0 = time.perf_counter()
    pipe(editing_prompt=["beard"], edit_guidance_scale=10.0, edit_threshold=0.75, generator=gen)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    edit_total, edit_unet, edit_evals = time.perf_counter() - t0, counter.seconds, counter.evals

    def extrapolate(total: float, unet_s: float) -> float:
        return (total - unet_s) + unet_s * target / k  # fixed cost (VAE, text) + UNet cost per step

    print(f"measured with {k} steps: invert {inv_total:.1f} s ({inv_evals} UNet evals, {inv_unet:.1f} s in UNet), "
          f"edit {edit_total:.1f} s ({edit_evals} UNet evals, {edit_unet:.1f} s in UNet)")
    print(f"per UNet sample evaluation at 512 px: {(inv_unet + edit_unet) / (inv_evals + edit_evals):.2f} s")
    inv_x, edit_x = extrapolate(inv_total, inv_unet), extrapolate(edit_total, edit_unet)
    note = "measured" if k == target else f"extrapolated linearly from {k} to {target} steps"
    print(f"full_size_{target}_steps ({note}): invert {inv_x:.0f} s, edit {edit_x:.0f} s, "
          f"reference invert+edit per keyword-sample {inv_x + edit_x:.0f} s")


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
        ref.warm_up(image_paths[0])
        dx.warm_up(image_paths[0])
        # Interleave per image so both see the same machine load (other jobs share these cores).
        for path in image_paths:
            ref.run_image(path)
            dx.run([path])
        ref, dx_obj, dx = ref.result(), dx, dx.result()
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
        if True:
            print(f"{'diffex re-run':<22}{0:>11}{again['edits_computed']:>7}{'':>10}{again['unet_evals']:>12}"
                  f"{again['wall']:>9.1f}   ({again['edits_reused']} edits reused)")
        print(f"mean seconds: reference invert {ref['t_inv']:.3f} edit {ref['t_edit']:.3f}; "
              f"diffex invert {dx['t_inv']:.3f} edit/baseline {dx['t_edit']:.3f}")

        # Scaling with nodes per image n (s samples, T steps). UNet evals per call: invert T
        # (batch 1, empty source prompt), edit 2T (unconditional + one concept), baseline T.
        #   reference: n*s*(inv + edit);  diffex: s*inv + baseline + n*s*edit
        # (one inversion per sample seed: LEDITS++ samples differ only through the inversion noise).
        T = args.steps
        inv_e, edit_e, base_e = T, 2 * T, T
        t_inv, t_edit = ref["t_inv"], ref["t_edit"]
        t_base = t_edit * 0.5  # one UNet branch instead of two, same loop overhead (estimate)
        print()
        print("scaling with nodes per image (formula, evals exact for this pipeline, wall from measured means):")
        print(f"{'nodes':>6}{'UNet ratio':>12}{'  (no baseline)':>16}{'wall ratio':>12}")
        for n in sorted({3, 6, 12, 24, args.nodes}):
            ref_e = n * s * (inv_e + edit_e)
            unet_ratio = (s * inv_e + base_e + n * s * edit_e) / ref_e
            unet_nb = (s * inv_e + n * s * edit_e) / ref_e
            wall_ratio = (s * t_inv + t_base + n * s * t_edit) / (n * s * (t_inv + t_edit))
            print(f"{n:>6}{unet_ratio:>12.3f}{unet_nb:>16.3f}{wall_ratio:>12.3f}")
        print(f"limit n->inf: edit/(inv+edit) = {edit_e / (inv_e + edit_e):.3f} UNet evals")

        unet_ratio = dx["unet_evals"] / ref["unet_evals"]
        wall_ratio = dx["wall"] / ref["wall"]
        summary = {"reference": ref, "diffex": dx, "diffex_rerun": again}
        print()
        print("json: " + json.dumps(summary, default=float))
        print(f"unet_evals_ratio={unet_ratio:.3f} wall_ratio={wall_ratio:.3f}")


if __name__ == "__main__":
    main()
