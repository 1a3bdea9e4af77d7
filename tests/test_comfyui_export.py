"""The LoRA exported from a ComfyUI model loads in diffusers too (what A1111/Forge and diffusers
users do with it): SD-family keys in kohya naming with diffusers module names, FLUX keys in kohya
naming with the model's own (BFL) module names. Needs COMFYUI_PATH."""

from __future__ import annotations

import pytest
import torch

from comfy_host import SKIP_REASON, comfyui_path, start_host, tiny_clip, tiny_flux, tiny_sd15, tiny_sdxl

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return start_host(str(tmp_path_factory.mktemp("loras")))


def random_lora(model, family_filter) -> dict[str, torch.Tensor]:
    """A LoRA with random weights on the chosen modules, exported as the Train node exports it."""
    from comfyui_fade.fade_core.lora import attach_lora, kohya_state_dict, remove_lora
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    with torch.inference_mode(False), ComfyAdapter(model, tiny_clip(), width=64, height=64) as adapter:
        names = [n for n in adapter.lora_candidates("all") if family_filter(n)]
        parameters = attach_lora(adapter, names, rank=2, alpha=1.0, seed=0)
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for parameter in parameters:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
        state = kohya_state_dict(adapter)
        remove_lora(adapter)
    return state


def patched_weights(model, lora) -> dict[str, torch.Tensor]:
    """ComfyUI's own reading of the LoRA: the weight changes it applies, by module name."""
    import comfy.model_management
    import comfy.sd

    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    comfy.model_management.load_models_gpu([patched], force_patch_weights=True)
    after = {k: v.clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    comfy.model_management.unload_all_models()
    return {k.removesuffix(".weight"): after[k] - base[k] for k in base if not torch.equal(after[k], base[k])}


def test_an_sd15_lora_gives_diffusers_the_same_unet_as_comfyui(host):
    import comfy.model_management
    import comfy.sd
    import comfy.utils
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    model = tiny_sd15()
    lora = random_lora(model, lambda n: ".attn2." in n or ".attn1." in n)
    assert all(k.startswith("lora_unet_") and ("down_blocks" in k or "up_blocks" in k or "mid_block" in k) for k in lora)

    # The same UNet in diffusers, its weights copied through ComfyUI's own name mapping.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=32,  # diffusers reads this as 8 heads, as ComfyUI's SD15 config sets
    )
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    comfy_state = model.model.diffusion_model.state_dict()
    with torch.inference_mode(False):
        unet.load_state_dict({d: comfy_state[c].clone() for d, c in mapping.items() if c in comfy_state}, strict=True)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 8, 8), generator=generator)
    context = torch.randn((2, 77, 64), generator=generator)
    timesteps = torch.tensor([500.0, 120.0])

    def comfy_eps(patcher):
        comfy.model_management.load_models_gpu([patcher], force_patch_weights=True)
        with torch.no_grad():
            out = patcher.model.diffusion_model(x, timesteps, context=context)
        comfy.model_management.unload_all_models()
        return out

    with torch.no_grad():
        base = unet(x, timesteps, encoder_hidden_states=context).sample
        assert torch.allclose(base, comfy_eps(model), atol=1e-4)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    expected = comfy_eps(patched)

    converted, alphas = StableDiffusionPipeline.lora_state_dict(dict(lora))
    StableDiffusionPipeline.load_lora_into_unet(converted, alphas, unet)
    with torch.no_grad():
        loaded = unet(x, timesteps, encoder_hidden_states=context).sample
    assert (expected - comfy_eps(model)).abs().max() > 1e-3  # the LoRA does change the model
    assert torch.allclose(loaded, expected, atol=1e-4)


def test_a_flux_lora_gives_diffusers_the_same_weight_changes_as_comfyui(host):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft.tuners.lora import LoraLayer

    model = tiny_flux()
    hidden = 64
    # diffusers splits single_blocks.N.linear1 by FLUX's real widths (3072 x 3 + 12288), which a tiny
    # model cannot have; every other layer kind is checked here, the default family (txt_attn.qkv) included.
    lora = random_lora(model, lambda n: n.endswith(("attn.qkv", "attn.proj", "linear2")))
    comfy_delta = patched_weights(model, lora)

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    converted, alphas = FluxPipeline.lora_state_dict(dict(lora), return_alphas=True)  # raises on unconverted keys
    FluxPipeline.load_lora_into_transformer(converted, alphas, transformer)
    diffusers_delta = {}
    for name, layer in transformer.named_modules():
        if isinstance(layer, LoraLayer):
            adapter = next(iter(layer.lora_A))
            diffusers_delta[name] = (layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight) * layer.scaling[adapter]

    rows = {"q": slice(0, hidden), "k": slice(hidden, 2 * hidden), "v": slice(2 * hidden, 3 * hidden)}
    pairs = {
        "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv", rows["q"]),
        "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv", rows["k"]),
        "transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv", rows["v"]),
        "transformer_blocks.0.attn.add_q_proj": ("double_blocks.0.txt_attn.qkv", rows["q"]),
        "transformer_blocks.0.attn.add_k_proj": ("double_blocks.0.txt_attn.qkv", rows["k"]),
        "transformer_blocks.0.attn.add_v_proj": ("double_blocks.0.txt_attn.qkv", rows["v"]),
        "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj", slice(None)),
        "transformer_blocks.0.attn.to_add_out": ("double_blocks.0.txt_attn.proj", slice(None)),
        "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2", slice(None)),
    }
    assert set(diffusers_delta) == set(pairs)
    assert set(comfy_delta) == {comfy_name for comfy_name, _ in pairs.values()}
    for diffusers_name, (comfy_name, part) in pairs.items():
        assert torch.allclose(diffusers_delta[diffusers_name], comfy_delta[comfy_name][part], atol=1e-5), diffusers_name


def test_sdxl_gets_its_adm_vector_and_comfyui_reads_every_lora_key(host):
    import comfy.lora
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    model = tiny_sdxl()
    with torch.inference_mode(False):
        adapter = ComfyAdapter(model, tiny_clip(), width=64, height=64)
        cond = adapter.encode(["a photo of an airplane", "a photo of a cat"])
        assert cond.tensors["y"].shape == (2, 64 + 6 * 256)  # pooled text + sizes, through ComfyUI's encode_adm
        x = torch.randn((2, *adapter.sample_shape), generator=torch.Generator().manual_seed(0))
        level = adapter.noise_levels(4)[1].expand(2)
        with torch.no_grad():
            x0 = adapter.predict_x0(x, level, cond, 5.0)
            other = adapter.predict_x0(x, level, adapter.encode(["a photo of a cat", "a photo of an airplane"]), 5.0)
    assert torch.isfinite(x0).all() and (x0 - other).abs().max() > 1e-4

    lora = random_lora(model, lambda n: ".attn2." in n)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map)
    modules = {k.removesuffix(".lora_down.weight") for k in lora if k.endswith(".lora_down.weight")}
    assert len(patches) == len(modules) > 0  # every exported module found its weight
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith(("lora_unet_up_blocks_", "lora_unet_mid_block_")) for k in lora)
