"""The embedded text-to-image model: an SD-architecture model of real handwritten digits.

It is built from the same parts as Stable Diffusion 1.x, only much smaller: a diffusers
``UNet2DConditionModel`` with cross-attention, a transformers ``CLIPTextModel`` reading CLIP's real
BPE tokens (open-clip-torch ships the vocabulary), and a DDPM noise schedule. It works directly
on 8x8 pixels in [-1, 1], so it needs no VAE.

The weights ship in ``weights/`` (float16, to stay small; they are loaded as float32).
``python -m fade_core.digits.train`` reproduces them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextConfig, CLIPTextModel

from ..diffusers_adapter import DiffusersAdapter
from ..files import load_safetensors
from .data import from_model_range

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_FILE = WEIGHTS_DIR / "digits-t2i.safetensors"
EVALUATOR_FILE = WEIGHTS_DIR / "digits-evaluator.safetensors"
MODEL_NAME = "fade-embedded-digits-8x8"

CONTEXT_LENGTH = 16
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=CONTEXT_LENGTH,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=8,
    norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
)
# Calibrated by ``python -m fade_core.digits.train``; see README for the measurement.
DEFAULT_GUIDANCE = 2.0
DEFAULT_SAMPLING_STEPS = 10


@functools.cache
def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """CLIP BPE token ids, padded with zeros to the model's context length."""
    return _clip_tokenizer()(list(prompts))


class DigitsPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """A minimal diffusers pipeline holding the parts, so that ``load_lora_weights`` works on it."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, scheduler: DDPMScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, scheduler=scheduler)


def build_pipeline(seed: int = 0) -> DigitsPipeline:
    """Fresh, randomly initialised parts (seeded)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return DigitsPipeline(unet, text_encoder, DDPMScheduler(**SCHEDULER_CONFIG))


def load_pipeline(path: str | Path = MODEL_FILE) -> DigitsPipeline:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded model weights not found at {path}; run `python -m fade_core.digits.train` to rebuild them"
        )
    pipeline = build_pipeline()
    state = {key: value.float() for key, value in load_safetensors(path).items()}
    for prefix, module in (("unet.", pipeline.unet), ("text_encoder.", pipeline.text_encoder)):
        part = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    pipeline.unet.eval().requires_grad_(False)
    pipeline.text_encoder.eval().requires_grad_(False)
    return pipeline


def make_adapter(pipeline: DigitsPipeline) -> DiffusersAdapter:
    return DiffusersAdapter(
        unet=pipeline.unet,
        text_encoder=pipeline.text_encoder,
        tokenize=tokenize,
        alphas_cumprod=pipeline.scheduler.alphas_cumprod,
        prediction_type=pipeline.scheduler.config.prediction_type,
        sample_shape=(1, 8, 8),
        model_name=MODEL_NAME,
        images_from_samples=from_model_range,
        sample_clip=1.0,
    )


def load_adapter(path: str | Path = MODEL_FILE) -> DiffusersAdapter:
    return make_adapter(load_pipeline(path))
