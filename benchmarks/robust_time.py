"""Where a robust run's time goes: LoRA updates, inner-attack rounds, held-out checks, validation samples.

    python benchmarks/robust_time.py --task three --steps 60

Runs the benchmark's fade-robust (``bench.erase``, training seed 0; ``--method`` for it with other
settings, such as ``fade-robust@robust_space=context+tokens``) for ``--steps`` updates and
times each part by the function that does it: the LoRA updates (``FadeTrainer._step`` in training),
the inner attack's rounds (``AdversarialConditionings.attack``, or a bank of both kinds' round of
its two parts; its first, the bank's warm-up, apart),
the held-out checks' attacks and samples (``HeldOutAttack.calls``) and the validation samples; the
rest is loading, saliency, D's warm-up and the check's judge. 60 updates validate after 10, 20, 30,
40, 50 and 60, as a run of 600 does in its first 60 (16 checks in all). Prints the figures and writes
benchmarks/robust_time_<task>.json (with ``--method`` settings, robust_time_<task>_<settings>.json).
Wall times compare only on one machine with nothing beside, or two runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="three")
    parser.add_argument("--steps", type=int, default=60, help="LoRA updates of the run")
    parser.add_argument("--method", default="fade-robust", help="fade-robust, or it with settings (fade-robust@robust_space=context+tokens)")
    args = parser.parse_args()

    from fade_core import bench, fade, robust

    durations: dict[str, list[float]] = {"updates": [], "attack_rounds": [], "held_out_checks": [], "validation_samples": []}

    running: set[str] = set()  # a bank of both kinds runs a round of each part inside its own: one round

    def timed(owner, name: str, key, only=lambda *a, **kw: True) -> None:
        original = getattr(owner, name)

        def wrapper(*a, **kw):
            if key in running:
                return original(*a, **kw)
            running.add(key)
            started = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                running.discard(key)
                if only(*a, **kw):
                    durations[key].append(time.perf_counter() - started)

        setattr(owner, name, wrapper)

    timed(fade.FadeTrainer, "_step", "updates", only=lambda self, step, training: training)  # not D's warm-up
    timed(robust.AdversarialConditionings, "attack", "attack_rounds")  # the first is the bank's warm-up round
    timed(robust.MixedConditionings, "attack", "attack_rounds")
    timed(robust.HeldOutAttack, "calls", "held_out_checks")
    timed(fade.FadeTrainer, "validation_samples", "validation_samples")
    started = time.perf_counter()
    bench.erase(f"{args.method}{':' if '@' in args.method else '@'}steps={args.steps}", bench.task_concepts(args.task), 0)
    total = time.perf_counter() - started
    warmup_round, *rounds = durations["attack_rounds"]
    durations["attack_rounds"] = rounds
    result = {"task": args.task, "method": args.method, "steps": args.steps, "threads": os.environ.get("OMP_NUM_THREADS"), "total_seconds": round(total, 1),
              "bank_warmup_seconds": round(warmup_round, 1)}
    for key, values in durations.items():
        result |= {f"{key}_seconds": round(sum(values), 1), f"{key}_count": len(values),
                   f"{key}_each_seconds": round(sum(values) / max(len(values), 1), 2)}
    result["rest_seconds"] = round(total - warmup_round - sum(sum(v) for v in durations.values()), 1)  # loading, saliency, D's warm-up, the judge
    print(json.dumps(result, indent=1))
    settings = "" if "@" not in args.method else "_" + args.method.split("@", 1)[1].replace("=", "-").replace(":", "_").replace("+", "-")
    (ROOT / "benchmarks" / f"robust_time_{args.task}{settings}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
