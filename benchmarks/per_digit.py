"""The README's per-digit table: FADE with its default settings erasing each digit of the embedded
model in turn, measured as the benchmark measures (fade_core/bench.py).

    python benchmarks/per_digit.py --workers 2

Writes benchmarks/per_digit.json and the README section between the ``per-digit`` markers. The
rows are the benchmark's own jobs, kept in benchmarks/runs/: digits the benchmark already erased
with the same settings (three, five, eight) are reused, not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fade_core import bench  # noqa: E402
from fade_core.digits import data  # noqa: E402
from fade_core.files import atomic_write  # noqa: E402
from fade_core.report import markdown_table, replace_section  # noqa: E402


def table(results: dict, command: str) -> str:
    rows = []
    for digit, measured in results["tasks"].items():
        base, fade = measured["base"], measured["fade"]
        rows.append([
            digit, f"{100 * base['acc_trained']:.1f}", f"{100 * fade['acc_trained']:.1f}", f"{100 * fade['acc_unseen']:.1f}",
            f"{100 * fade['acc_context']:.1f}", f"{100 * fade['acc_embedding']:.1f}", f"{100 * fade['acc_discrete']:.1f}",
            f"{100 * base['acc_other']:.1f}", f"{100 * fade['acc_other']:.1f}", f"{base['fid_proxy']:.1f}",
            f"{fade['fid_proxy']:.1f}", f"{100 * fade['clip_proxy']:.1f}", f"{fade['H']:.3f}", f"{fade['H_worst']:.3f}",
            f"{fade['seconds']:.0f}",
        ])
    header = ["digit", "Acc before %", "Acc after %", "unseen %", "context %", "embedding attack %", "word search %",
              "other before %", "other after %", "FID-proxy before", "after", "CLIP-proxy after %", "H", "H worst", "wall s"]
    settings = results["settings"]
    return (f"Written by `{command}` ({settings['images']} generations per measurement, seed {settings['seed']}, "
            f"embedding attack {settings['attack_steps']} steps; columns as in BENCHMARKS.md).\n\n"
            + markdown_table(header, rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--attack-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--digits", default=",".join(data.DIGIT_NAMES), help="comma-separated; default all ten")
    args = parser.parse_args()
    digits = [d.strip() for d in args.digits.split(",") if d.strip()]
    unknown = [d for d in digits if d not in data.DIGIT_NAMES]
    if unknown or not digits:
        parser.error(f"--digits: unknown {unknown}; use digit names such as three,five")
    results = bench.run(digits, ["fade"], images=args.images, attack_steps=args.attack_steps,
                        seed=args.seed, workers=args.workers, tuning=False, runs_dir=ROOT / "benchmarks" / "runs")
    command = (f"python benchmarks/per_digit.py --images {args.images} --attack-steps {args.attack_steps} "
               f"--seed {args.seed} --workers {args.workers}" + ("" if len(digits) == 10 else f" --digits {','.join(digits)}"))
    path = ROOT / "benchmarks" / "per_digit.json"
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(results, indent=1) + "\n"))
    replace_section("per-digit", table(results, command))
    print(f"results: {path}; README section per-digit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
