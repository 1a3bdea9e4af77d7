"""Apply Erased LoRA: loads a FADE (or any kohya) LoRA from the loras folders and shows how it was made."""

from __future__ import annotations

import json
import math

import comfy.lora
import comfy.lora_convert
import comfy.sd
import folder_paths
from comfy_api.latest import io, ui

from ..fade_core.errors import FadeInputError
from ..fade_core.files import load_safetensors, read_safetensors_metadata
from ..fade_core.lora_file import base_model_problem, check_lora, kohya_modules, require_lora
from .comfy_adapter import model_family
from .host import lora_file
from .sockets import CATEGORY

SHOWN_METADATA = (
    "fade_concepts", "fade_category", "fade_status", "fade_base_model", "fade_steps_done",
    "fade_final_adversary_accuracy", "fade_audit_accuracy", "fade_audit_ci95", "fade_tv_lower_bound",
    "fade_stopped_at_chance", "ss_network_dim",
)


def describe(metadata: dict[str, str]) -> str:
    if "fade_method" not in metadata and "fade_status" not in metadata:
        return "not a FADE LoRA (no erasure metadata); applied as an ordinary LoRA"
    lines = []
    for key in SHOWN_METADATA:
        if key in metadata:
            value = metadata[key]
            try:
                value = json.loads(value)
            except ValueError:
                pass
            lines.append(f"{key.removeprefix('fade_').removeprefix('ss_')}: {value}")
    return "\n".join(lines)


def module_weight(model, name: str):
    """The MODEL's weight of a diffusion-model module (None if it has none), as the fingerprint reads it."""
    try:
        return model.model.diffusion_model.get_submodule(name).weight
    except AttributeError:
        return None


def lora_targets(model, clip) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """ComfyUI's key map for the MODEL (and CLIP), and {kohya prefix: weight shape} for the keys
    that name one whole weight (fused-slice keys keep ComfyUI's own handling)."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    state = dict(model.model.state_dict())
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        state |= dict(clip.cond_stage_model.state_dict())
    shapes = {prefix: tuple(state[key].shape) for prefix, key in key_map.items() if isinstance(key, str) and key in state}
    return key_map, shapes


class FADEApplyErasedLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FADEApplyErasedLoRA",
            display_name="FADE Apply Erased LoRA",
            category=CATEGORY,
            description=(
                "Applies an erased-concept LoRA (safetensors only) from the loras folders, checks that it was made for "
                "this model, and shows the erasure it records and how many of its modules matched."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA from the loras folders, e.g. one the Train FADE Eraser node wrote."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="1 applies the erasure as trained."),
                io.Boolean.Input("accept_other_base_model", default=False,
                                 tooltip="Apply a FADE LoRA even though it records another base model than this one."),
                io.Clip.Input("clip", optional=True, tooltip="Only needed for LoRAs that also change the text encoder; FADE's do not."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.String.Output(display_name="erasure")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, accept_other_base_model=False, clip=None) -> io.NodeOutput:
        if not (isinstance(strength, (int, float)) and math.isfinite(strength)):
            raise FadeInputError(f"strength is {strength}; use a finite number (1 applies the erasure as trained)")
        path = lora_file(lora_name)
        lora = load_safetensors(path)  # names the file and what is wrong with it; refuses NaN and infinity
        metadata = read_safetensors_metadata(path)
        lines = [describe(metadata)]
        problem = base_model_problem(metadata, model_family(model), lambda name: module_weight(model, name))
        if problem and not accept_other_base_model:
            raise FadeInputError(f"{lora_name} may not suit this model: {problem}; set accept_other_base_model to apply it anyway")
        if problem:
            lines.append(f"warning: {problem}; applied anyway (accept_other_base_model)")
        require_lora(path, lora)
        key_map, shapes = lora_targets(model, clip)
        if kohya_modules(lora):
            check_lora(path, lora, shapes, model=f"this {model_family(model)} model", every_module=False)
        matched = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False)
        total = len(kohya_modules(lora)) or len(lora)
        if not matched:
            raise FadeInputError(
                f"none of the {total} modules of {lora_name} matches this {model_family(model)} model; "
                "it was made for another model: choose a LoRA made for this one"
            )
        text_encoder = clip is None and any(key.startswith("lora_te") for key in lora)
        lines.append(f"modules matched: {len(matched)} of {total}" + (" (connect clip for the text-encoder part)" if text_encoder else ""))
        info = "\n".join(lines)
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength if clip is not None else 0.0)
        return io.NodeOutput(model, clip, info, ui=ui.PreviewText(info))
