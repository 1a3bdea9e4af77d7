"""The benchmark's whole row for one LoRA state saved by ``robust_curve.py --states``.

    python benchmarks/robust_state_row.py --task three --train-seed 1 --state DIR/three_..._500.safetensors

The state is put back on the modules a fade-robust run of that task and training seed trains (the
saliency of its family, as ``bench.erase`` chooses them) and measured by ``bench.run_job`` as the
benchmark measures a row (100 images, 300 attack steps, seed 0): trained, unseen and context Acc,
the three attacks, other concepts and FID-proxy. The figures for a kept state that benchmarks/notes.md
gives beside a robust_curve run come from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("acc_trained", "acc_unseen", "acc_context", "acc_embedding", "acc_inversion", "acc_discrete", "acc_other", "fid_proxy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--train-seed", type=int, required=True, help="the training seed of the run that saved the state")
    parser.add_argument("--state", type=Path, required=True, help="a .safetensors file written by robust_curve.py --states")
    args = parser.parse_args()
    if args.state.suffix != ".safetensors" or not args.state.is_file():
        parser.error(f"--state {args.state}: give a .safetensors file written by robust_curve.py --states")

    import torch
    from safetensors.torch import load_file

    from fade_core import bench
    from fade_core.config import FadeConfig
    from fade_core.digits.judge import default_prompt_set
    from fade_core.digits.model import load_adapter
    from fade_core.lora import attach_lora, load_lora_state

    torch.set_num_threads(1)

    def saved_state(method, concepts, seed, on_step=None):  # stands in for bench.erase: no training
        adapter = load_adapter()
        modules = bench.lora_modules(adapter, default_prompt_set(concepts, seed=args.train_seed), bench.ROBUST_FAMILY, args.train_seed)
        config = FadeConfig()
        attach_lora(adapter, modules, config.lora_rank, config.lora_alpha, args.train_seed)
        load_lora_state(adapter, load_file(args.state))
        return adapter, contextlib.nullcontext, {}

    bench.erase = saved_state
    row = bench.run_job(args.task, "fade-robust", 100, 300, 0)
    print(json.dumps({key: row[key] for key in KEYS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
