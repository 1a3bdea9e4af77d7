"""The erasure benchmark on the embedded model: FADE, its ablations and the baselines, side by side.

    python -m fade_core bench                      # everything; writes BENCHMARKS.md, JSON, plot

Every method erases the same concepts of the same base model, from the same prompt sets and seeds,
and is judged by the same held-out evaluator: Acc on the prompts the eraser trained on, Acc on
prompts it never saw (held-out templates and the held-out synonym), the other concepts'
accuracy, FID-proxy, CLIP-proxy, H (Appendix B), wall time and peak memory, and Acc under an
embedding attack. BENCHMARKS.md is regenerated whole from the results.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter import Conditioning, DenoiserAdapter
from .attack import embedding_attack
from .baselines import EsdConfig, UceConfig, applied, erase_esd, edit_uce
from .bench_tasks import ABLATIONS_ON, task_concepts
from .digits import data
from .digits.judge import DigitsJudge, default_prompt_set
from .digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS, load_adapter
from .fade import FadeConfig, FadeTrainer
from .files import atomic_write
from .metrics import erasure_score
from .saliency import compute_saliency
from .sampling import initial_noise, sample

# ESD's best of a sweep on digit five (eta 1 or 2, lr 3e-4 to 1e-3, 200 or 400 steps): higher rates
# erase but break the styles, lower ones keep 30 % of the digit.
ESD_SETTINGS = {"negative_guidance": 1.0, "learning_rate": 5e-4, "steps": 200}


@dataclass
class Erased:
    """An erased model for the duration of its measurement."""

    adapter: DenoiserAdapter
    context: Callable  # a context manager that puts the edit in place (UCE) or nothing (LoRA)
    seconds: float
    peak_mb: float
    curve: list[tuple[int, float]]  # FADE: (step, adversary validation accuracy)


class PeakMemory:
    """Peak resident memory above the starting level while the block runs (Linux /proc)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 2**20

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.05)

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


def unseen_prompts(concept: str) -> list[str]:
    """Prompts the eraser never saw: held-out templates with every name of the concept, the
    held-out synonym included."""
    names = [concept, *data.eraser_synonyms(concept), *data.held_out_synonyms(concept)]
    if data.concept_kind(concept) == "object":
        plain = [t.format(d=n) for t in data.HELD_OUT_DIGIT_TEMPLATES for n in names]
        styled = [t.format(s=s, d=n) for t in data.HELD_OUT_STYLED_TEMPLATES for n in names for s in data.STYLE_NAMES[1:]]
        return plain + styled
    digits = [words[0] for words in data.DIGIT_SYNONYMS.values()]
    return [t.format(s=n, d=d) for t in data.HELD_OUT_STYLED_TEMPLATES for n in names for d in digits]


def preserve_prompts(concepts: list[str], per_concept: int = 12) -> list[str]:
    """UCE's preserve list: prompts of the concepts of the same kind that are not erased."""
    kind = data.concept_kind(concepts[0])
    others = [c for c in (data.DIGIT_NAMES if kind == "object" else data.STYLE_NAMES[1:]) if c not in concepts]
    return [p.concept_prompt for c in others for p in default_prompt_set([c], num_prompts=per_concept).pairs("all")]


def run_method(method: str, concepts: list[str], seed: int) -> Erased:
    adapter = load_adapter()
    prompt_set = default_prompt_set(concepts, seed=seed)
    curve: list[tuple[int, float]] = []
    with PeakMemory() as memory:
        started = time.perf_counter()
        if method == "uce":
            deltas = edit_uce(adapter, prompt_set, preserve_prompts(concepts), config=UceConfig()).deltas
            context = lambda: applied(adapter, deltas)  # noqa: E731
        else:
            family = "all" if method == "fade-no-saliency" else "cross_attention"
            modules = compute_saliency(adapter, prompt_set, mass_fraction=1.0, family=family, seed=seed).selected
            if method == "esd":
                erase_esd(adapter, prompt_set, modules, EsdConfig(**ESD_SETTINGS, seed=seed))
            else:
                config = FadeConfig(seed=seed)
                if method == "fade-no-adversary":
                    config.removal = "l2"
                if method == "fade-no-preservation":
                    config.preservation_weight = 0.0
                result = FadeTrainer(adapter, prompt_set, modules, config).run()
                curve = [(r.step, r.validation_accuracy) for r in result.history if r.validation_accuracy is not None]
            context = contextlib.nullcontext
        seconds = time.perf_counter() - started
    return Erased(adapter, context, seconds, memory.megabytes, curve)


@torch.no_grad()
def attacked_accuracy(judge: DigitsJudge, adapter: DenoiserAdapter, concept: str, cond: Conditioning, images: int) -> float:
    noise = initial_noise(adapter, images, torch.Generator().manual_seed(judge.seed + 11))
    batch = Conditioning({k: v.expand(images, *v.shape[1:]) for k, v in cond.tensors.items()})
    samples = sample(adapter, batch, noise, num_steps=DEFAULT_SAMPLING_STEPS, guidance=DEFAULT_GUIDANCE)
    digit_pred, _ = judge.evaluator.classify(samples)
    return (digit_pred == data.DIGIT_NAMES.index(concept)).float().mean().item()


def real_concept_samples(concept: str) -> torch.Tensor:
    images, digits = data.real_split("generator")
    chosen = images[digits == data.DIGIT_NAMES.index(concept)]
    return data.to_model_range(data.apply_style(chosen, "plain"))


def unseen_accuracy(judge: DigitsJudge, adapter: DenoiserAdapter, concepts: list[str]) -> float:
    """Mean Acc over the concepts on prompts the eraser never saw: held-out templates and synonym."""
    return sum(judge.concept_accuracy(adapter, c, unseen_prompts(c)) for c in concepts) / len(concepts)


def context_accuracy(judge: DigitsJudge, adapter: DenoiserAdapter, concepts: list[str]) -> float:
    """Mean Acc over the concepts on prompts in contexts the eraser never saw."""
    return sum(judge.context_accuracy(adapter, c) for c in concepts) / len(concepts)


ACC_KEYS = ("acc_trained", "acc_unseen", "acc_context", "acc_attack")


def worst_h(row: dict, base) -> float:
    """H with Acc = the largest of the concept accuracies measured (trained, unseen, context, attacked)."""
    worst = max(row[key] for key in ACC_KEYS if key in row)
    return erasure_score(worst, row["fid_proxy"], row["clip_proxy"], base.fid_proxy, base.clip_proxy)


def measure(judge: DigitsJudge, erased: Erased, concepts: list[str], base, attack_steps: int) -> dict:
    with erased.context():
        trained = judge.measure(erased.adapter, concepts)
        row = {
            "acc_trained": trained.acc_concept,
            "acc_unseen": unseen_accuracy(judge, erased.adapter, concepts),
            "acc_context": context_accuracy(judge, erased.adapter, concepts),
            "acc_other": trained.acc_other,
            "fid_proxy": trained.fid_proxy,
            "clip_proxy": trained.clip_proxy,
            "H": erasure_score(trained.acc_concept, trained.fid_proxy, trained.clip_proxy, base.fid_proxy, base.clip_proxy),
            "seconds": erased.seconds,
            "peak_mb": erased.peak_mb,
            "adversary_curve": erased.curve,
        }
        if attack_steps and all(data.concept_kind(c) == "object" for c in concepts):
            accs = []
            for concept in concepts:
                with torch.enable_grad():
                    cond = embedding_attack(erased.adapter, f"a handwritten {concept}", real_concept_samples(concept),
                                            steps=attack_steps, seed=judge.seed)
                accs.append(attacked_accuracy(judge, erased.adapter, concept, cond, judge.concept_images))
            row["acc_attack"] = sum(accs) / len(accs)
        row["H_worst"] = worst_h(row, base)
    return row


def run(tasks, methods, *, images: int = 200, attack_steps: int = 100, seed: int = 0, log=print) -> dict:
    judge = DigitsJudge(concept_images=images, other_images=max(images, 30), seed=seed)
    results = {"tasks": {}, "settings": {"images": images, "attack_steps": attack_steps, "seed": seed}}
    for task in tasks:
        concepts = task_concepts(task)
        base_adapter = load_adapter()
        base = judge.measure(base_adapter, concepts)
        base_row = {
            "acc_trained": base.acc_concept,
            "acc_unseen": unseen_accuracy(judge, base_adapter, concepts),
            "acc_context": context_accuracy(judge, base_adapter, concepts),
            "acc_other": base.acc_other, "fid_proxy": base.fid_proxy, "clip_proxy": base.clip_proxy,
        }
        rows = {"base": base_row}
        for method in methods:
            if method.startswith("fade-no-") and task not in ABLATIONS_ON:
                continue
            erased = run_method(method, concepts, seed)
            rows[method] = measure(judge, erased, concepts, base, attack_steps)
            log(f"{task:16s} {method:22s} " + " ".join(
                f"{k} {v:.3f}" for k, v in rows[method].items() if isinstance(v, float)))
        results["tasks"][task] = rows
    return results


COLUMNS = (
    ("acc_trained", "Acc trained %", 100), ("acc_unseen", "Acc unseen %", 100), ("acc_context", "Acc context %", 100),
    ("acc_attack", "Acc attacked %", 100), ("acc_other", "other concepts %", 100), ("fid_proxy", "FID-proxy", 1),
    ("clip_proxy", "CLIP-proxy %", 100), ("H", "H", 1), ("H_worst", "H worst", 1), ("seconds", "wall s", 1),
    ("peak_mb", "peak MB", 1),
)


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `fade_core/bench.py`; do not edit by hand. Regenerate with:",
        "",
        f"    {command}",
        "",
        "The embedded digits model, 2 CPU cores. Acc trained: the eraser's own concept prompts. Acc unseen: held-out",
        "templates and the held-out synonym. Acc attacked: generations from a soft prompt optimised on real images of",
        "the concept against the erased model (digits only). H: Appendix B, against the base model's FID- and",
        "CLIP-proxy. Wall time and peak memory (resident, above the start) cover the erasure itself.",
        "",
    ]
    for task, rows in results["tasks"].items():
        lines += [f"## {task.replace('+', ' + ')}", "", "| method | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "| --- " * (len(COLUMNS) + 1) + "|"]
        for method, row in rows.items():
            cells = [f"{row[key] * scale:.1f}" if key in row and not key.startswith("H") else (f"{row[key]:.3f}" if key in row else "")
                     for key, _, scale in COLUMNS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = sorted({m for rows in results["tasks"].values() for m in rows if m != "base"})
    for method in methods:
        points = [(rows[method]["seconds"], rows[method]["H"]) for rows in results["tasks"].values() if method in rows]
        left.scatter([p[0] for p in points], [p[1] for p in points], label=method)
    left.set_xscale("log")
    left.set_xlabel("wall time of the erasure (s, 2 CPU cores)")
    left.set_ylabel("H (Appendix B)")
    left.legend(fontsize=8)
    for task, rows in results["tasks"].items():
        curve = rows.get("fade", {}).get("adversary_curve") or []
        if curve:
            right.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=task)
    right.axhline(0.5, linestyle="--", color="gray")
    right.set_xlabel("step")
    right.set_ylabel("FADE adversary accuracy on validation pairs")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
    plt.close(figure)


def write_outputs(results: dict, json_path: Path, plot_path: Path, markdown_path: Path, command: str) -> None:
    atomic_write(json_path, lambda temporary: temporary.write_text(json.dumps(results, indent=1) + "\n"))
    plot(results, plot_path)
    atomic_write(markdown_path, lambda temporary: temporary.write_text(markdown(results, command) + "\n"))
