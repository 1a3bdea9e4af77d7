"""The exported LoRA is a standard kohya file: diffusers loads it and reproduces the erased model."""

import torch

from fade_core.digits.model import load_pipeline, make_adapter
from fade_core.files import load_safetensors, read_safetensors_metadata
from fade_core.lora import ADAPTER_NAME, attach_lora, export_lora, lora_layers
from fade_core.sampling import generate

PROMPTS = ["a handwritten 3", "the digit seven", "a bold 5", "an inverted eight"]


def test_diffusers_load_lora_weights_reproduces_the_erased_model(adapter, tmp_path):
    modules = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
               "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
               "up_blocks.1.resnets.1.conv2", "mid_block.attentions.0.proj_out"]
    attach_lora(adapter, modules, rank=4, alpha=2.0, seed=0)
    with torch.no_grad():  # a trained LoRA is not zero: give every up-projection real values
        for _, layer in lora_layers(adapter.denoiser):
            layer.lora_B[ADAPTER_NAME].weight.normal_(0, 0.2)
    erased = generate(adapter, PROMPTS, seed=0, num_steps=10, guidance=2.0)
    path = export_lora(adapter, tmp_path / "erased.safetensors", {"fade_concepts": ["three"]})

    keys = load_safetensors(path)
    assert len(keys) == 3 * len(modules)
    assert "lora_unet_up_blocks_1_resnets_1_conv2.lora_down.weight" in keys
    assert read_safetensors_metadata(path)["fade_concepts"] == '["three"]'

    reloaded = load_pipeline()
    reloaded.load_lora_weights(keys)
    again = generate(make_adapter(reloaded), PROMPTS, seed=0, num_steps=10, guidance=2.0)
    base = generate(make_adapter(load_pipeline()), PROMPTS, seed=0, num_steps=10, guidance=2.0)
    assert (again - erased).abs().max().item() <= 1e-4
    assert (base - erased).abs().max().item() > 1e-2  # the LoRA does change the model


def test_a_lora_in_the_text_encoder_too_is_one_kohya_file_that_diffusers_reproduces(adapter, tmp_path):
    # MLP layers: diffusers 0.42 renames kohya's text-encoder attention keys to its legacy
    # "to_v_lora" form, which a transformers 5 CLIPTextModel then does not take (ComfyUI and A1111
    # read them as kohya writes them); the key spelling of both is checked below.
    text_modules = ["text_encoder.encoder.layers.1.mlp.fc1", "text_encoder.encoder.layers.3.mlp.fc2"]
    attach_lora(adapter, ["mid_block.attentions.0.proj_out", *text_modules], rank=4, alpha=4.0, seed=0)
    assert adapter.trains_text_encoder
    with torch.no_grad():
        for down, up, _ in adapter.lora.factors().values():
            up.normal_(0, 0.2)
    erased = generate(adapter, PROMPTS, seed=0, num_steps=10, guidance=2.0)
    keys = load_safetensors(export_lora(adapter, tmp_path / "both.safetensors", {}))
    assert "lora_te_text_model_encoder_layers_1_mlp_fc1.lora_up.weight" in keys
    assert adapter.lora_key("text_encoder.encoder.layers.1.self_attn.v_proj") == "lora_te_text_model_encoder_layers_1_self_attn_v_proj"
    assert "lora_te_text_model_encoder_layers_3_mlp_fc2.alpha" in keys
    assert "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight" in keys

    reloaded = load_pipeline()
    reloaded.load_lora_weights(keys)
    again = generate(make_adapter(reloaded), PROMPTS, seed=0, num_steps=10, guidance=2.0)
    assert (again - erased).abs().max().item() <= 1e-4
    with torch.no_grad():  # the text-encoder part alone changes what the model reads
        context = make_adapter(load_pipeline()).encode(PROMPTS).tensors["context"]
        assert (make_adapter(reloaded).encode(PROMPTS).tensors["context"] - context).abs().max() > 1e-3
