"""Memory and time of FADE training steps at real model sizes, inside ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/scale.py --model sd15 --size 512 --batch 1 [--bf16] [--checkpointing]
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/scale.py --matrix sd15:256 sdxl:512 flux:256
    python benchmarks/scale.py --readme      # the README's table and plan, from benchmarks/scale.json

Builds ComfyUI's own model classes with the full SD1.5 and SDXL UNet configurations, and FLUX.1 at
full width (hidden 3072, 24 heads) with a reduced number of blocks (``--flux-blocks D S``: D double
and S single blocks), random weights in float32 or bfloat16; attaches the Train node's adapter
(clone, weight-wrapper LoRA of rank 4 on the cross-attention keys and values, or FLUX's text
q/k/v) and runs FADE training steps (``FadeTrainer._step``: one differentiable x0 prediction of
the concept and neutral halves, CFG included, the adversary update, the preservation forward and
backward) at the stated resolution and batch. The text encoders are replaced by random
conditioning of the real shapes (CLIP-L 77x768; SDXL 77x2048 + pooled 1280; FLUX T5 256x4096 +
pooled 768): they run once before training, not in the step. Prints seconds per step (mean over the
steps after the first) and memory: on a GPU torch's peak allocation and its rise during the steps,
on the CPU the process's peak resident size while the steps run and its rise over the size before
them (the activations, gradients and optimizer state of a step; weights are counted apart). Each configuration runs in a fresh process. Unchanged on a GPU.

Every run is recorded in benchmarks/scale.json (one entry per configuration and device, the latest
run replacing an earlier one); ``--readme`` writes the README's table from it, with FLUX.1's full
size extrapolated from runs with (1, 1), (2, 1) and (1, 2) blocks, and the plan for 8, 12 and 24 GB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "benchmarks" / "scale.json"

SD15 = {"image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
        "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
        "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL = {"image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential",
        "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
        "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False, "use_temporal_resblock": False}
FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
        "guidance_embed": True}
CONDITIONING = {"sd15": ((77, 768), None), "sdxl": ((77, 2048), 1280), "flux": ((256, 4096), 768)}
FLUX_FULL_BLOCKS = (19, 38)


def start_comfyui():
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (its requirements installed in this Python)")
    sys.path.insert(0, root)
    import utils.install_util  # noqa: F401  (as ComfyUI's main.py does first; see tests/comfy_host.py)
    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    # Attention through torch's scaled_dot_product_attention, as ComfyUI chooses on NVIDIA GPUs; on
    # the CPU it would otherwise pick its chunked sub-quadratic attention, whose backward keeps
    # every chunk, and the figures would not be the GPU's.
    args.use_pytorch_cross_attention = True
    spec = importlib.util.spec_from_file_location("comfyui_fade", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_fade"] = pack
    spec.loader.exec_module(pack)


class RandomTextEncoder:
    """Stands in for ComfyUI's CLIP: random conditioning of the family's real shapes, per prompt."""

    def __init__(self, family: str) -> None:
        self.cond_shape, self.pooled = CONDITIONING[family]

    def tokenize(self, prompt: str):
        return prompt

    def encode_from_tokens(self, tokens, return_pooled=True, return_dict=True):
        import torch

        generator = torch.Generator().manual_seed(sum(map(ord, tokens)))
        out = {"cond": torch.randn((1, *self.cond_shape), generator=generator)}
        if self.pooled:
            out["pooled_output"] = torch.randn((1, self.pooled), generator=generator)
        return out


def build(family: str, dtype, flux_blocks: tuple[int, int]):
    import torch

    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config_class, unet = {"sd15": (comfy.supported_models.SD15, SD15), "sdxl": (comfy.supported_models.SDXL, SDXL),
                          "flux": (comfy.supported_models.Flux, FLUX)}[family]
    unet = dict(unet)
    if family == "flux":
        unet["depth"], unet["depth_single_blocks"] = flux_blocks
    config = config_class(unet)
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():  # as ComfyUI loads checkpoints
        model = config.get_model({}, device=torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float32) / math.sqrt(fan_in))
            else:
                parameter.fill_(1.0 if name.endswith(("weight", "scale")) else 0.0)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, device, comfy.model_management.unet_offload_device())


class ResidentPeak:
    """The process's largest resident size while training steps run (CPU), sampled every 10 ms;
    ``start`` is the size when they begin (the model, the adapter and the trainer already built)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def run_one(family: str, size: int, batch: int, bf16: bool, checkpointing: bool, steps: int, flux_blocks) -> dict:
    import torch

    start_comfyui()
    from comfyui_fade.fade_core.fade import FadeConfig, FadeTrainer
    from comfyui_fade.fade_core.prompts import build_prompt_set
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    dtype = torch.bfloat16 if bf16 else torch.float32
    patcher = build(family, dtype, flux_blocks)
    parameters = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    prompt_set = build_prompt_set(["airplane"], "object", num_prompts=8)
    config = FadeConfig(steps=steps, adversary_warmup=0, batch_size=batch, sampling_steps=2, validation_repeats=1,
                        guidance=3.5, seed=0)
    cuda = torch.cuda.is_available()
    seconds = []
    with torch.inference_mode(False), torch.enable_grad(), \
            ComfyAdapter(patcher, RandomTextEncoder(family), width=size, height=size, gradient_checkpointing=checkpointing) as adapter:
        adapter.plan_batch(2 * batch * (1 if adapter.distilled_guidance else 2))
        modules = list(adapter.lora_candidates("cross_attention"))
        trainer = FadeTrainer(adapter, prompt_set, modules, config)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        sampler = ResidentPeak()
        for step in range(1, steps + 1):
            started = time.perf_counter()
            trainer._step(step, training=True)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        sampler.stop()
        estimate = adapter.memory_estimate()
        inference_estimate = adapter.base.memory_required([adapter._batch_rows, *adapter.sample_shape])
    if cuda:
        peak, step_extra = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_allocated() - before
    else:
        peak, step_extra = sampler.peak, sampler.peak - sampler.start
    return {
        "model": family, "size": size, "batch": batch, "dtype": "bf16" if bf16 else "fp32", "checkpointing": checkpointing,
        "flux_blocks": list(flux_blocks) if family == "flux" else None, "parameters": parameters,
        "weights_gb": parameters * (2 if bf16 else 4) / 2**30, "device": "cuda" if cuda else "cpu",
        "seconds_per_step": sum(seconds[1:]) / (len(seconds) - 1) if len(seconds) > 1 else None, "first_step_s": seconds[0],
        "peak_gb": peak / 2**30, "step_extra_gb": step_extra / 2**30, "comfy_inference_estimate_gb": inference_estimate / 2**30,
        "training_estimate_gb": estimate / 2**30,
    }


def configuration(result: dict) -> tuple:
    return (result["model"], result["size"], result["batch"], result["dtype"], result["checkpointing"],
            tuple(result["flux_blocks"] or ()), result["device"])


def record(result: dict, path: Path = RECORD) -> None:
    """Adds the run to the record, replacing an earlier run of the same configuration."""
    sys.path.insert(0, str(REPO))
    from fade_core.files import atomic_write

    results = json.loads(path.read_text()) if path.exists() else []
    results = [r for r in results if configuration(r) != configuration(result)] + [result]
    results.sort(key=configuration)
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(results, indent=1) + "\n"))


NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "FLUX.1"}


def flux_per_block(results: list[dict]) -> dict | None:
    """FLUX.1 at 19 double and 38 single blocks from checkpointed fp32 runs with fewer blocks at one
    size: each quantity is fitted by least squares as fixed + D x (one double block) + S x (one
    single block) over the runs' (D, S), and evaluated at (19, 38). Needs three runs whose (D, S)
    determine the three terms, as (1, 1), (2, 1), (1, 2) do; more runs average the noise out."""
    import numpy as np

    runs = [r for r in results if r["model"] == "flux" and r["checkpointing"] and r["dtype"] == "fp32"]
    if not runs:
        return None
    size = max({r["size"] for r in runs}, key=lambda px: sum(r["size"] == px for r in runs))
    runs = [r for r in runs if r["size"] == size]
    design = np.array([[1.0, *r["flux_blocks"]] for r in runs])
    if np.linalg.matrix_rank(design) < 3:
        return None
    full = {"size": size, "runs": len(runs)}
    for key in ("parameters", "step_extra_gb", "seconds_per_step"):
        (fixed, double, single), *_ = np.linalg.lstsq(design, np.array([r[key] for r in runs]), rcond=None)
        full[key] = float(fixed + FLUX_FULL_BLOCKS[0] * double + FLUX_FULL_BLOCKS[1] * single)
        full[key + "_per_double"], full[key + "_per_single"] = float(double), float(single)
    return full


# The plan for other precisions and sizes, from the measured step memory (stated in the README):
# bf16 halves weights and activations, fp8 weights are a quarter of fp32's; a step's memory grows
# with the tokens (UNets: the latent area; FLUX: image tokens (px/16)^2 plus 256 text tokens).
PLAN = [("sd15", 512), ("sd15", 1024), ("sdxl", 1024), ("flux", 512), ("flux", 1024)]
GPU_GB = (8, 12, 24)


def tokens(model: str, size: int) -> float:
    return (size / 16) ** 2 + 256 if model == "flux" else (size / 8) ** 2


def plan_rows(results: list[dict]) -> list[list[str]]:
    flux = flux_per_block(results)
    rows = []
    for model, size in PLAN:
        for checkpointing in (False, True):
            if model == "flux":
                if not (flux and checkpointing):
                    continue
                parameters, step_gb, measured_size, source = flux["parameters"], flux["step_extra_gb"], flux["size"], "per block"
            else:
                runs = [r for r in results if r["model"] == model and r["checkpointing"] == checkpointing and r["dtype"] == "fp32"]
                if not runs:
                    continue
                run = min(runs, key=lambda r: abs(r["size"] - size))
                parameters, step_gb, measured_size = run["parameters"], run["step_extra_gb"], run["size"]
                source = "measured" if measured_size == size else f"from {measured_size} px"
            step_gb *= tokens(model, size) / tokens(model, measured_size)
            fp32 = parameters * 4 / 2**30 + step_gb
            half = parameters * 2 / 2**30 + step_gb / 2
            low = parameters / 2**30 + step_gb / 2 if model == "flux" else half  # fp8 weights, bf16 compute
            fits = next((f"{gb} GB" for gb in GPU_GB if low <= 0.9 * gb), "more than 24 GB")
            rows.append([NAMES[model], str(size), "on" if checkpointing else "off", source, f"{fp32:.1f}", f"{half:.1f}",
                         f"{low:.1f}" if model == "flux" else "", fits])
    return rows


def readme_section(results: list[dict]) -> str:
    sys.path.insert(0, str(REPO))
    from fade_core.report import markdown_table

    rows = []
    for r in results:
        blocks = f" (blocks: {r['flux_blocks'][0]} double, {r['flux_blocks'][1]} single)" if r["flux_blocks"] else ""
        seconds = f"{r['seconds_per_step']:.0f}" if r["seconds_per_step"] else f"{r['first_step_s']:.0f} (first step)"
        rows.append([NAMES[r["model"]] + blocks, str(r["size"]), r["dtype"], "on" if r["checkpointing"] else "off",
                     f"{r['parameters'] / 1e6:,.0f} M", f"{r['weights_gb']:.2f}", f"{r['step_extra_gb']:.2f}",
                     f"{r['peak_gb']:.2f}", seconds, r["device"]])
    header = ["model", "px", "dtype", "checkpointing", "parameters", "weights GiB", "added by the steps GiB",
              "peak GiB", "s / step", "device"]
    parts = [markdown_table(header, rows)]
    flux = flux_per_block(results)
    if flux:
        parts += ["", (
            f"FLUX.1 at full size (19 double, 38 single blocks), extrapolated from the {flux['runs']} checkpointed fp32 "
            f"{flux['size']} px runs above, each quantity fitted by least squares as fixed + D x (one double block) + "
            f"S x (one single block) over their blocks (D, S): one double block {flux['parameters_per_double'] / 1e6:,.0f} M "
            f"parameters, {flux['step_extra_gb_per_double']:.2f} GiB added by the steps, "
            f"{flux['seconds_per_step_per_double']:.0f} s per step; one single block {flux['parameters_per_single'] / 1e6:,.0f} M, "
            f"{flux['step_extra_gb_per_single']:.2f} GiB, {flux['seconds_per_step_per_single']:.0f} s; "
            f"the whole model {flux['parameters'] / 1e9:.1f} B parameters ({flux['parameters'] * 4 / 2**30:.1f} GiB in fp32, "
            f"{flux['parameters'] * 2 / 2**30:.1f} in bf16, {flux['parameters'] / 2**30:.1f} in fp8), "
            f"{flux['step_extra_gb']:.1f} GiB added by the steps in fp32 with checkpointing, "
            f"{flux['seconds_per_step']:.0f} s per step on this device."
        )]
    plan = plan_rows(results)
    if plan:
        header = ["model", "px", "checkpointing", "step memory", "fp32 GiB", "bf16 GiB", "fp8 weights GiB", "fits in (90 % of the card)"]
        parts += ["", "The plan (weights plus the memory a step adds, from the table above; see the rules below it):", "",
                  markdown_table(header, plan)]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "flux"], default="sd15")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="prompt pairs per step")
    parser.add_argument("--bf16", action="store_true", help="model weights and compute in bfloat16 (LoRA stays float32)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of the blocks")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--flux-blocks", type=int, nargs=2, default=(1, 2), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--matrix", nargs="+", metavar="MODEL:SIZE",
                        help="every dtype x checkpointing combination for each, one process each; prints a table")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="with --matrix")
    parser.add_argument("--json", type=Path, help="with --matrix: also write the results here")
    parser.add_argument("--no-record", action="store_true", help=f"do not add the run to {RECORD.relative_to(REPO)}")
    parser.add_argument("--readme", action="store_true", help=f"write the README's section from {RECORD.relative_to(REPO)}")
    args = parser.parse_args()
    if args.readme:
        sys.path.insert(0, str(REPO))
        from fade_core.report import replace_section

        replace_section("scale", readme_section(json.loads(RECORD.read_text())))
        return
    if not args.matrix:
        result = run_one(args.model, args.size, args.batch, args.bf16, args.checkpointing, args.steps, tuple(args.flux_blocks))
        print(json.dumps(result))
        if not args.no_record:
            record(result)
        return
    results = []
    for item in args.matrix:
        model, size = item.split(":")
        for dtype in args.dtypes:
            for checkpointing in (False, True):
                command = [sys.executable, __file__, "--model", model, "--size", size, "--batch", str(args.batch),
                           "--steps", str(args.steps), "--flux-blocks", *map(str, args.flux_blocks)]
                command += ["--bf16"] * (dtype == "bf16") + ["--checkpointing"] * checkpointing
                run = subprocess.run(command, capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{item} {dtype} checkpointing={checkpointing}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
                    continue
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"| {r['model']} | {r['size']} | {r['batch']} | {r['dtype']} | {'on' if r['checkpointing'] else 'off'} | "
                      f"{r['parameters'] / 1e6:.0f} M | {r['weights_gb']:.2f} | {r['step_extra_gb']:.2f} | {r['peak_gb']:.2f} | "
                      f"{r['seconds_per_step'] or r['first_step_s']:.1f} |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
