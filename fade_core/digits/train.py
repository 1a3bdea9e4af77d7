"""Reproduces the embedded model's weights: the evaluator, then the text-to-image model.

    python -m fade_core.digits.train            # both, then the calibration: 57 min on 2 idle cores
    python -m fade_core.digits.train --only evaluator

Both are seeded, so a run repeats itself on one machine with one thread count; across CPUs,
thread counts and torch versions the floating-point sums differ, and so do the weights (the
committed text-to-image weights were trained on one thread; a two-thread run ends elsewhere and
calibrates as well, see README). The committed evaluator was kept from v1: the v2 model changed
only the text-to-image part. The script ends by calibrating the guidance scale: for each scale,
how often the evaluator recognises the requested digit (per digit) and style (per style), on the
training captions and in held-out contexts; it writes benchmarks/calibration.json and the
README's calibration section.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..files import atomic_write, load_safetensors, save_safetensors
from ..report import markdown_table, replace_section
from ..sampling import generate
from . import data
from .evaluator import DigitStyleEvaluator, real_test_accuracy, train_evaluator
from .model import (
    DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS, EVALUATOR_FILE, MODEL_FILE, build_pipeline, load_pipeline, make_adapter, model_state_for_file,
    tokenize,
)

CFG_DROPOUT = 0.1
GENERATOR_STEPS = 4500  # the committed model's schedule


class WeightAverage:
    """The exponential moving average of the weights that the model file keeps, as
    ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` computes it (the first
    update copies, later ones lerp), but over the token table's rows that captions have reached so
    far only: every other row still holds its initial value in the model and in the average, where
    a lerp would leave it unchanged, and skipping them saves a pass over all 49,408 rows a step."""

    def __init__(self, dense: list[torch.nn.Parameter], table: torch.nn.Parameter, decay: float):
        self.dense, self.table, self.weight = dense, table, 1.0 - decay
        self.dense_average: list[torch.Tensor] = []
        self.table_average = table.detach().clone()
        self.reached = torch.zeros(table.shape[0], dtype=torch.bool)

    @torch.no_grad()
    def update(self, tokens: torch.Tensor) -> None:
        """After an optimiser step whose captions held ``tokens`` (the only rows it can move)."""
        self.reached[tokens.flatten()] = True
        rows = self.reached.nonzero().flatten()
        if not self.dense_average:
            self.dense_average = [p.detach().clone() for p in self.dense]
            self.table_average[rows] = self.table.detach()[rows]
            return
        torch._foreach_lerp_(self.dense_average, [p.detach() for p in self.dense], self.weight)
        self.table_average[rows] = self.table_average[rows].lerp_(self.table.detach()[rows], self.weight)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for parameter, average in zip(self.dense, self.dense_average):
            parameter.copy_(average)
        self.table.copy_(self.table_average)


def training_data(without: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The generator's real images, their digits and the styles they are rendered in, less the
    digits and styles named in ``without``."""
    objects = [concept for concept in without if data.concept_kind(concept) == "object"]
    images, digits = data.real_split("generator")
    dropped = torch.tensor([data.DIGIT_NAMES.index(c) for c in objects], dtype=digits.dtype)
    kept = ~torch.isin(digits, dropped)
    return images[kept], digits[kept], [style for style in data.STYLE_NAMES if style not in without]


def train_generator(steps: int, batch_size: int = 64, seed: int = 0, lr: float = 1e-3, without: tuple[str, ...] = ()):
    """The text-to-image model, trained from scratch. ``without`` names concepts (digits or styles)
    whose images and captions the training never sees: the model retrained without them, the
    reference that an erasure of those concepts is measured against (unlearning's gold standard)."""
    images, digits, styles = training_data(without)
    pipeline = build_pipeline(seed)
    unet, text_encoder, scheduler = pipeline.unet, pipeline.text_encoder, pipeline.scheduler
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).train()
    # Captions reach a few hundred of the 49,408 token rows: a sparse gradient and a lazy Adam for
    # the table update only those rows (and leave every other row exactly at its initial value,
    # which the model file relies on), where a dense update of the whole table would double the
    # time of a step.
    table = text_encoder.get_input_embeddings()
    table.sparse = True
    dense = [p for p in modules.parameters() if p is not table.weight]
    average = WeightAverage(dense, table.weight, decay=0.999)
    optimizers = [
        torch.optim.AdamW(dense, lr=lr, weight_decay=0.0, foreach=True),
        torch.optim.SparseAdam([table.weight], lr=lr),
    ]
    warmup = 200
    schedules = [
        torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / steps)).item()),
        )
        for optimizer in optimizers
    ]

    styled = {style: data.to_model_range(data.apply_style(images, style)) for style in styles}
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)

    progress = tqdm(range(steps), desc="text-to-image model")
    for step in progress:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        style_idx = torch.randint(0, len(styles), (batch_size,), generator=generator)
        x0 = torch.stack([styled[styles[s]][i] for i, s in zip(idx.tolist(), style_idx.tolist())])
        captions = [
            "" if rng.random() < CFG_DROPOUT else data.random_caption(int(digits[i]), styles[s], rng).text
            for i, s in zip(idx.tolist(), style_idx.tolist())
        ]
        tokens = tokenize(captions)
        context = text_encoder(tokens).last_hidden_state
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        target = scheduler.get_velocity(x0, noise, timesteps)
        loss = F.mse_loss(unet(x_t, timesteps, encoder_hidden_states=context).sample, target)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dense, 1.0, foreach=True)
        for optimizer, schedule in zip(optimizers, schedules):
            optimizer.step()
            schedule.step()
        average.update(tokens)
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    average.copy_to_model()
    table.sparse = False
    return pipeline.unet.eval(), pipeline.text_encoder.eval()


CALIBRATION_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.json"
GUIDANCES = (1.0, 1.5, 2.0, 3.0, 4.0)


def calibration_prompts(per_concept: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """(prompt, concept) lists: captions as the base model was trained on them (every template,
    synonym and context), and prompts in contexts the eraser never sees (the held-out contexts)."""
    rng = random.Random(seed)
    digit_captions = [data.random_caption(d, "plain", rng) for d in range(10) for _ in range(per_concept)]
    style_captions = [data.random_caption(rng.randrange(10), s, rng) for s in data.STYLE_NAMES[1:] for _ in range(per_concept)]
    concepts = list(data.DIGIT_NAMES) + list(data.STYLE_NAMES[1:])
    return {
        "captions": [(c.text, data.DIGIT_NAMES[c.digit]) for c in digit_captions]
        + [(c.text, c.style) for c in style_captions],
        "held_out_contexts": [
            (prompt, concept) for concept in concepts for prompt in data.held_out_context_prompts(concept, per_concept, seed)
        ],
    }


@torch.no_grad()
def calibrate(evaluator: DigitStyleEvaluator, guidances=GUIDANCES, per_concept: int = 100,
              num_steps: int = DEFAULT_SAMPLING_STEPS, seed: int = 1) -> dict:
    """How often the evaluator recognises the named digit (per digit) and the named style (per
    style) in the saved model's samples, at each guidance scale, for both prompt families."""
    adapter = make_adapter(load_pipeline(MODEL_FILE))
    report = {}
    for family, pairs in calibration_prompts(per_concept, seed).items():
        report[family] = {}
        for guidance in guidances:
            samples = generate(adapter, [p for p, _ in pairs], seed=seed, num_steps=num_steps, guidance=guidance)
            digit_pred, style_pred = evaluator.classify(samples)
            row: dict[str, float] = {}
            for concept in dict.fromkeys(c for _, c in pairs):
                mask = torch.tensor([c == concept for _, c in pairs])
                if data.concept_kind(concept) == "object":
                    hits = digit_pred[mask] == data.DIGIT_NAMES.index(concept)
                else:
                    hits = style_pred[mask] == data.STYLE_NAMES.index(concept)
                row[concept] = hits.float().mean().item()
            row["digit_mean"] = sum(row[d] for d in data.DIGIT_NAMES) / 10
            row["style_mean"] = sum(row[s] for s in data.STYLE_NAMES[1:]) / (len(data.STYLE_NAMES) - 1)
            report[family][str(guidance)] = row
            worst_digit = min(row[d] for d in data.DIGIT_NAMES)
            worst_style = min(row[s] for s in data.STYLE_NAMES[1:])
            print(f"{family} guidance {guidance}: digits {row['digit_mean']:.3f} (min {worst_digit:.3f}), "
                  f"styles {row['style_mean']:.3f} (min {worst_style:.3f})", flush=True)
    return report


def calibration_markdown(report: dict, evaluator_accuracy: dict[str, float]) -> str:
    """The README's calibration tables, from :func:`calibrate`'s report."""
    header = ["guidance", "digits: mean %", *[str(d) for d in range(10)], "styles: mean %", *data.STYLE_NAMES[1:]]
    titles = {
        "captions": "Captions as the base model was trained on them (every template, synonym and context)",
        "held_out_contexts": "Prompts in the held-out contexts (the eraser never sees them)",
    }
    parts = [
        f"Evaluator on the real test digits: digit {evaluator_accuracy['digit_accuracy']:.1%}, "
        f"style {evaluator_accuracy['style_accuracy']:.1%} (over all five renderings)."
    ]
    for family, rows in report.items():
        table = [
            [f"**{g}**" if float(g) == DEFAULT_GUIDANCE else g, f"{row['digit_mean']:.1%}".rstrip("%"),
             *[f"{100 * row[d]:.0f}" for d in data.DIGIT_NAMES],
             f"{row['style_mean']:.1%}".rstrip("%"), *[f"{100 * row[s]:.0f}" for s in data.STYLE_NAMES[1:]]]
            for g, row in rows.items()
        ]
        parts += ["", f"{titles[family]}:", "", markdown_table(header, table)]
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("evaluator", "generator", "calibrate"))
    parser.add_argument("--steps", type=int, default=GENERATOR_STEPS, help="text-to-image training steps")
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
        save_safetensors(model_state_for_file(unet, text_encoder), MODEL_FILE, {"steps": str(args.steps), "seed": str(args.seed)})
        print(f"generator trained in {time.time() - started:.0f} s", flush=True)
    if args.only in (None, "calibrate", "generator"):
        started = time.time()
        evaluator = DigitStyleEvaluator()
        evaluator.load_state_dict(load_safetensors(EVALUATOR_FILE))
        accuracy = real_test_accuracy(evaluator.eval())
        print(json.dumps({"evaluator_real_test": accuracy}, indent=1))
        report = calibrate(evaluator)
        atomic_write(CALIBRATION_FILE, lambda temporary: temporary.write_text(
            json.dumps({"evaluator_real_test": accuracy, "recognition": report}, indent=1) + "\n"))
        replace_section("calibration", calibration_markdown(report, accuracy))
        print(f"calibration in {time.time() - started:.0f} s; written to {CALIBRATION_FILE} and README.md", flush=True)


if __name__ == "__main__":
    main()
