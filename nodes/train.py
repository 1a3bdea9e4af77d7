"""Train FADE Eraser: Algorithm 1 of the paper on a ComfyUI model; writes the LoRA and returns the erased MODEL."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sd
import folder_paths
from comfy_api.latest import io, ui

from ..fade_core.adversary import build_adversary
from ..fade_core.config import FadeConfig
from ..fade_core.errors import FadeInputError, FadeInterrupted
from ..fade_core.fade import StepReport
from ..fade_core.run import erase_and_export
from .comfy_adapter import ComfyAdapter, model_family
from .host import Progress, gradients_enabled, reserve_lora_output, running_node_id
from .sockets import CATEGORY, PromptSetType, SaliencyType

EVENT_EVERY = 5  # steps between progress events for the web chart
DEFAULTS = FadeConfig()


class FADETrainEraser(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FADETrainEraser",
            display_name="FADE Train Eraser",
            category=CATEGORY,
            description=(
                "Erases the prompt set's concepts: an adversary learns to tell the model's concept images from its "
                "neutral ones, and a LoRA on the salient modules learns to fool it while keeping the neutral "
                "predictions at the high-noise steps. Writes the LoRA to the loras folder and returns the erased model."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                PromptSetType.Input("prompt_set"),
                SaliencyType.Input("saliency"),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=100000,
                             tooltip="LoRA updates after the adversary's warm-up; plain FADE stops earlier once the adversary is at chance, a robust run (robust_every > 0) once a fresh soft-prompt attack no longer brings the concept back, and keeps its best state."),
                io.Int.Input("adversary_warmup", default=DEFAULTS.adversary_warmup, min=0, max=10000,
                             tooltip="Adversary updates on the base model's own samples before the LoRA moves."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-6, max=1e-1, step=1e-5,
                               tooltip="LoRA learning rate (Adam)."),
                io.Int.Input("lora_rank", default=DEFAULTS.lora_rank, min=1, max=256),
                io.Float.Input("preservation_weight", default=DEFAULTS.preservation_weight, min=0.0, max=1000.0, step=0.5,
                               tooltip="lambda: weight of the squared gap to the original predictions on neutral prompts."),
                io.Float.Input("t0_fraction", default=DEFAULTS.t0_fraction, min=0.05, max=1.0, step=0.05,
                               tooltip="T0 as a share of the sampling steps, counted from pure noise: the high-noise steps whose neutral predictions are preserved."),
                io.Float.Input("guidance", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="CFG scale of every sample in the loop (FLUX: its distilled guidance)."),
                io.Int.Input("sampling_steps", default=DEFAULTS.sampling_steps, min=2, max=100,
                             tooltip="Length of the sampling trajectories the training states are taken from."),
                io.Int.Input("batch_size", default=4, min=1, max=256, tooltip="Prompt pairs per step."),
                io.Combo.Input("adversary", options=["latent", "clip"], default="latent",
                               tooltip="latent: a small CNN on the latents. clip: a head on a frozen open_clip image encoder (needs the VAE and weights in models/clip_vision)."),
                io.Combo.Input("clip_vision_weights", options=["none"] + folder_paths.get_filename_list("clip_vision"),
                               default="none", tooltip="open_clip vision weights (.safetensors) for the clip adversary."),
                io.String.Input("clip_architecture", default="ViT-B-32", tooltip="open_clip architecture of those weights."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8),
                io.Int.Input("height", default=512, min=64, max=4096, step=8),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute each UNet/transformer block's activations in backward instead of keeping them: SD1.5 at 512 px: a step adds 2.2 instead of 6.6 GiB, and takes about 40 % longer (README, 'Memory and time at full size')."),
                io.Int.Input("robust_every", default=DEFAULTS.robust_every, min=0, max=10000,
                             tooltip="Robust erasure: every N LoRA updates an inner attack looks for soft prompts that bring the concept back, and the LoRA also learns to erase from them. 0: off (the default). The measured setting: 10, with batch_size doubled, t0_fraction 1.0 and the saliency family 'all'; at each validation a fresh soft-prompt attack, which training never sees, judges the LoRA: the run keeps the state it judged best and stops once that attack brings back none of its samples (the CLI's --robust-stop, 0). It costs about nine times plain FADE's time on the embedded digits model. See the README's 'How robust is the erasure'."),
                io.Int.Input("audit_samples", default=DEFAULTS.audit_samples, min=4, max=4096,
                             tooltip="Generations of each class (concept, neutral) for the audit after training: a fresh adversary learns on half and is judged on the other half. Its accuracy and 95 % interval go into the LoRA's metadata."),
                io.String.Input("filename_prefix", default="fade/erased",
                                tooltip="Where the LoRA goes inside the loras folder; a number is appended."),
                io.Vae.Input("vae", optional=True, tooltip="Only the clip adversary needs it."),
            ],
            outputs=[io.Model.Output(display_name="erased_model"), io.String.Output(display_name="stats")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, prompt_set, saliency, steps, adversary_warmup, learning_rate, lora_rank,
                preservation_weight, t0_fraction, guidance, sampling_steps, batch_size, adversary,
                clip_vision_weights, clip_architecture, width, height, seed, gradient_checkpointing, robust_every,
                audit_samples, filename_prefix, vae=None) -> io.NodeOutput:
        config = FadeConfig(
            steps=steps, adversary_warmup=adversary_warmup, batch_size=batch_size, lora_rank=lora_rank,
            lora_alpha=float(lora_rank), learning_rate=learning_rate, preservation_weight=preservation_weight,
            t0_fraction=t0_fraction, guidance=guidance, sampling_steps=sampling_steps, adversary=adversary, seed=seed,
            robust_every=robust_every, audit_samples=audit_samples,
        )
        config.check()
        if adversary == "clip" and clip_vision_weights == "none":
            raise FadeInputError("the clip adversary needs open_clip vision weights: put a .safetensors in models/clip_vision and choose it in clip_vision_weights")
        progress = Progress(adversary_warmup + steps, running_node_id(cls))

        def on_step(report: StepReport) -> None:
            progress.advance()
            if report.step % EVENT_EVERY == 0 or report.validation_accuracy is not None:
                progress.send({
                    "step": report.step, "total": report.total, "phase": report.phase,
                    "loss_adversary": report.loss_adversary, "adversary_accuracy": report.adversary_accuracy,
                    "loss_removal": report.loss_removal, "loss_preservation": report.loss_preservation,
                    "validation_accuracy": report.validation_accuracy,
                })

        with reserve_lora_output(filename_prefix) as output, gradients_enabled(), ComfyAdapter(
            model, clip, width=width, height=height, vae=vae, gradient_checkpointing=gradient_checkpointing
        ) as adapter:
            # One forward holds the concept and neutral halves of a batch, doubled by CFG.
            adapter.plan_batch(2 * batch_size * (1 if adapter.distilled_guidance or guidance == 1.0 else 2))
            judge = None
            if adversary == "clip":
                judge = build_adversary(
                    "clip", adapter.sample_shape, len(prompt_set.concepts), to_images=adapter.to_images,
                    clip_model=clip_architecture, clip_weights=folder_paths.get_full_path_or_raise("clip_vision", clip_vision_weights),
                    seed=seed,
                )
            try:
                erasure = erase_and_export(
                    adapter, prompt_set, saliency.selected, config, output, base_model=model_family(model),
                    adversary=judge, callback=on_step, audit_progress=progress.advance_to,
                    interrupts=(comfy.model_management.InterruptProcessingException, KeyboardInterrupt),
                )
            except FadeInterrupted as stop:
                logging.warning("FADE: %s", stop)
                raise stop.__cause__  # ComfyUI's own interrupt, so that the queue stops as it expects
        result, audited, path, lora = erasure.result, erasure.audit, erasure.path, erasure.lora

        erased, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
        stats = (
            f"concepts: {', '.join(prompt_set.concepts)}\n"
            f"training adversary's accuracy on validation pairs: {result.validation_accuracy:.3f}; "
            f"stopped at chance: {result.stopped_at_chance}\n"
            f"{audited.summary()} (a lower bound)\n"
            f"steps: {result.steps_done}; last L_rem {_last(result.history, 'loss_removal')}, "
            f"L_pres {_last(result.history, 'loss_preservation')}; {result.seconds:.0f} s\n"
            + (f"{result.kept_summary()}\n" if result.held_out_attack is not None else "") +
            f"LoRA: {path.name} ({len(saliency.selected)} modules, rank {lora_rank})"
        )
        return io.NodeOutput(erased, stats, ui=ui.PreviewText(stats))


def _last(history: list[StepReport], field: str) -> str:
    values = [getattr(r, field) for r in history if getattr(r, field) is not None]
    return f"{values[-1]:.4f}" if values else "n/a"

