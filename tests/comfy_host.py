"""A real ComfyUI, in-process, for the host tests: the pack loaded as ComfyUI loads it, and tiny
random models of the SD1.5 and FLUX architectures built from ComfyUI's own model classes.

Nothing here runs unless COMFYUI_PATH names a ComfyUI checkout; the test modules skip otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_fade"
SKIP_REASON = (
    "COMFYUI_PATH is not set: the ComfyUI host tests need a ComfyUI checkout "
    "(e.g. COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/test_comfyui_nodes.py)"
)


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value) if value else None


@functools.cache
def start_host(loras_dir: str) -> types.ModuleType:
    """Imports ComfyUI on the CPU, points its loras folder at ``loras_dir`` and loads the pack."""
    root = str(comfyui_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    # ComfyUI's nodes.py later puts comfy/ first on sys.path, where comfy/utils.py would then
    # shadow the utils package; main.py imports that package first, and so do we.
    import utils.install_util  # noqa: F401
    from comfy.cli_args import args

    args.cpu = True  # before model_management is imported, as ComfyUI's main does with --cpu
    import folder_paths

    folder_paths.folder_names_and_paths["loras"] = ([loras_dir], {".safetensors"})
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return pack


def node_classes(pack: types.ModuleType) -> dict[str, type]:
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {node.GET_SCHEMA().node_id: node for node in nodes}


def _initialise(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's layers start as torch.empty; give them small random values instead."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() >= 2:
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight") or name.endswith("scale"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


def _random_model(config_class, unet_config: dict, seed: int, dtype: torch.dtype = torch.float32):
    """ComfyUI's own model class for a supported family, random weights, in a ModelPatcher."""
    import comfy.model_patcher

    config = config_class(unet_config)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    _initialise(model, seed=seed)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def _as_loaded_by_comfyui(build):
    """ComfyUI loads models while executing a prompt, under torch.inference_mode(): so do we."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with torch.inference_mode():
            return build(*args, **kwargs)

    return wrapper


@_as_loaded_by_comfyui
def tiny_sd15(dtype: torch.dtype = torch.float32):
    import comfy.supported_models

    unet_config = {
        "model_channels": 32, "context_dim": 64, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
        "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "image_size": 32, "adm_in_channels": None, "use_linear_in_transformer": False,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    return _random_model(comfy.supported_models.SD15, unet_config, seed=1, dtype=dtype)


@_as_loaded_by_comfyui
def tiny_sdxl():
    """SDXL's UNet layout, small: its ADM input is the 64-wide pooled text vector plus the six
    size embeddings (6 x 256), as ComfyUI's SDXL.encode_adm builds it."""
    import comfy.supported_models

    unet_config = {
        "model_channels": 64, "context_dim": 64, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
        "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "image_size": 32, "adm_in_channels": 64 + 6 * 256, "num_classes": "sequential", "use_linear_in_transformer": True,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    return _random_model(comfy.supported_models.SDXL, unet_config, seed=4)


@_as_loaded_by_comfyui
def tiny_flux(dtype: torch.dtype = torch.float32):
    import comfy.supported_models

    unet_config = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "hidden_size": 64,
        "num_heads": 4, "axes_dim": [4, 6, 6], "depth": 1, "depth_single_blocks": 1, "vec_in_dim": 64,
        "context_in_dim": 64, "guidance_embed": True, "mlp_ratio": 4.0, "qkv_bias": True, "theta": 10000,
    }
    return _random_model(comfy.supported_models.Flux, unet_config, seed=2, dtype=dtype)


@_as_loaded_by_comfyui
def tiny_clip():
    """A one-layer CLIP text encoder of width 64 with CLIP's real tokenizer; its pooled output is
    64 wide too, so it serves both tiny models."""
    import comfy.sd
    import comfy.sd1_clip

    text_config = {
        "hidden_act": "quick_gelu", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_hidden_layers": 1, "max_position_embeddings": 77, "vocab_size": 49408, "eos_token_id": 49407,
        "layer_norm_eps": 1e-5, "projection_dim": 64,
    }
    clip_model = functools.partial(
        comfy.sd1_clip.SD1ClipModel, clip_model=comfy.sd1_clip.SDClipModel, textmodel_json_config=text_config
    )
    target = types.SimpleNamespace(clip=clip_model, tokenizer=comfy.sd1_clip.SD1Tokenizer, params={})
    clip = comfy.sd.CLIP(target)
    _initialise(clip.cond_stage_model, seed=3)
    return clip


def write_tiny_sd15_checkpoint(path: Path) -> Path:
    """A checkpoint file that ComfyUI's CheckpointLoaderSimple reads as SD1.5: SD1.5's UNet widths
    (320 channels, 768-wide text context) with one level and one block per level, the real CLIP-L
    text encoder and SD VAE layouts, random weights, float16 (about 450 MB)."""
    import comfy.ldm.models.autoencoder
    import comfy.model_management
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models

    unet_config = {
        "model_channels": 320, "context_dim": 768, "channel_mult": [1], "num_res_blocks": [1],
        "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
        "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "image_size": 32, "adm_in_channels": None, "use_linear_in_transformer": False,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    with torch.inference_mode():
        model = _random_model(comfy.supported_models.SD15, unet_config, seed=11)
        target = types.SimpleNamespace(clip=comfy.sd1_clip.SD1ClipModel, tokenizer=comfy.sd1_clip.SD1Tokenizer, params={})
        clip = comfy.sd.CLIP(target)
        _initialise(clip.cond_stage_model, seed=12)
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
        autoencoder = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        _initialise(autoencoder, seed=13)
        vae_sd = {key: value.half() for key, value in autoencoder.state_dict().items()}
        clip_sd = {key: value.half() for key, value in clip.get_sd().items()}
        sd = model.model.state_dict_for_saving(clip_sd, vae_sd, None)
    sd = {key: (value.half() if value.is_floating_point() else value).contiguous() for key, value in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(sd, str(path))
    comfy.model_management.unload_all_models()
    return path
