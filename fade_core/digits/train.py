"""Reproduces the embedded model's weights: the evaluator, then the text-to-image model.

    python -m fade_core.digits.train            # both, about 25 minutes on 2 CPU cores
    python -m fade_core.digits.train --only evaluator

Both are seeded; on the same CPU and torch version the files come out identical. The script
ends by calibrating the guidance scale: it prints, for each scale, how often the evaluator
recognises the requested digit (per digit) and the requested style (per style).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..files import save_safetensors
from ..sampling import generate
from . import data
from .evaluator import DigitStyleEvaluator, real_test_accuracy, train_evaluator
from .model import DEFAULT_SAMPLING_STEPS, EVALUATOR_FILE, MODEL_FILE, build_pipeline, load_pipeline, make_adapter, tokenize

CFG_DROPOUT = 0.1


def train_generator(steps: int, batch_size: int = 128, seed: int = 0, lr: float = 1e-3):
    pipeline = build_pipeline(seed)
    unet, text_encoder, scheduler = pipeline.unet, pipeline.text_encoder, pipeline.scheduler
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).train()
    ema = torch.optim.swa_utils.AveragedModel(
        modules, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999)
    )
    optimizer = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=0.0)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / steps)).item()),
    )

    images, digits = data.real_split("generator")
    styled = {style: data.to_model_range(data.apply_style(images, style)) for style in data.STYLE_NAMES}
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    token_cache: dict[str, torch.Tensor] = {}

    def ids_for(captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in token_cache]
        if missing:
            token_cache.update(zip(missing, tokenize(missing)))
        return torch.stack([token_cache[c] for c in captions])

    progress = tqdm(range(steps), desc="text-to-image model")
    for step in progress:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        style_idx = torch.randint(0, len(data.STYLE_NAMES), (batch_size,), generator=generator)
        x0 = torch.stack([styled[data.STYLE_NAMES[s]][i] for i, s in zip(idx.tolist(), style_idx.tolist())])
        captions = [
            "" if rng.random() < CFG_DROPOUT else data.random_caption(int(digits[i]), data.STYLE_NAMES[s], rng).text
            for i, s in zip(idx.tolist(), style_idx.tolist())
        ]
        context = text_encoder(ids_for(captions)).last_hidden_state
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        target = scheduler.get_velocity(x0, noise, timesteps)
        loss = F.mse_loss(unet(x_t, timesteps, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update_parameters(modules)
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    modules.load_state_dict(ema.module.state_dict())
    return pipeline.unet.eval(), pipeline.text_encoder.eval()


@torch.no_grad()
def calibrate(evaluator: DigitStyleEvaluator, guidances, per_concept: int = 100, num_steps: int = DEFAULT_SAMPLING_STEPS, seed: int = 1):
    """Per-digit and per-style recognition rates of the saved model at each guidance scale."""
    adapter = make_adapter(load_pipeline(MODEL_FILE))
    rng = random.Random(seed)
    digit_prompts = [data.random_caption(d, "plain", rng) for d in range(10) for _ in range(per_concept)]
    style_prompts = [
        data.random_caption(rng.randrange(10), s, rng) for s in data.STYLE_NAMES[1:] for _ in range(per_concept)
    ]
    captions = digit_prompts + style_prompts
    report = {}
    for guidance in guidances:
        samples = generate(adapter, [c.text for c in captions], seed=seed, num_steps=num_steps, guidance=guidance)
        digit_pred, style_pred = evaluator.classify(samples)
        digit_ok = digit_pred == torch.tensor([c.digit for c in captions])
        style_ok = style_pred == torch.tensor([data.STYLE_NAMES.index(c.style) for c in captions])
        row = {}
        for d in range(10):
            row[f"digit/{data.DIGIT_NAMES[d]}"] = digit_ok[d * per_concept : (d + 1) * per_concept].float().mean().item()
        offset = 10 * per_concept
        for k, style in enumerate(data.STYLE_NAMES[1:]):
            part = slice(offset + k * per_concept, offset + (k + 1) * per_concept)
            row[f"style/{style}"] = style_ok[part].float().mean().item()
        row["digit_mean"] = digit_ok[:offset].float().mean().item()
        row["style_mean"] = style_ok[offset:].float().mean().item()
        report[str(guidance)] = row
        print(f"guidance {guidance}: digits {row['digit_mean']:.3f} (min {min(v for k, v in row.items() if k.startswith('digit/')):.3f}), "
              f"styles {row['style_mean']:.3f} (min {min(v for k, v in row.items() if k.startswith('style/')):.3f})")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("evaluator", "generator", "calibrate"))
    parser.add_argument("--steps", type=int, default=4000, help="text-to-image training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.only in (None, "evaluator"):
        started = time.time()
        evaluator = train_evaluator(seed=args.seed)
        save_safetensors(evaluator.state_dict(), EVALUATOR_FILE, {"split_seed": str(data.SPLIT_SEED)})
        print(json.dumps({"evaluator_real_test": real_test_accuracy(evaluator), "seconds": round(time.time() - started)}, indent=1))
    if args.only in (None, "generator"):
        started = time.time()
        unet, text_encoder = train_generator(args.steps, seed=args.seed)
        state = {f"unet.{k}": v.half() for k, v in unet.state_dict().items()}
        state |= {f"text_encoder.{k}": v.half() for k, v in text_encoder.state_dict().items()}
        save_safetensors(state, MODEL_FILE, {"steps": str(args.steps), "seed": str(args.seed)})
        print(f"generator trained in {time.time() - started:.0f} s")
    if args.only in (None, "calibrate", "generator"):
        evaluator = DigitStyleEvaluator()
        evaluator.load_state_dict(load_file_strict(EVALUATOR_FILE))
        print(json.dumps({"evaluator_real_test": real_test_accuracy(evaluator.eval())}, indent=1))
        report = calibrate(evaluator, (1.0, 1.5, 2.0, 3.0, 4.0))
        print(json.dumps(report, indent=1))


def load_file_strict(path):
    from ..files import load_safetensors

    return load_safetensors(path)


if __name__ == "__main__":
    main()
