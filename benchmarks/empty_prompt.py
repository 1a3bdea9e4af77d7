"""One benchmark row, and what the erased model draws for the empty prompt.

    python benchmarks/empty_prompt.py --task eight --method "fade-robust@robust_empty_anchor=0.5"

The row is the one ``python -m fade_core bench`` measures (bench.run_job: 100 images, attacks of 300
steps, benchmark seed 0) and is saved where bench reuses it (``--runs``, benchmarks/runs by default).
Beside it, 200 samples of the empty prompt (seed 5, as robust_states.py draws them) from the erased
model, the share the evaluator calls the concept, and the evaluator's style shares among them. The
inversion attack's generations after fade-robust are the model's own mix of digits (benchmarks/notes.md),
so the concept's share is what an attacker with a word embedding can fall back on; the base model draws
eight for 12.5 % of it. The style shares show whether an erasure moved what every prompt draws.
Results go to benchmarks/empty_prompt_<task>.json, by method (earlier methods are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core.files import update_json  # noqa: E402
from robust_states import empty_prompt_counts  # noqa: E402

EMPTY_IMAGES = 200  # as robust_states.py's default --plain-images


def measure(task: str, method: str, runs: Path) -> dict:
    import torch

    from fade_core import bench
    from fade_core.digits.model import load_adapter

    torch.set_num_threads(1)
    concept = bench.task_concepts(task)[0]
    share, styles = empty_prompt_counts(load_adapter(), concept, EMPTY_IMAGES)
    found = {"base_empty_prompt_evaluator": share, "base_empty_prompt_styles": styles}
    erase = bench.erase

    def erase_and_count(method, concepts, seed, on_step=None):
        adapter, context, training = erase(method, concepts, seed, on_step)

        @contextlib.contextmanager
        def counting_first():  # run_job enters it after timing the erasure, before the row's measurements
            with context():
                if "empty_prompt_evaluator" not in found:
                    found["empty_prompt_evaluator"], found["empty_prompt_styles"] = empty_prompt_counts(adapter, concept, EMPTY_IMAGES)
                    print(f"{task} {method}: the empty prompt makes {100 * found['empty_prompt_evaluator']:.1f} % {concept} "
                          f"(base model {100 * found['base_empty_prompt_evaluator']:.1f} %)", flush=True)
                yield

        return adapter, counting_first, training

    bench.erase = erase_and_count
    try:
        row = bench.run_job(task, method, 100, 300, 0)
    finally:
        bench.erase = erase
    settings = {"images": 100, "attack_steps": 300, "seed": 0, "prompts": bench.prompt_fingerprint(task, 0)}
    bench.save_row(runs, (task, method), settings, row)
    return row | found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="a single-concept task, such as eight")
    parser.add_argument("--method", required=True, help="a benchmark method, settings included")
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs", help="where bench keeps its rows")
    args = parser.parse_args()
    from fade_core.bench import task_concepts

    if len(task_concepts(args.task)) != 1:
        parser.error(f"--task {args.task!r}: give a task with one concept, such as eight")
    row = measure(args.task, args.method, args.runs)
    path = ROOT / "benchmarks" / f"empty_prompt_{args.task}.json"
    update_json(path, lambda latest: latest | {args.method: row})
    print(json.dumps({k: round(v, 3) for k, v in row.items() if isinstance(v, float)} | {"kept": row.get("kept_step")}))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
