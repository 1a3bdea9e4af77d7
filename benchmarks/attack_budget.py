"""How long an attack must run to undo an erasure: the benchmark's embedding attacks at several budgets.

    python benchmarks/attack_budget.py --task eight --methods retrained,fade-robust,fade,base --steps 300,1000,3000 --workers 2

BENCHMARKS.md measures every attack at one budget (300 Adam steps). This script erases the task
with each method as the benchmark does (``bench.erase``, training seed ``--seed``) and runs the
benchmark's soft-prompt attack (``--spaces context``) and inversion attack (``tokens``) on the
result at every budget in ``--steps``: same starts, real images, screening and judge as
BENCHMARKS.md's columns (``attacks.embedding_attack_accuracy``), only longer. ``retrained``, the
base model's recipe trained without the concept, is the reference: what the attacks make of a
model that never learned the concept. Each method runs in its own process; its figures go to
benchmarks/attack_budget_<task>.json as it finishes (methods measured before are kept), and the
table is printed from that file. Attack seconds are wall times beside the other worker.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core.files import update_json  # noqa: E402
from fade_core.report import markdown_table  # noqa: E402


def measure(task: str, method: str, budgets: list[int], spaces: list[str], images: int, seed: int, grids: Path | None) -> dict:
    """One method's erasure, then each attack at each budget. Runs in its own process."""
    import torch
    from torchvision.utils import make_grid, save_image

    from fade_core import bench
    from fade_core.digits import attacks
    from fade_core.digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS, load_adapter
    from fade_core.files import atomic_write
    from fade_core.sampling import initial_noise, sample

    torch.set_num_threads(1)
    started = time.perf_counter()
    if method == "base":
        adapter, context, record = load_adapter(), contextlib.nullcontext, {}
    else:
        adapter, context, record = bench.erase(method, bench.task_concepts(task), seed)
    result = {"erase_seconds": time.perf_counter() - started, "kept_step": record.get("kept_step"), "attacks": {}}
    with context():
        for space in spaces:
            for steps in budgets:
                outcomes = [attacks.embedding_attack_accuracy(adapter, concept, steps=steps, images=images, seed=seed, space=space)
                            for concept in bench.task_concepts(task)]
                result["attacks"][f"{space}_{steps}"] = {
                    "acc": sum(o.acc for o in outcomes) / len(outcomes),
                    "per_concept": {o.concept: o.acc for o in outcomes},
                    "seconds": sum(o.seconds for o in outcomes),
                }
                print(f"{task} {method} {space} {steps} steps: {100 * result['attacks'][f'{space}_{steps}']['acc']:.0f} %", flush=True)
                for outcome in outcomes if grids is not None else []:  # what the evaluator judged, to look at
                    noise = initial_noise(adapter, 32, torch.Generator().manual_seed(seed + 2))  # seeded as the judged ones
                    with torch.no_grad():
                        x = sample(adapter, outcome.found[[0] * 32], noise, num_steps=DEFAULT_SAMPLING_STEPS, guidance=DEFAULT_GUIDANCE)
                    grid = make_grid(torch.nn.functional.interpolate(adapter.to_images(x), scale_factor=8, mode="nearest"), nrow=8,
                                     padding=2, pad_value=0.5)
                    out = grids / f"{task}_{method}_{outcome.concept}_{space}_{steps}.png".replace("/", "_")
                    atomic_write(out, lambda temporary: save_image(grid, temporary, format="png"), replace=True)
    return result


def table(results: dict) -> str:
    columns = sorted({key for row in results.values() for key in row["attacks"]},
                     key=lambda key: (key.split("_")[0] != "context", int(key.split("_")[1])))
    names = {"context": "soft prompt", "tokens": "inversion"}
    header = ["method", "kept update", *[f"{names[key.split('_')[0]]} {key.split('_')[1]} steps %" for key in columns]]
    rows = [[method, str(row.get("kept_step") or ""), *[f"{100 * row['attacks'][key]['acc']:.0f}" if key in row["attacks"] else ""
                                                   for key in columns]]
            for method, row in results.items()]
    return markdown_table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="eight")
    parser.add_argument("--methods", default="retrained,fade-robust,fade,base")
    parser.add_argument("--steps", default="300,1000,3000", help="attack budgets, Adam steps")
    parser.add_argument("--spaces", default="context", help="context (the soft prompt), tokens (the inversion), or both")
    parser.add_argument("--images", type=int, default=100, help="generations judged per attack, as BENCHMARKS.md's rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grids", type=Path, help="a folder for a PNG of 32 of each attack's judged generations")
    args = parser.parse_args()
    from fade_core.bench_tasks import task_concepts

    task_concepts(args.task)  # refuses an unknown task before any work
    budgets = [int(step) for step in args.steps.split(",")]
    spaces = args.spaces.split(",")
    if any(step < 1 for step in budgets) or not set(spaces) <= {"context", "tokens"}:
        parser.error("--steps: positive whole numbers; --spaces: context, tokens or both")
    methods = args.methods.split(",")
    if args.grids is not None:
        args.grids.mkdir(parents=True, exist_ok=True)
    path = ROOT / "benchmarks" / f"attack_budget_{args.task}.json"
    settings = {"images": args.images, "seed": args.seed}

    def save(method: str, row: dict) -> None:
        def add(latest: dict) -> dict:
            if latest.get("settings", settings) != settings:
                raise SystemExit(f"{path} holds figures measured with other settings ({latest['settings']}); move it aside")
            kept = latest.get("methods", {}).get(method, {"attacks": {}})
            return {"task": args.task, "settings": settings,
                    "methods": latest.get("methods", {}) | {method: row | {"attacks": kept["attacks"] | row["attacks"]}}}
        update_json(path, add)

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(measure, args.task, method, budgets, spaces, args.images, args.seed, args.grids): method
                   for method in methods}
        for future in as_completed(futures):
            save(futures[future], future.result())
    print(table(update_json(path, lambda latest: latest)["methods"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
