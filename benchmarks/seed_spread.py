"""How far the benchmark's robustness figures move with the seed: each method erases the task once
per training seed, and the soft-prompt (embedding) attack then runs on each erased model with
several attack seeds. A difference between two settings that one seed shows means something only
where it is larger than this spread.

    python benchmarks/seed_spread.py --task five --methods fade-robust --train-seeds 0,1,2 --workers 2

Methods are spelled as in the benchmark (``fade-robust@robust_attack_steps=30``). Trained and
context Acc and the FID-proxy are measured as the benchmark does (seed 0, 100 images); attack seed
s uses seeds s, s + 1 and s + 2 for its minibatches, its screening and its final generations, so the
attack seeds given should lie at least 3 apart. Each (method, training seed) is kept in
benchmarks/runs/ and reused; the results go to benchmarks/seed_spread_<task>.json, which keeps the
other methods and training seeds that earlier runs with the same settings measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core.bench_tasks import METHODS, method_name, task_concepts  # noqa: E402
from fade_core.files import update_json  # noqa: E402
from fade_core.report import markdown_table  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs"


def measure(task: str, method: str, train_seed: int, attack_seeds: list[int], images: int, attack_steps: int) -> dict:
    """One erasure, measured; runs in its own process."""
    import torch

    from fade_core import bench
    from fade_core.digits import attacks
    from fade_core.digits.judge import DigitsJudge

    torch.set_num_threads(1)
    torch.manual_seed(train_seed)
    concepts = task_concepts(task)
    started = time.perf_counter()
    adapter, context, _ = bench.erase(method, concepts, train_seed)
    seconds = time.perf_counter() - started
    judge = DigitsJudge(concept_images=images, other_images=max(images, 30), seed=0)
    with context():
        trained = judge.measure(adapter, concepts)
        soft = {
            str(seed): sum(attacks.embedding_attack_accuracy(adapter, c, steps=attack_steps, images=images, seed=seed).acc
                           for c in concepts) / len(concepts)
            for seed in attack_seeds
        }
        return {
            "acc_trained": trained.acc_concept,
            "acc_context": sum(judge.context_accuracy(adapter, c) for c in concepts) / len(concepts),
            "acc_other": trained.acc_other,
            "fid_proxy": trained.fid_proxy,
            "acc_embedding": soft,
            "seconds": seconds,
        }


def table(results: dict) -> str:
    rows = []
    for method, by_seed in results["methods"].items():
        everything = [a for row in by_seed.values() for a in row["acc_embedding"].values()]
        for train_seed, row in by_seed.items():
            soft = list(row["acc_embedding"].values())
            rows.append([method, train_seed, f"{100 * row['acc_trained']:.0f}", f"{100 * row['acc_context']:.0f}",
                         f"{row['fid_proxy']:.1f}", " / ".join(f"{100 * a:.0f}" for a in soft),
                         f"{100 * statistics.mean(soft):.0f}", f"{row['seconds']:.0f}"])
        rows.append([method, "all", "", "", "", f"{100 * min(everything):.0f}-{100 * max(everything):.0f}",
                     f"{100 * statistics.mean(everything):.0f} (sd {100 * statistics.stdev(everything):.0f})", ""])
    header = ["method", "training seed", "trained %", "context %", "FID-proxy", "soft prompt % per attack seed", "mean %", "wall s"]
    return markdown_table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="five")
    parser.add_argument("--methods", default="fade-robust", help="comma-separated, as in the benchmark")
    parser.add_argument("--train-seeds", default="0,1,2")
    parser.add_argument("--attack-seeds", default="0,10,20")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--attack-steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if method_name(m) not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; use benchmark methods such as fade-robust or fade-robust@robust_attack_steps=30")
    try:
        train_seeds = [int(s) for s in args.train_seeds.split(",")]
        attack_seeds = [int(s) for s in args.attack_seeds.split(",")]
    except ValueError:
        parser.error("--train-seeds and --attack-seeds are comma-separated whole numbers, such as 0,1,2")
    if len(attack_seeds) * len(train_seeds) < 2:
        parser.error("give at least two seeds in all: a spread needs two measurements")
    settings = {"images": args.images, "attack_steps": args.attack_steps, "attack_seeds": attack_seeds}
    # Earlier runs' methods stay in the results file, so that one table compares them all.
    path = ROOT / "benchmarks" / f"seed_spread_{args.task}.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {"settings": settings}
    if earlier.get("settings") != settings:
        parser.error(f"{path} holds results measured with other settings ({earlier.get('settings')}); "
                     "give the same --images, --attack-steps and --attack-seeds, or move that file aside")
    from fade_core.bench import save_row, saved_row  # after the argument checks: it imports torch

    jobs = [(m, s) for m in methods for s in train_seeds]
    kept = lambda job: ("seed_spread", args.task, job[0], str(job[1]))  # noqa: E731
    done = {job: row for job in jobs if (row := saved_row(RUNS, kept(job), settings)) is not None}
    pending = [job for job in jobs if job not in done]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(measure, args.task, m, s, attack_seeds, args.images, args.attack_steps): (m, s) for m, s in pending}
        for count, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            done[job] = future.result()
            save_row(RUNS, kept(job), settings, done[job])
            print(f"[{count}/{len(pending)}] {job[0]} seed {job[1]}: {json.dumps(done[job])}", flush=True)

    def add_runs(latest: dict) -> dict:  # as the file is now: another run for the task may have finished meanwhile
        by_method = latest.get("methods", {})
        for m in methods:
            by_method[m] = by_method.get(m, {}) | {str(s): done[(m, s)] for s in train_seeds}
        return {"task": args.task, "settings": settings, "methods": by_method}

    print(table(update_json(path, add_runs)))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
