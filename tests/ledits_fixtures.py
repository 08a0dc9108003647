"""Tiny random-weight Stable Diffusion 1.x pipelines saved to disk, for offline LEDITS++ and
InstructPix2Pix tests.

Recipe from docs/ENVIRONMENT.md: own byte-level BPE tokenizer, a 2-layer CLIP text encoder,
a three-level UNet (two levels break LEDITS++'s attention aggregation), a 2-level VAE and the
sde-dpmsolver++ scheduler (DDIM breaks `invert()` with diffusers 0.42).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffex.types import Concept

# the concepts and the pixel comparison both diffusers editors' tests use
BEARD = Concept("beard", "add")
NO_BEARD = Concept("beard", "remove")
HAT = Concept("hat", "add")


def pixel_bytes(image) -> bytes:
    return np.asarray(image).tobytes()

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine oversubscribed
    torch threads make each UNet call ~10x slower; restored afterwards. Autouse in every test
    module that imports it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Words the tiny tokenizer encodes as single tokens; anything else falls back to bytes.
WORDS = ("a", "photo", "of", "person", "beard", "hat", "glasses", "smile", "red", "blue", "dog", "cat")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer():
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            merged = parts[0] + parts[1]
            if merged not in vocab_list:
                vocab_list.append(merged)
            parts = [merged] + parts[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab, merges, model_max_length=77)


# Three UNet levels: with two, LEDITS++'s attention store keeps no maps (it stores the 1/4
# resolution level only) and editing fails in aggregate_attention.
UNET_LEVELS = dict(
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    norm_num_groups=8,
)


def _tiny_vae_and_scheduler():
    """A 2-level VAE and the sde-dpmsolver++ scheduler LEDITS++ uses (DDIM breaks invert())."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler

    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        algorithm_type="sde-dpmsolver++", solver_order=2, steps_offset=1,
    )
    return vae, scheduler


def build_safety_checker(flag_everything: bool):
    """A tiny real `StableDiffusionSafetyChecker` (+ its image processor) whose concept
    thresholds make it flag every image (-2: cosine - threshold > 0 always) or none (+2)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


def build_text_encoder(tokenizer):
    """A 2-layer CLIP text encoder (hidden size 32) for `tokenizer`; seed torch first."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            vocab_size=len(tokenizer.get_vocab()),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
            projection_dim=32,
        )
    )


def build_tiny_sd(directory: "str | Path", seed: int = 0, safety_checker: "str | None" = None) -> Path:
    """Build and `save_pretrained` a tiny seeded SD pipeline into `directory`; returns that path.
    `safety_checker="flag-all"` adds a real safety checker that blanks every output."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    directory = Path(directory)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(tokenizer)
    unet = UNet2DConditionModel(**UNET_LEVELS, cross_attention_dim=32)
    vae, scheduler = _tiny_vae_and_scheduler()
    checker, processor = build_safety_checker(True) if safety_checker == "flag-all" else (None, None)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=processor,
        requires_safety_checker=checker is not None,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_sdxl(directory: "str | Path", seed: int = 0) -> Path:
    """A tiny seeded SDXL pipeline (two text encoders, text-time conditioning) saved to
    `directory`, for the `ledits-xl:` editor. Same three-level UNet shape as `build_tiny_sd`."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    directory = Path(directory)
    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    torch.manual_seed(seed)

    def text_config():
        return CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, vocab_size=len(tokenizer.get_vocab()), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, layer_norm_eps=1e-5,
            projection_dim=32, hidden_act="gelu",
        )

    unet = UNet2DConditionModel(
        **UNET_LEVELS,
        use_linear_projection=True,
        addition_embed_type="text_time",  # SDXL's size/crop conditioning
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids + pooled text embedding
        cross_attention_dim=64,  # both text encoders' hidden states, concatenated
    )
    vae, scheduler = _tiny_vae_and_scheduler()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config()), text_encoder_2=CLIPTextModelWithProjection(text_config()),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_ip2p(directory: "str | Path", seed: int = 0) -> Path:
    """A tiny seeded InstructPix2Pix pipeline saved to `directory`, for the `ip2p:` editor: the
    same tokenizer, text encoder and VAE as `build_tiny_sd`, a UNet taking 8 input channels
    (noisy latents + the input image's latents) and the ancestral Euler scheduler the
    InstructPix2Pix checkpoint ships."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    directory = Path(directory)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(tokenizer)
    unet = UNet2DConditionModel(**{**UNET_LEVELS, "in_channels": 8}, cross_attention_dim=32)
    vae, _ = _tiny_vae_and_scheduler()
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory
