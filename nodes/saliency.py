"""Compute Saliency: which modules carry the concept (paper section 4.2)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..fade_core.saliency import check_budget, compute_saliency
from .comfy_adapter import ComfyAdapter
from .host import Progress, running_node_id, gradients_enabled
from .sockets import CATEGORY, PromptSetType, SaliencyType

FAMILIES = ["cross_attention", "attention", "all"]


class FADEComputeSaliency(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FADEComputeSaliency",
            display_name="FADE Compute Saliency",
            category=CATEGORY,
            description=(
                "Ranks the model's layers by the summed |gradient| of the gap between its concept and neutral "
                "predictions, on its own samples, and keeps the top ones: only these receive the eraser's LoRA."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                PromptSetType.Input("prompt_set"),
                io.Combo.Input("budget", options=["mass_fraction", "top_k"], default="mass_fraction",
                               tooltip="Keep the fewest modules that hold this share of the total saliency, or a fixed number of modules."),
                io.Float.Input("mass_fraction", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of the total saliency the chosen modules must hold (with budget mass_fraction)."),
                io.Int.Input("top_k", default=16, min=1, max=4096, tooltip="How many modules to keep (with budget top_k)."),
                io.Combo.Input("family", options=FAMILIES, default="cross_attention",
                               tooltip="Candidate layers: the projections that read the text (cross-attention keys and values; FLUX's text stream), every attention layer, or every linear and convolution."),
                io.Int.Input("prompts", default=32, min=1, max=1024, tooltip="Concept prompts whose gradients are summed."),
                io.Int.Input("sampling_steps", default=10, min=2, max=100, tooltip="Steps of the samples the gradients are taken on."),
                io.Float.Input("guidance", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="CFG scale of those samples (FLUX: its distilled guidance)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8),
                io.Int.Input("height", default=512, min=64, max=4096, step=8),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
            ],
            outputs=[SaliencyType.Output(display_name="saliency"), io.String.Output(display_name="summary")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, prompt_set, budget, mass_fraction, top_k, family, prompts, sampling_steps,
                guidance, width, height, seed) -> io.NodeOutput:
        top_k, mass_fraction = (top_k, None) if budget == "top_k" else (None, mass_fraction)
        check_budget(top_k, mass_fraction)  # before the model loads
        progress = Progress(1, running_node_id(cls))
        with gradients_enabled(), ComfyAdapter(model, clip, width=width, height=height) as adapter:
            saliency = compute_saliency(
                adapter, prompt_set,
                top_k=top_k, mass_fraction=mass_fraction,
                num_prompts=prompts, num_sampling_steps=sampling_steps, guidance=guidance,
                family=family, seed=seed,
                progress=lambda done, total: progress.advance_to(done, total),
            )
        summary = saliency.summary()
        return io.NodeOutput(saliency, summary, ui=ui.PreviewText(summary))
