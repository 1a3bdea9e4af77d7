"""The embedded text-to-image model: an SD-architecture model of real handwritten digits.

It is built from the same parts as Stable Diffusion 1.x, only much smaller: a diffusers
``UNet2DConditionModel`` with cross-attention, a transformers ``CLIPTextModel`` reading CLIP's real
BPE tokens (open-clip-torch ships the vocabulary), and a DDPM noise schedule. It works directly
on 8x8 pixels in [-1, 1], so it needs no VAE.

The weights ship in ``weights/`` (float16, to stay small; they are loaded as float32).
``python -m fade_core.digits.train`` reproduces them. Of the 49,408 rows of the token-embedding
table only the few hundred of tokens that occur in training captions ever change; the file keeps
those rows, and the others are re-made from the table's own seeded initialisation on loading
(a full table would take 12.6 MB at width 128).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextConfig, CLIPTextModel

from ..diffusers_adapter import DiffusersAdapter
from ..files import load_safetensors
from .data import from_model_range

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_FILE = WEIGHTS_DIR / "digits-t2i.safetensors"
EVALUATOR_FILE = WEIGHTS_DIR / "digits-evaluator.safetensors"
MODEL_NAME = "fade-embedded-digits-8x8"

CONTEXT_LENGTH = 24  # the longest training caption has 20 tokens, BOS and EOS included
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
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
TOKEN_TABLE_SEED = 49408  # the table's own generator, independent of any other initialisation
STORED_ROWS_KEY = "text_encoder.token_embedding_rows"  # the trained rows' token ids (int64)
STORED_VALUES_KEY = "text_encoder.token_embedding_values"  # and their values
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


def initial_token_table() -> torch.Tensor:
    """The token-embedding table before training: normal(0, 0.02) as CLIP initialises it, from its
    own generator, so that rows no caption ever reaches can be re-made exactly on loading."""
    shape = (TEXT_CONFIG["vocab_size"], TEXT_CONFIG["hidden_size"])
    return torch.empty(shape).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(TOKEN_TABLE_SEED))


def build_pipeline(seed: int = 0) -> DigitsPipeline:
    """Fresh, randomly initialised parts (seeded)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    # Plain matrix-product attention: with heads of 8 to 32 channels over 32 tokens it runs about
    # twice as fast on a CPU as the fused kernels, in training and in sampling alike.
    unet.set_attn_processor(AttnProcessor())
    text_encoder.set_attn_implementation("eager")
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.copy_(initial_token_table())
    return DigitsPipeline(unet, text_encoder, DDPMScheduler(**SCHEDULER_CONFIG))


def token_table_key(text_encoder: CLIPTextModel) -> str:
    """The token table's key in the model file (its module path differs between transformers versions)."""
    table = text_encoder.get_input_embeddings().weight
    return "text_encoder." + next(name for name, value in text_encoder.named_parameters() if value is table)


def model_state_for_file(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """The weights as the model file stores them: float16, and of the token table only the rows
    that training changed (the rest equal :func:`initial_token_table`)."""
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}
    table = state.pop(token_table_key(text_encoder))
    rows = torch.nonzero((table != initial_token_table()).any(dim=1)).flatten()
    state = {key: value.half() for key, value in state.items()}
    state[STORED_ROWS_KEY] = rows.long()
    state[STORED_VALUES_KEY] = table[rows].half()
    return state


def load_pipeline(path: str | Path = MODEL_FILE) -> DigitsPipeline:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded model weights not found at {path}; run `python -m fade_core.digits.train` to rebuild them"
        )
    return pipeline_from_state(load_safetensors(path))


def pipeline_from_state(state: dict[str, torch.Tensor]) -> DigitsPipeline:
    """The pipeline from weights as :func:`model_state_for_file` stores them (so a model trained in
    memory can be measured exactly as it would be after saving and loading)."""
    pipeline = build_pipeline()
    state = dict(state)
    table = initial_token_table()
    table[state.pop(STORED_ROWS_KEY)] = state.pop(STORED_VALUES_KEY).float()
    state = {key: value.float() for key, value in state.items()} | {token_table_key(pipeline.text_encoder): table}
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
