"""How the erasure under attack moves while a robust run trains: one erasure, measured at checkpoints.

    python benchmarks/robust_curve.py --task five --method fade-robust --train-seed 2

At each checkpoint (LoRA updates; ``--checkpoints validations``: every state the run validates, the
states its keep rule chooses from) the erased model as it is then is measured as the benchmark
measures it (trained, unseen and held-out-context Acc, other concepts, FID-proxy; 100 images, judge
seed 0) and, unless ``--no-attacks``, attacked twice
with the soft-prompt (embedding) attack, 300 steps from the concept's three starting prompts
(attack seed 0): once on real images of the concept, as the benchmark attacks, and once on the
base model's own samples of it (what a user of the base model has, and what the inner attack
targets; 66 samples, 22 from each starting prompt, made before the LoRA moves). The run itself is the
benchmark's (``bench.erase``): measuring draws no random numbers of the training's, so the last
checkpoint is the benchmark's row for that seed. Per step it records D's batch accuracy, D's
validation accuracy, the inner attack's loss and, where the run validates, its held-out attack's share
and the neutral drift: the signals a stopping or keep rule could use. ``--states DIR`` also saves the
LoRA of every checkpoint (safetensors); benchmarks/robust_state_row.py measures a chosen one as a
benchmark row.

Results go to benchmarks/robust_curve_<task>.json (other methods and seeds measured before are kept)
and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core.bench_tasks import METHODS, method_name, task_concepts  # noqa: E402
from fade_core.files import update_json  # noqa: E402
from fade_core.report import markdown_table  # noqa: E402

CHECKPOINTS = "50,100,150,200,250,300,400,500,600"
BASE_SAMPLES_PER_PROMPT = 22  # x 3 starting prompts


def measure(task: str, method: str, train_seed: int, checkpoints: set[int] | None, images: int, attack_steps: int,
            with_attacks: bool, states: Path | None) -> dict:
    """``checkpoints`` None: every state the run validates."""
    import torch

    from fade_core import bench
    from fade_core.digits import attacks
    from fade_core.digits.judge import DigitsJudge
    from fade_core.digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS
    from fade_core.files import save_safetensors
    from fade_core.lora import lora_state
    from fade_core.sampling import generate

    torch.set_num_threads(1)
    torch.manual_seed(train_seed)
    concepts = task_concepts(task)
    judge = DigitsJudge(concept_images=images, other_images=max(images, 30), seed=0)
    steps, checks, base_samples = [], [], {}
    measuring = 0.0

    def on_step(adapter, report):
        nonlocal measuring
        if not base_samples:  # the first step: the LoRA has not moved yet
            for c in concepts:
                prompts = [p for p in attacks.starting_prompts(c) for _ in range(BASE_SAMPLES_PER_PROMPT)]
                base_samples[c] = generate(adapter, prompts, seed=1000 + train_seed, num_steps=DEFAULT_SAMPLING_STEPS,
                                           guidance=DEFAULT_GUIDANCE)
        if report.phase != "train":
            return
        update = len(steps) + 1
        steps.append({"update": update, "adversary_accuracy": report.adversary_accuracy,
                      "validation_accuracy": report.validation_accuracy, "attack_loss": report.attack_loss,
                      "held_out_attack": report.held_out_attack, "neutral_drift": report.neutral_drift,
                      "prompt_share": report.prompt_share})
        measured = report.validation_accuracy is not None if checkpoints is None else update in checkpoints
        if not measured:
            return
        started = time.perf_counter()
        if states is not None:
            name = f"{task}_{method}_seed{train_seed}_{update}".replace("/", "_")  # a setting's value cannot leave the folder
            save_safetensors(lora_state(adapter), states / f"{name}.safetensors")
        scores = judge.measure(adapter, concepts)
        check = {"update": update, "acc_trained": scores.acc_concept,
                 "acc_unseen": sum(judge.concept_accuracy(adapter, c, bench.unseen_prompts(c)) for c in concepts) / len(concepts),
                 "acc_context": sum(judge.context_accuracy(adapter, c) for c in concepts) / len(concepts),
                 "acc_other": scores.acc_other, "fid_proxy": scores.fid_proxy}
        if with_attacks:
            real = [attacks.embedding_attack_accuracy(adapter, c, steps=attack_steps, images=images, seed=0).acc for c in concepts]
            own = [attacks.embedding_attack_accuracy(adapter, c, real_samples=base_samples[c], steps=attack_steps, images=images,
                                                     seed=0).acc for c in concepts]
            check |= {"soft_real": sum(real) / len(real), "soft_own": sum(own) / len(own)}
        checks.append(check)
        measuring += time.perf_counter() - started
        print(f"{task} {method} seed {train_seed} update {update}: " + json.dumps(checks[-1]), flush=True)

    started = time.perf_counter()
    bench.erase(method, concepts, train_seed, on_step=on_step)
    return {"checks": checks, "steps": steps, "train_seconds": time.perf_counter() - started - measuring}


def table(results: dict) -> str:
    percent = lambda check, key: f"{100 * check[key]:.0f}" if key in check else ""  # noqa: E731 (older runs lack some)
    rows = []
    for method, by_seed in results["methods"].items():
        for seed, run in by_seed.items():
            held_out = {s["update"]: s.get("held_out_attack") for s in run["steps"]}
            for c in run["checks"]:
                rows.append([method, seed, str(c["update"]), *(percent(c, k) for k in ("acc_trained", "acc_unseen", "acc_context", "acc_other")),
                             f"{c['fid_proxy']:.1f}", percent(c, "soft_real"), percent(c, "soft_own"),
                             "" if held_out.get(c["update"]) is None else f"{100 * held_out[c['update']]:.0f}"])
    header = ["method", "training seed", "LoRA updates", "trained %", "unseen %", "context %", "other %", "FID-proxy",
              "soft prompt, real images %", "soft prompt, base samples %", "held-out check %"]
    return markdown_table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="five")
    parser.add_argument("--method", default="fade-robust", help="a benchmark method, such as fade-robust")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--checkpoints", default=CHECKPOINTS,
                        help="LoRA updates to measure at, comma-separated, or 'validations': every state the run validates")
    parser.add_argument("--no-attacks", action="store_true", help="measure the prompts only, not the two soft-prompt attacks")
    parser.add_argument("--states", type=Path, help="a folder to save the LoRA of every checkpoint in (safetensors)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--attack-steps", type=int, default=300)
    args = parser.parse_args()
    if not method_name(args.method).startswith("fade") or method_name(args.method) not in METHODS:
        parser.error(f"--method {args.method!r}: use a FADE method of the benchmark, such as fade-robust")
    try:
        checkpoints = None if args.checkpoints == "validations" else {int(s) for s in args.checkpoints.split(",")}
    except ValueError:
        parser.error("--checkpoints is a comma-separated list of whole numbers, such as 100,200,300, or 'validations'")
    if args.states is not None:
        args.states.mkdir(parents=True, exist_ok=True)
    settings = {"images": args.images, "attack_steps": args.attack_steps}
    path = ROOT / "benchmarks" / f"robust_curve_{args.task}.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {"settings": settings, "methods": {}}
    if earlier.get("settings") != settings:
        parser.error(f"{path} holds results measured with other settings ({earlier.get('settings')}); "
                     "give the same --images and --attack-steps, or move that file aside")
    run = measure(args.task, args.method, args.train_seed, checkpoints, args.images, args.attack_steps,
                  not args.no_attacks, args.states)

    def add_run(latest: dict) -> dict:  # as the file is now: another run for the task may have finished meanwhile
        latest.setdefault("methods", {}).setdefault(args.method, {})[str(args.train_seed)] = run
        return latest | {"task": args.task, "settings": settings}

    print(table(update_json(path, add_run)))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
