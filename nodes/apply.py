"""Apply Erased LoRA: loads a FADE (or any kohya) LoRA from the loras folders and shows how it was made."""

from __future__ import annotations

import json

import comfy.sd
import folder_paths
from comfy_api.latest import io, ui

from ..fade_core.files import load_safetensors, read_safetensors_metadata
from .host import lora_file
from .sockets import CATEGORY

SHOWN_METADATA = (
    "fade_concepts", "fade_category", "fade_status", "fade_base_model", "fade_steps_done",
    "fade_final_adversary_accuracy", "fade_tv_bound", "fade_stopped_at_chance", "ss_network_dim",
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


class FADEApplyErasedLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FADEApplyErasedLoRA",
            display_name="FADE Apply Erased LoRA",
            category=CATEGORY,
            description="Applies an erased-concept LoRA (safetensors only) from the loras folders and shows the erasure it records.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA from the loras folders, e.g. one the Train FADE Eraser node wrote."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="1 applies the erasure as trained."),
                io.Clip.Input("clip", optional=True, tooltip="Only needed for LoRAs that also change the text encoder; FADE's do not."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.String.Output(display_name="erasure")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, clip=None) -> io.NodeOutput:
        path = lora_file(lora_name)
        lora = load_safetensors(path)
        info = describe(read_safetensors_metadata(path))
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength if clip is not None else 0.0)
        return io.NodeOutput(model, clip, info, ui=ui.PreviewText(info))
