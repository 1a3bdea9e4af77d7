"""The adversaries: one logit per concept; the CLIP one reads its vision weights from a local file."""

import pickle

import open_clip
import pytest
import torch

from fade_core.adversary import ClipFeatureAdversary, LatentAdversary, build_adversary
from fade_core.digits.data import from_model_range
from fade_core.digits.judge import default_prompt_set
from fade_core.errors import FadeInputError
from fade_core.fade import FadeConfig, FadeTrainer
from fade_core.files import save_safetensors

TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
)


@pytest.fixture
def tiny_clip_weights(tmp_path):
    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_CLIP)
    path = save_safetensors(model.state_dict(), tmp_path / "tiny-clip.safetensors")
    return path, model.visual.state_dict()


def test_latent_adversary_has_a_head_per_concept():
    adversary = build_adversary("latent", (4, 16, 16), num_concepts=3)
    assert isinstance(adversary, LatentAdversary)
    assert adversary(torch.randn(5, 4, 16, 16)).shape == (5, 3)


def test_clip_adversary_loads_the_named_weights_and_passes_gradients(tiny_clip_weights):
    path, visual_state = tiny_clip_weights
    adversary = build_adversary("clip", (1, 8, 8), 2, to_images=from_model_range, clip_config=TINY_CLIP, clip_weights=path)
    assert isinstance(adversary, ClipFeatureAdversary)
    for key, value in adversary.vision_tower.state_dict().items():
        assert torch.equal(value, visual_state[key]), key
    samples = torch.randn(3, 1, 8, 8, requires_grad=True)
    logits = adversary(samples)
    assert logits.shape == (3, 2)
    logits.sum().backward()
    assert samples.grad is not None and samples.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in adversary.vision_tower.parameters())


def test_clip_adversary_trains_inside_fade(adapter, tiny_clip_weights):
    path, _ = tiny_clip_weights
    adversary = build_adversary("clip", adapter.sample_shape, 1, to_images=adapter.to_images, clip_config=TINY_CLIP, clip_weights=path)
    heads_before = adversary.heads.weight.clone()
    config = FadeConfig(steps=2, adversary_warmup=2, batch_size=4, validate_every=2)
    result = FadeTrainer(adapter, default_prompt_set(["two"], num_prompts=8), ["mid_block.attentions.0.transformer_blocks.0.attn2.to_v"],
                         config, adversary=adversary).run()
    assert result.steps_done == 2
    assert not torch.equal(adversary.heads.weight, heads_before)


def test_clip_adversary_refuses_missing_or_pickled_weights(tmp_path):
    with pytest.raises(FadeInputError, match="needs vision weights"):
        build_adversary("clip", (1, 8, 8), 1, to_images=from_model_range)
    pickled = tmp_path / "clip.bin"
    pickled.write_bytes(pickle.dumps({}))
    with pytest.raises(FadeInputError, match="only safetensors"):
        build_adversary("clip", (1, 8, 8), 1, to_images=from_model_range, clip_config=TINY_CLIP, clip_weights=pickled)
    wrong = save_safetensors({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(FadeInputError, match="does not fit"):
        build_adversary("clip", (1, 8, 8), 1, to_images=from_model_range, clip_config=TINY_CLIP, clip_weights=wrong)
    with pytest.raises(FadeInputError, match="unknown adversary"):
        build_adversary("vit", (1, 8, 8), 1)
