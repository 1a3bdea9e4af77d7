"""The erasure benchmark on the embedded model: FADE, its ablations and the baselines, side by side.

    python -m fade_core bench --workers 2          # everything; writes BENCHMARKS.md, JSON, plot

Every method erases the same concepts of the same base model, from the same prompt sets and seeds,
and is judged by the same held-out evaluator: Acc on the prompts the eraser trained on, on prompts
it never saw (held-out templates and synonym), on prompts in held-out contexts, and under three
attacks the training never saw (:mod:`fade_core.digits.attacks`: a soft prompt optimised on real
images, the same in token space through the erased text encoder, and a greedy word search); the
other concepts' accuracy, FID-proxy, CLIP-proxy, H and H worst (Appendix B), wall time and peak
memory. A FADE method's ``family`` setting places its LoRA: ``fade@family=attention``,
``fade@family=text_encoder``, ``fade@family=cross_attention+text_encoder``.

Each (task, method) is one job in a fresh process, so that its peak memory is its own; ``workers``
jobs run at once, one thread each. A finished job's row is kept in ``benchmarks/runs/`` and reused
by a later run with the same settings, so an interrupted benchmark resumes where it stopped.
A kept row also records a fingerprint of every prompt it was made from (:func:`prompt_fingerprint`),
so that a change to the prompt sets or the judge's prompts measures the rows again instead of mixing
draws in one table; a change to a method's code does not, and needs its rows deleted.
BENCHMARKS.md is regenerated whole from the rows (plus the analysis in ``benchmarks/notes.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from .adapter import TEXT_ENCODER_FAMILY, DenoiserAdapter
from .baselines import EsdConfig, UceConfig, applied, edit_uce, erase_esd
from .bench_tasks import PLACEMENTS, REFERENCES, ROBUST_PLACEMENTS, TUNING, TUNING_TASK, method_name, method_settings, task_concepts
from .digits import attacks, data
from .digits.judge import DigitsJudge, default_prompt_set
from .digits.model import load_adapter, make_adapter, model_state_for_file, pipeline_from_state
from .digits.train import GENERATOR_STEPS, train_generator
from .errors import FadeInputError
from .fade import FadeConfig, FadeTrainer, StepReport
from .files import atomic_write
from .metrics import erasure_score
from .report import markdown_table
from .saliency import compute_saliency

# ESD's best of a sweep on digit five of the v1 model (eta 1 or 2, lr 3e-4 to 1e-3, 200 or 400
# steps): higher rates erase but break the styles, lower ones keep 30 % of the digit.
ESD_SETTINGS = {"negative_guidance": 1.0, "learning_rate": 5e-4, "steps": 200}
# The robust variant (fade_core/robust.py), the best balance of the settings tried on eight and five
# (benchmarks/notes.md): the LoRA on every module, a round of the inner attack (30 steps) every 10
# LoRA updates, the bank's anchor loss at weight 1; a batch of 24 because half of the concept
# trajectories start from the bank, so the ordinary prompts keep plain FADE's 12 per update; and
# preservation over the whole trajectory (t0_fraction 1), which kept the FID-proxy within 1.15x
# the base's where a higher lambda would also have held back the erasure under the soft prompt.
ROBUST_SETTINGS = {"robust_every": 10, "robust_anchor_weight": 1.0, "batch_size": 24, "t0_fraction": 1.0}
ROBUST_FAMILY = "all"
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


def discrete_vocabulary() -> list[str]:
    """The words the greedy search may insert: every word of the held-out contexts and of the
    templates, all of which the base model's text encoder learned."""
    texts = [*data.HELD_OUT_CONTEXTS, *data.DIGIT_TEMPLATES, *data.STYLED_TEMPLATES]
    return sorted({w.strip(",.:()-") for t in texts for w in t.replace("{d}", " ").replace("{s}", " ").split()} - {""})


def prompt_fingerprint(task: str, seed: int) -> str:
    """A short hash of every prompt a row of ``task`` is made from: the erasers' prompt set, UCE's
    preserve list, and the judge's trained, unseen, held-out-context and attack prompts and words."""
    concepts = task_concepts(task)
    prompts = [[p.concept_prompt, p.neutral_prompt] for p in default_prompt_set(concepts, seed=seed).pairs("all")]
    prompts += [preserve_prompts(concepts), discrete_vocabulary()]
    for concept in concepts:
        prompts += [[p.concept_prompt for p in default_prompt_set([concept]).pairs("all")], unseen_prompts(concept),
                    data.held_out_context_prompts(concept, 1000, seed), attacks.starting_prompts(concept)]
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def erase(method: str, concepts: list[str], seed: int,
          on_step: Callable[[DenoiserAdapter, StepReport], None] | None = None) -> tuple[DenoiserAdapter, Callable, dict]:
    """Erases the concepts with the method; returns the erased adapter, a context manager that puts
    the edit in place while it is measured, and FADE's training record for the row (the adversary
    curve; for a robust run also the held-out attack's shares and the kept state). A FADE method calls
    ``on_step(adapter, report)`` after each step, with the LoRA in place (to measure along the way)."""
    name, settings = method_name(method), method_settings(method)
    if name == "retrained":
        if set(settings) - {"steps"}:
            raise FadeInputError(f"method {method!r}: the retrained reference has one setting, steps (retrained@steps=4500)")
        unet, text_encoder = train_generator(int(settings.get("steps", GENERATOR_STEPS)), seed=seed, without=tuple(concepts))
        return make_adapter(pipeline_from_state(model_state_for_file(unet, text_encoder))), contextlib.nullcontext, {}
    adapter = load_adapter()
    prompt_set = default_prompt_set(concepts, seed=seed)
    if name == "uce":
        deltas = edit_uce(adapter, prompt_set, preserve_prompts(concepts), config=UceConfig(**settings)).deltas
        return adapter, lambda: applied(adapter, deltas), {}
    default_family = {"fade-no-saliency": "all", "fade-robust": ROBUST_FAMILY}.get(name, "cross_attention")
    modules = lora_modules(adapter, prompt_set, str(settings.pop("family", default_family)), seed)
    if name == "esd":
        erase_esd(adapter, prompt_set, modules, EsdConfig(**(ESD_SETTINGS | settings | {"seed": seed})))
        return adapter, contextlib.nullcontext, {}
    config = FadeConfig(seed=seed, **(ROBUST_SETTINGS if name == "fade-robust" else {}))
    if name == "fade-no-adversary":
        config.removal = "l2"
    if name == "fade-no-preservation":
        config.preservation_weight = 0.0
    for key, value in settings.items():
        if not hasattr(config, key):
            raise FadeInputError(f"method {method!r}: FADE has no setting {key!r}; use a FadeConfig field such as steps")
        setattr(config, key, value)
    config.check()
    callback = None if on_step is None else lambda report: on_step(adapter, report)
    result = FadeTrainer(adapter, prompt_set, modules, config, callback=callback).run()
    record = {"adversary_curve": [(r.step, r.validation_accuracy) for r in result.history if r.validation_accuracy is not None]}
    if result.held_out_attack is not None:
        record |= {"kept_step": result.kept_step,
                   "held_out_curve": [(r.step, r.held_out_attack) for r in result.history if r.held_out_attack is not None],
                   "neutral_drift_curve": [(r.step, r.neutral_drift) for r in result.history if r.neutral_drift is not None]}
        prompt_shares = [(r.step, r.prompt_share) for r in result.history if r.prompt_share is not None]
        if prompt_shares:  # robust_check_on counts the prompts
            record["prompt_share_curve"] = prompt_shares
    return adapter, contextlib.nullcontext, record


def lora_modules(adapter: DenoiserAdapter, prompt_set, families: str, seed: int) -> list[str]:
    """The modules an erasure may change: every salient one of each family (``+`` joins families,
    as in ``fade@family=cross_attention+text_encoder``). The saliency ranks denoiser layers only;
    of the text encoder every linear layer is taken."""
    modules = []
    for family in families.split("+"):
        if family == TEXT_ENCODER_FAMILY:
            modules += list(adapter.lora_candidates(family))
        else:
            modules += compute_saliency(adapter, prompt_set, mass_fraction=1.0, family=family, seed=seed).selected
    return modules


def attack_row(adapter: DenoiserAdapter, concepts: list[str], *, steps: int, images: int, seed: int) -> dict:
    """The attacks the training never saw, per concept and their mean over the concepts."""
    embedding = [attacks.embedding_attack_accuracy(adapter, c, steps=steps, images=images, seed=seed) for c in concepts]
    inversion = [attacks.embedding_attack_accuracy(adapter, c, steps=steps, images=images, seed=seed, space="tokens") for c in concepts]
    vocabulary = discrete_vocabulary()
    discrete = [
        attacks.discrete_attack_accuracy(adapter, c, attacks.starting_prompts(c)[0], vocabulary,
                                         protected=data.concept_names(c), images=images, seed=seed)
        for c in concepts
    ]
    return {
        "acc_embedding": sum(o.acc for o in embedding) / len(concepts),
        "acc_inversion": sum(o.acc for o in inversion) / len(concepts),
        "acc_discrete": sum(o.acc for o in discrete) / len(concepts),
        "attacks": {o.concept: {"embedding": o.acc, "embedding_worst_start": o.detail["worst_start"],
                                "inversion": i.acc, "inversion_worst_start": i.detail["worst_start"],
                                "discrete": d.acc, "discrete_prompt": d.detail["prompt"]}
                    for o, i, d in zip(embedding, inversion, discrete)},
    }


def run_job(task: str, method: str, images: int, attack_steps: int, seed: int) -> dict:
    """One row: the base model (``method`` "base") or one erasure, measured. Runs in its own process."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    concepts = task_concepts(task)
    judge = DigitsJudge(concept_images=images, other_images=max(images, 30), seed=seed)
    with PeakMemory() as memory:
        started = time.perf_counter()
        if method == "base":
            adapter, context, training = load_adapter(), contextlib.nullcontext, {}
        else:
            adapter, context, training = erase(method, concepts, seed)
        seconds = time.perf_counter() - started
    with context():
        trained = judge.measure(adapter, concepts)
        unseen = {c: judge.concept_accuracy(adapter, c, unseen_prompts(c)) for c in concepts}
        context_acc = {c: judge.context_accuracy(adapter, c) for c in concepts}
        row = {
            "acc_trained": trained.acc_concept,
            "acc_unseen": sum(unseen.values()) / len(concepts),
            "acc_context": sum(context_acc.values()) / len(concepts),
            "acc_other": trained.acc_other,
            "fid_proxy": trained.fid_proxy,
            "clip_proxy": trained.clip_proxy,
            # where several concepts are erased together, which of them the means hide
            "concepts": {c: {"trained": trained.per_concept[c], "unseen": unseen[c], "context": context_acc[c]} for c in concepts},
        }
        if method != "base":
            row |= {"seconds": seconds, "peak_mb": memory.megabytes} | training
            if attack_steps:
                row |= attack_row(adapter, concepts, steps=attack_steps, images=images, seed=seed)
    return row


ACC_KEYS = ("acc_trained", "acc_unseen", "acc_context", "acc_embedding", "acc_inversion", "acc_discrete")


def with_scores(row: dict, base: dict) -> dict:
    """H (Appendix B) on the trained prompts, and H worst: H with the largest concept Acc measured."""
    worst = max(row[key] for key in ACC_KEYS if key in row)
    score = lambda acc: erasure_score(acc, row["fid_proxy"], row["clip_proxy"], base["fid_proxy"], base["clip_proxy"])  # noqa: E731
    return row | {"acc_worst": worst, "H": score(row["acc_trained"]), "H_worst": score(worst)}


def jobs_for(tasks, methods, tuning: bool) -> list[tuple[str, str]]:
    jobs = [(task, "base") for task in tasks]
    jobs += [(task, method) for task in tasks for method in methods]
    if tuning and TUNING_TASK in tasks:
        jobs += [(TUNING_TASK, variant) for variant in (*TUNING, *PLACEMENTS, *ROBUST_PLACEMENTS, *REFERENCES)
                 if (TUNING_TASK, variant) not in jobs]
    return jobs


def run(tasks, methods, *, images: int = 200, attack_steps: int = 300, seed: int = 0, workers: int = 1,
        tuning: bool = True, runs_dir: Path | None = None, log=print) -> dict:
    """Runs every job (reusing finished rows from ``runs_dir``) and returns the results."""
    settings = {"images": images, "attack_steps": attack_steps, "seed": seed}
    jobs = jobs_for(tasks, methods, tuning)
    rows: dict[tuple[str, str], dict] = {}
    pending = []
    job_settings = {task: settings | {"prompts": prompt_fingerprint(task, seed)} for task in tasks}
    for job in jobs:
        saved = saved_row(runs_dir, job, job_settings[job[0]])
        if saved is not None:
            rows[job] = saved
            log(f"{job[0]:16s} {job[1]:26s} reused from {runs_dir}")
        else:
            pending.append(job)
    # The longest jobs first, so that the workers finish together.
    pending.sort(key=lambda job: (job[1] == "base", "fade" not in job[1]))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_job, task, method, images, attack_steps, seed): (task, method) for task, method in pending}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            rows[job] = future.result()
            save_row(runs_dir, job, job_settings[job[0]], rows[job])
            log(f"[{done}/{len(pending)}] {job[0]:16s} {job[1]:26s} " + " ".join(
                f"{k} {v:.3f}" for k, v in rows[job].items() if isinstance(v, float)))
    results = {"tasks": {}, "settings": settings | {"workers": workers}}
    for task in tasks:
        base = rows[(task, "base")]
        results["tasks"][task] = {"base": base} | {
            method: with_scores(rows[(t, method)], base) for t, method in jobs if t == task and method != "base"}
    return results


def _row_path(runs_dir: Path, job: tuple[str, ...]) -> Path:
    return runs_dir / ("__".join(part.replace("@", "_at_").replace("=", "-").replace(",", "_") for part in job) + ".json")


def saved_row(runs_dir: Path | None, job: tuple[str, ...], settings: dict) -> dict | None:
    """The row kept for ``job`` (its name parts, such as (task, method)) if it was measured with
    ``settings``; None otherwise."""
    if runs_dir is None or not _row_path(runs_dir, job).is_file():
        return None
    saved = json.loads(_row_path(runs_dir, job).read_text())
    return saved["row"] if saved.get("settings") == settings else None


def save_row(runs_dir: Path | None, job: tuple[str, ...], settings: dict, row: dict) -> None:
    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(_row_path(runs_dir, job), lambda t: t.write_text(json.dumps({"settings": settings, "row": row}) + "\n"))


COLUMNS = (
    ("acc_trained", "Acc trained %", 100), ("acc_unseen", "Acc unseen %", 100), ("acc_context", "Acc context %", 100),
    ("acc_embedding", "Acc embedding attack %", 100), ("acc_inversion", "Acc inversion attack %", 100),
    ("acc_discrete", "Acc word search %", 100),
    ("acc_other", "other concepts %", 100), ("fid_proxy", "FID-proxy", 1), ("clip_proxy", "CLIP-proxy %", 100),
    ("H", "H", 1), ("H_worst", "H worst", 1), ("seconds", "wall s", 1), ("peak_mb", "peak MB", 1),
)


def markdown(results: dict, command: str, notes: str = "") -> str:
    settings = results["settings"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `fade_core/bench.py`; do not edit by hand (the analysis comes from `benchmarks/notes.md`). Regenerate with:",
        "",
        f"    {command}",
        "",
        f"The embedded digits model v2, 2 CPU cores, {settings['workers']} job(s) at a time, one thread each; "
        f"{settings['images']} generations per concept and measurement, seed {settings['seed']}.",
        "",
        "- **Acc trained**: the eraser's own concept prompts. **Acc unseen**: held-out templates and the held-out synonym.",
        "  **Acc context**: concept prompts in contexts the eraser never saw (the held-out 40 % of the context phrases).",
        f"- **Acc embedding attack**: a soft prompt (the text states that cross-attention reads, all 24 positions free) optimised",
        f"  for {settings['attack_steps']} steps on real images of the concept, from three starting prompts; the worst start for the",
        "  erasure is reported, on fresh seeds. **Acc inversion attack**: the same search in token space, moving only the input",
        "  embeddings of the starting prompt's words, read through the erased model's text encoder (a textual-inversion",
        "  embedding, what ComfyUI's `embedding:` syntax loads); blank where a row was measured before it existed. **Acc word search**: a greedy",
        "  search over words the base model knows (held-out contexts, templates) that maximises the evaluator's probability",
        "  of the concept, reported on seeds the search never used. No training uses these attacks (fade-robust's inner attack",
        "  is its own: shorter, on the base model's samples, never on real images). Where several concepts are erased",
        "  together, every Acc is the mean over the concepts (bench.json has each concept's figures: `attacks` in each",
        "  erasure's row, `concepts` for the prompts in rows measured from 2026-12-06 on).",
        "- **H**: Appendix B with Acc trained, against the base model's FID- and CLIP-proxy. **H worst**: the same with the",
        "  largest Acc of the row.",
        "- **wall s** and **peak MB** (resident memory above the job's start, in its own process) cover the erasure itself.",
        "- **Where the LoRA goes**: `fade` puts it on the cross-attention K/V layers the saliency picks, `fade-no-saliency` on",
        "  every layer of the denoiser, `fade-robust` (context space) on every layer of the denoiser.",
    ]
    # The paragraphs on the tuning, placement and reference rows only where the run measured them.
    measured = {method for rows in results["tasks"].values() for method in rows}
    if measured & set(TUNING):
        lines += [
            f"- **Tuning budget**: every method has its chosen settings and one alternative, both measured on {TUNING_TASK} in this",
            "  run (the rows with `@`); the plain name is the chosen one. FADE's and ESD's alternatives change the number of",
            "  steps, UCE's the preservation weight; fade-robust's is its previous default (rounds of 10 attack steps instead of",
            "  30, a batch of 12 instead of 24, preservation over the early half of the trajectory instead of all of it).",
        ]
    if measured & set(PLACEMENTS + ROBUST_PLACEMENTS):
        lines += [
            f"- **Placements**: the `fade@family=` rows on {TUNING_TASK} put FADE's LoRA on every attention layer, on the text",
            "  encoder, or on both the K/V layers and the text encoder; the `robust_space=tokens` rows search word embeddings",
            "  read by the text encoder being trained, with the LoRA on the text encoder alone (the AdvUnlearn-style baseline)",
            "  or on every layer and the text encoder (both measured with an earlier default, which their names spell out: the",
            "  previous rounds, batch and preservation window, the anchor pulled to the base model's prediction for a neutral",
            "  prompt, the bank at lr 0.01). `fade-robust@robust_space=context+tokens` is today's default with half its bank",
            "  grown as word embeddings, read by the (frozen) text encoder: the soft prompt's and the inversion's kinds both.",
        ]
    if measured & set(REFERENCES):
        lines += [
            "- **retrained**: the reference, not an eraser: the base model's training recipe (steps, seed, one thread) from",
            "  scratch without the concept's images and captions; its wall s is that training. What an attack brings back",
            "  from it, a model that never learned the concept, is what that attack composes from other concepts, not a",
            "  remnant an erasure left.",
        ]
    lines.append("")
    for task, rows in results["tasks"].items():
        lines += [f"## {task.replace('+', ' + ')}", "", "| method | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "| --- " * (len(COLUMNS) + 1) + "|"]
        for method, row in rows.items():
            cells = [f"{row[key] * scale:.1f}" if key in row and not key.startswith("H") else (f"{row[key]:.3f}" if key in row else "")
                     for key, _, scale in COLUMNS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if notes.strip():
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def robustness_table(results: dict, command: str) -> str:
    """README's "How robust is the erasure": every method on the tuning task, under every attack."""
    rows = results["tasks"].get(TUNING_TASK, {})
    keys = ("acc_trained", "acc_unseen", "acc_context", "acc_embedding", "acc_inversion", "acc_discrete", "acc_worst")
    header = ["method", "Acc trained %", "unseen %", "context %", "embedding attack %", "inversion attack %", "word search %", "worst %",
              "other concepts %", "FID-proxy", "H worst", "wall s"]
    table = []
    for method, row in rows.items():
        cells = [f"{100 * row[k]:.1f}" if k in row else "" for k in keys]
        cells += [f"{100 * row['acc_other']:.1f}", f"{row['fid_proxy']:.1f}",
                  f"{row['H_worst']:.3f}" if "H_worst" in row else "", f"{row['seconds']:.0f}" if "seconds" in row else ""]
        table.append([method, *cells])
    return f"Written by `{command}` (the {TUNING_TASK} task of BENCHMARKS.md).\n\n" + markdown_table(header, table)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5))
    methods = sorted({m for rows in results["tasks"].values() for m in rows if m != "base"})
    # H on ordinary prompts beside H under the worst attack: the two differ most for the erasures that do not hold.
    for axes, key, label in ((left, "H", "H (Appendix B)"), (middle, "H_worst", "H worst (H with the worst attack's Acc)")):
        for i, method in enumerate(methods):  # a colour and a marker each: more methods than one colour cycle
            points = [(rows[method]["seconds"], rows[method][key]) for rows in results["tasks"].values() if method in rows]
            axes.scatter([p[0] for p in points], [p[1] for p in points], label=method,
                         color=plt.get_cmap("tab20")(i % 20), marker="o^sDvP*X<>hp"[i % 12])
        axes.set_xscale("log")
        axes.set_xlabel("wall time of the erasure (s, 2 CPU cores)")
        axes.set_ylabel(label)
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
    # Below the plots, the image grown to hold it: method names with settings are too long to sit on a plot.
    figure.legend(*left.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False)
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)


def write_outputs(results: dict, json_path: Path, plot_path: Path, markdown_path: Path, command: str, notes: str = "") -> None:
    atomic_write(json_path, lambda temporary: temporary.write_text(json.dumps(results, indent=1) + "\n"))
    plot(results, plot_path)
    atomic_write(markdown_path, lambda temporary: temporary.write_text(markdown(results, command, notes) + "\n"))
