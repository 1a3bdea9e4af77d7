"""Every saved state of one robust run, measured for what a keep rule could rank states by.

    python benchmarks/robust_states.py --task three --method fade-robust --train-seed 1 --states DIR

robust_curve.py --states saves the LoRA at every validation of a run; this script puts each one back
(as robust_state_row.py does) and measures, per state:

- the run's own held-out check (robust.HeldOutAttack, rebuilt with the run's seed, so its first 32
  samples per start give the share the run recorded) at ``--check-images`` samples per start: does a
  larger check rank the states as the benchmark's attacks do;
- the benchmark's two embedding attacks (soft prompt and inversion: 300 steps, 100 images, seed 0);
- ``--plain-images`` samples of the concept's prompts (the benchmark's trained prompts, seed 5),
  as the evaluator labels them and as the check's judge does: could that judge stand in for the
  evaluator on the plain prompts, which the held-out check does not see;
- as many samples of the empty prompt (seed 5), the model's own mix of digits with nothing asked
  for, and the share the evaluator calls the concept (once for the base model too): what an attack
  gets from a conditioning that says nothing.

``--no-attacks`` measures the plain prompts only (seconds per state instead of two minutes).
``--chain-steps N`` measures only the check chained along the run: at the first state the run's own
check, at each later one the same attack going on for N steps from where it ended at the state
before (as a check that keeps its soft prompts between validations would); it ranks the states in
the second table too.
Results go to benchmarks/robust_states_<task>.json (other runs measured before are kept), with the
figures robust_curve_<task>.json recorded for the same states beside them in the printed table, and
a second table: which state each ranking (the run's check, the check with the judge's plain-prompt
share, the larger check) would keep.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core.files import update_json  # noqa: E402
from fade_core.report import markdown_table  # noqa: E402

PLAIN_SEED = 5  # not the benchmark's judge seed (0), so the plain-prompt share is a second draw


def state_files(folder: Path, task: str, method: str, train_seed: int) -> dict[int, Path]:
    """The states robust_curve.py --states saved for the run, by LoRA updates."""
    prefix = f"{task}_{method}_seed{train_seed}_".replace("/", "_")
    found = {}
    for path in folder.glob("*.safetensors"):
        match = re.fullmatch(re.escape(prefix) + r"(\d+)\.safetensors", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def empty_prompt_share(adapter, concept: str, images: int) -> float:
    """The share of ``images`` samples of the empty prompt (seed PLAIN_SEED) that the evaluator calls
    ``concept``: the model's own mix of digits, with nothing asked for."""
    return empty_prompt_counts(adapter, concept, images)[0]


def empty_prompt_counts(adapter, concept: str, images: int) -> tuple[float, dict[str, float]]:
    """That share, and the evaluator's style shares among the same samples: whether an erasure moves
    what every prompt draws (bold's strokes, say, in samples that asked for no style)."""
    from fade_core.digits import attacks
    from fade_core.digits.judge import load_evaluator
    from fade_core.digits.vocabulary import STYLE_NAMES

    samples = empty_prompt_samples(adapter, images)
    _, styles = load_evaluator().classify(samples)
    share = attacks.is_concept(samples, concept).float().mean().item()
    return share, {name: (styles == index).float().mean().item() for index, name in enumerate(STYLE_NAMES)}


def empty_prompt_samples(adapter, images: int):
    import torch

    from fade_core.digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS
    from fade_core.sampling import generate

    with torch.no_grad():
        return generate(adapter, [""] * images, seed=PLAIN_SEED, num_steps=DEFAULT_SAMPLING_STEPS, guidance=DEFAULT_GUIDANCE)


def measure(task: str, method: str, train_seed: int, files: dict[int, Path], *, plain_images: int, check_images: int,
            with_attacks: bool, chain_steps: int, on_state: Callable[[int, dict], None],
            on_base: Callable[[float], None] = lambda share: None) -> None:
    """Measures each state in turn and hands its figures to ``on_state(updates, row)``."""
    import torch
    from safetensors.torch import load_file

    from fade_core import bench
    from fade_core.bench_tasks import method_settings
    from fade_core.config import FadeConfig
    from fade_core.digits import attacks
    from fade_core.digits.judge import default_prompt_set
    from fade_core.digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS, load_adapter
    from fade_core.lora import attach_lora, load_lora_state, lora_disabled
    from fade_core.robust import HeldOutAttack
    from fade_core.sampling import generate

    torch.set_num_threads(1)
    adapter = load_adapter()
    prompt_set = default_prompt_set([task], seed=train_seed)
    config = FadeConfig(seed=train_seed, **bench.ROBUST_SETTINGS)
    for key, value in method_settings(method).items():
        setattr(config, key, value)
    modules = bench.lora_modules(adapter, prompt_set, bench.ROBUST_FAMILY, train_seed)
    attach_lora(adapter, modules, config.lora_rank, config.lora_alpha, train_seed)
    with lora_disabled(adapter):  # as the run built it, before its LoRA moved; the chained check at the run's size
        held_out = HeldOutAttack(adapter, prompt_set, steps=config.robust_check_steps, images=config.robust_check_images if chain_steps else check_images,
                                 targets=config.robust_targets, sampling_steps=config.sampling_steps,
                                 guidance=config.guidance, seed=train_seed + 3, space=config.robust_space)
    prompts = [p.concept_prompt for p in default_prompt_set([task]).pairs("all")]
    plain_prompts = [prompts[i % len(prompts)] for i in range(plain_images)]
    chained = None  # what the chained check found at the state before
    if not chain_steps:
        with lora_disabled(adapter):
            on_base(empty_prompt_share(adapter, task, plain_images))
    for update, path in files.items():
        started = time.perf_counter()
        load_lora_state(adapter, load_file(path))
        if chain_steps:  # the first state's own check, then each goes on from the one before
            found = held_out.attack(**({} if chained is None else {"steps": chain_steps, "initial": chained}))
            chained = found.tensors[adapter.context_key]
            row = {f"check_chain_{chain_steps}": max(calls.float().mean().item() for calls in held_out.calls_of(found))}
        else:
            x = generate(adapter, plain_prompts, seed=PLAIN_SEED, num_steps=DEFAULT_SAMPLING_STEPS, guidance=DEFAULT_GUIDANCE)
            with torch.no_grad():
                row = {"plain_evaluator": attacks.is_concept(x, task).float().mean().item(),
                       "plain_judge": held_out.share_of(x, torch.zeros(len(x), dtype=torch.long)),
                       "empty_prompt_evaluator": empty_prompt_share(adapter, task, plain_images)}
        if with_attacks and not chain_steps:  # the run's own check is the first 32 samples of each start
            per_start = [calls.float() for calls in held_out.calls()]
            row |= {"check_32": max(calls[:32].mean().item() for calls in per_start),
                    f"check_{check_images}": max(calls.mean().item() for calls in per_start),
                    "soft_prompt": attacks.embedding_attack_accuracy(adapter, task, steps=300, images=100, seed=0).acc,
                    "inversion": attacks.embedding_attack_accuracy(adapter, task, steps=300, images=100, seed=0, space="tokens").acc}
        row["seconds" if not chain_steps else f"check_chain_{chain_steps}_seconds"] = time.perf_counter() - started
        print(f"{task} {method} seed {train_seed} update {update}: {json.dumps(row)}", flush=True)
        on_state(update, row)


def larger_check(row: dict) -> str | None:
    """The key of the check measured at more than 32 samples per start, if any."""
    return next((key for key in row if re.fullmatch(r"check_\d+", key) and key != "check_32"), None)


def table(results: dict, curves: dict) -> str:
    percent = lambda value: "" if value is None else f"{100 * value:.1f}"  # noqa: E731
    rows = []
    for method, by_seed in results.items():
        for seed, states in by_seed.items():
            run = curves.get(method, {}).get(seed, {})
            trained = {c["update"]: c["acc_trained"] for c in run.get("checks", [])}
            recorded = {s["update"]: s.get("held_out_attack") for s in run.get("steps", [])}
            for update, row in states.items():
                larger = larger_check(row)
                rows.append([method, seed, update, percent(trained.get(int(update))), percent(row["plain_evaluator"]),
                             percent(row["plain_judge"]), percent(recorded.get(int(update))), percent(row.get("check_32")),
                             percent(row.get(larger)) if larger else "", percent(row.get("soft_prompt")), percent(row.get("inversion")),
                             percent(row.get("empty_prompt_evaluator"))])
    header = ["method", "training seed", "LoRA updates", "trained % (curve: 100 images, seed 0)", "trained % (evaluator, seed 5)",
              "trained % (check's judge, seed 5)", "check % (as recorded)", "check % (32 per start)", "check % (larger)",
              "soft prompt %", "inversion %", "empty prompt % (evaluator, seed 5)"]
    return markdown_table(header, rows)


def kept_states(task: str, results: dict, curves: dict) -> str:
    """Which state each ranking would keep, with the keep rule's tie-breaks (FadeTrainer._validate: FADE's
    adversary within chance on the validation prompts, then the least neutral drift; a later state wins
    a full tie), from the figures the run's robust curve recorded (``curves``: robust_curve_<task>.json's
    methods)."""
    from fade_core.bench_tasks import method_settings
    from fade_core.config import FadeConfig
    from fade_core.digits.judge import default_prompt_set
    from fade_core.fade import chance_band, keep_rank

    rankings = {
        "the run's own check": lambda row, recorded: recorded,
        "the run's check plus the judge on the trained prompts": lambda row, recorded: recorded + row["plain_judge"],
        "the larger of the two": lambda row, recorded: max(recorded, row["plain_judge"]),
        "the check at its larger sample": lambda row, recorded: row.get(larger_check(row)),
        "the check chained from the state before": lambda row, recorded: next(
            (value for key, value in row.items() if re.fullmatch(r"check_chain_\d+", key)), None),
    }
    percent = lambda value: "" if value is None else f"{100 * value:.1f}"  # noqa: E731
    rows = []
    for method, by_seed in results.items():
        for seed, states in by_seed.items():
            run = curves.get(method, {}).get(seed)
            if run is None:  # no recorded curve: nothing to rank by
                continue
            steps = {s["update"]: s for s in run["steps"]}
            checks = {c["update"]: c for c in run["checks"]}
            validation = len(default_prompt_set([task], seed=int(seed)).validation) * FadeConfig().validation_repeats
            band = chance_band(validation)
            check_size = method_settings(method).get("robust_check_images", FadeConfig().robust_check_images)
            for name, score in rankings.items():
                best, best_rank = None, None
                for update, row in states.items():
                    step = steps[int(update)]
                    value = score(row, step["held_out_attack"])
                    if value is None:
                        break
                    rank = keep_rank(value, step["validation_accuracy"], band, step["neutral_drift"])
                    if best_rank is None or rank <= best_rank:
                        best, best_rank = update, rank
                else:
                    row, check = states[best], checks.get(int(best), {})
                    rows.append([method, seed, name.replace("own check", f"own check ({check_size} per start)"), best, percent(check.get("acc_trained")), percent(row["plain_evaluator"]),
                                 percent(check.get("acc_context")), percent(row.get("soft_prompt")), percent(row.get("inversion"))])
    return markdown_table(["method", "training seed", "ranked by", "kept update", "trained % (curve)", "trained % (seed 5)",
                           "context % (curve)", "soft prompt %", "inversion %"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="a single-digit task, such as three")
    parser.add_argument("--method", default="fade-robust", help="the method robust_curve.py ran, settings included")
    parser.add_argument("--train-seed", type=int, required=True)
    parser.add_argument("--states", type=Path, required=True, help="the folder robust_curve.py --states wrote")
    parser.add_argument("--plain-images", type=int, default=200)
    parser.add_argument("--check-images", type=int, default=128, help="samples per start of the held-out check (32 or more)")
    parser.add_argument("--no-attacks", action="store_true", help="the plain prompts only")
    parser.add_argument("--chain-steps", type=int, default=0,
                        help="measure only the check chained along the run, each state's going on for this many steps from "
                             "the previous state's result (the first state's is its own check); the other figures stay as an "
                             "earlier pass measured them")
    args = parser.parse_args()
    from fade_core.digits import data

    if args.task not in data.DIGIT_NAMES:
        parser.error(f"--task {args.task!r}: give one digit's name, such as three")
    if args.check_images < 32:
        parser.error("--check-images: give 32 or more (the first 32 per start are the run's own check)")
    files = state_files(args.states, args.task, args.method, args.train_seed) if args.states.is_dir() else {}
    if not files:
        parser.error(f"--states {args.states}: no states of {args.task} {args.method} seed {args.train_seed} "
                     "(robust_curve.py --states names them <task>_<method>_seed<N>_<updates>.safetensors)")
    path = ROOT / "benchmarks" / f"robust_states_{args.task}.json"
    settings = {"plain_images": args.plain_images, "plain_seed": PLAIN_SEED}
    if path.is_file() and json.loads(path.read_text()).get("settings") != settings:
        parser.error(f"{path} holds states measured with other settings; give the same --plain-images, or move that file aside")

    def save(update: int, row: dict) -> None:  # each state as it is measured, into the file as it is now
        def add(latest: dict) -> dict:
            run = latest.setdefault("methods", {}).setdefault(args.method, {}).setdefault(str(args.train_seed), {})
            run[str(update)] = run.get(str(update), {}) | row  # a plain-only pass keeps attack figures measured before
            return latest | {"task": args.task, "settings": settings}
        update_json(path, add)

    def save_base(share: float) -> None:
        update_json(path, lambda latest: latest | {"task": args.task, "settings": settings, "base_empty_prompt_evaluator": share})

    measure(args.task, args.method, args.train_seed, files, plain_images=args.plain_images, check_images=args.check_images,
            with_attacks=not args.no_attacks, chain_steps=args.chain_steps, on_state=save,
            on_base=save_base)
    results = json.loads(path.read_text())["methods"]
    curve_path = ROOT / "benchmarks" / f"robust_curve_{args.task}.json"
    curves = json.loads(curve_path.read_text())["methods"] if curve_path.is_file() else {}
    print(table(results, curves))
    print(kept_states(args.task, results, curves))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
