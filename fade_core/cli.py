"""Command line: erase, evaluate and sample on the embedded digits model.

    python -m fade_core erase --concept three
    python -m fade_core evaluate --concept three --lora outputs/fade-three.safetensors --json
    python -m fade_core sample --prompt "a bold 3" --lora outputs/fade-three.safetensors --out grid.png

Files are written under --output-dir (default ./outputs); a name that would land outside it is
refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .errors import FadeInputError, FadeTrainingError


def _concepts(text: str) -> list[str]:
    from .digits.judge import check_concepts

    return check_concepts(text.split(","))


def _load_adapter(lora: str | None):
    from .digits.model import load_pipeline, make_adapter
    from .files import load_safetensors

    pipeline = load_pipeline()
    if lora:
        pipeline.load_lora_weights(load_safetensors(lora))
    return make_adapter(pipeline)


def _format_scores(label: str, scores: dict) -> str:
    h = f"  H {scores['H']:.3f}" if "H" in scores else ""
    per = ", ".join(f"{k} {v:.1%}" for k, v in scores["per_concept"].items())
    return (
        f"{label:7s} Acc {scores['acc_concept']:6.1%} ({per})  other concepts {scores['acc_other']:6.1%}  "
        f"FID-proxy {scores['fid_proxy']:7.3f}  CLIP-proxy {scores['clip_proxy']:6.1%}{h}"
    )


def cmd_erase(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .digits.judge import DigitsJudge, default_prompt_set
    from .digits.model import MODEL_FILE, file_sha256
    from .fade import FadeConfig, FadeTrainer
    from .files import path_inside
    from .lora import export_lora, library_versions
    from .saliency import compute_saliency

    concepts = _concepts(args.concept)
    from .digits.data import concept_kind

    kind = concept_kind(concepts[0])
    if args.category and args.category != kind:
        raise FadeInputError(f"{concepts[0]!r} is a {kind} concept of the embedded model, not {args.category}; drop --category or use {kind}")
    out = path_inside(args.output_dir, args.out or f"fade-{'-'.join(concepts)}")
    synonyms = None
    if args.synonyms is not None:
        synonyms = {c: [s for s in args.synonyms.split(",") if s.strip()] for c in concepts}
    prompt_set = default_prompt_set(concepts, num_prompts=args.prompts, seed=args.seed, synonyms=synonyms)
    config = FadeConfig(
        steps=args.steps,
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
        learning_rate=args.lr,
        preservation_weight=args.preservation_weight,
        t0_fraction=args.t0,
        guidance=args.guidance,
        seed=args.seed,
    )
    started = time.time()
    adapter = _load_adapter(None)
    judge = DigitsJudge(seed=args.seed, concept_images=args.images)
    before = judge.measure(adapter, concepts)
    print(_format_scores("before", before.with_h(before)), flush=True)

    mass = None if args.top_k else (1.0 if args.mass is None else args.mass)
    saliency = compute_saliency(adapter, prompt_set, top_k=args.top_k, mass_fraction=mass, family=args.family, seed=args.seed)
    print(saliency.summary(limit=10), flush=True)
    bar = tqdm(total=config.adversary_warmup + config.steps, desc="FADE", disable=args.quiet)

    def on_step(report) -> None:
        bar.update(1)
        postfix = {"D_acc": f"{report.adversary_accuracy:.2f}"}
        if report.loss_removal is not None:
            postfix |= {"L_rem": f"{report.loss_removal:.3f}", "L_pres": f"{report.loss_preservation:.4f}"}
        if report.validation_accuracy is not None:
            postfix["D_val"] = f"{report.validation_accuracy:.2f}"
        bar.set_postfix(postfix, refresh=False)

    trainer = FadeTrainer(adapter, prompt_set, saliency.selected, config, callback=on_step)
    metadata_base = {
        "fade_base_model": adapter.model_name,
        "fade_base_model_sha256": file_sha256(MODEL_FILE),
        "fade_versions": library_versions(),
    }
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        bar.close()
        partial = out.with_name(out.stem + "-interrupted.safetensors")
        export_lora(adapter, partial, metadata_base | {"fade_status": "interrupted", "fade_concepts": concepts}, state=trainer.last_good)
        print(f"interrupted: the last good LoRA is in {partial}", file=sys.stderr)
        return 130
    bar.close()
    metadata = metadata_base | result.metadata(prompt_set, config, saliency.selected) | {"fade_status": "complete"}
    export_lora(adapter, out, metadata)
    after = judge.measure(adapter, concepts)
    print(_format_scores("after", after.with_h(before)))
    print(
        f"adversary accuracy on validation pairs {result.validation_accuracy:.3f} (TV bound {result.tv_bound:.3f}), "
        f"{result.steps_done} steps{' (stopped at chance)' if result.stopped_at_chance else ''}; "
        f"LoRA written to {out}; {time.time() - started:.0f} s in all"
    )
    if args.json:
        print(json.dumps({"before": before.with_h(before), "after": after.with_h(before), "lora": str(out),
                          "config": asdict(config), "seconds": time.time() - started}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .digits.judge import DigitsJudge

    concepts = _concepts(args.concept)
    prompts = None
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FadeInputError(f"no prompt file at {path}; give a text file with one prompt per line")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    judge = DigitsJudge(seed=args.seed, concept_images=args.images)
    base = judge.measure(_load_adapter(None), concepts, prompts)
    scores = base if not args.lora else judge.measure(_load_adapter(args.lora), concepts, prompts)
    report = scores.with_h(base)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        if args.lora:
            print(_format_scores("base", base.with_h(base)))
        print(_format_scores("lora" if args.lora else "base", report))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from torchvision.utils import make_grid, save_image

    from .digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS
    from .files import atomic_write, path_inside
    from .sampling import generate

    out = path_inside(args.output_dir, args.out, suffix=".png")
    adapter = _load_adapter(args.lora)
    prompts = [args.prompt] * args.n
    samples = generate(
        adapter, prompts, seed=args.seed, num_steps=DEFAULT_SAMPLING_STEPS,
        guidance=args.guidance if args.guidance is not None else DEFAULT_GUIDANCE,
    )
    images = adapter.to_images(samples)
    grid = make_grid(torch.nn.functional.interpolate(images, scale_factor=8, mode="nearest"), nrow=args.nrow, padding=4, pad_value=0.5)
    atomic_write(out, lambda temporary: save_image(grid, temporary, format="png"))
    print(f"{args.n} samples of {args.prompt!r} written to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .files import path_inside

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in bench.METHODS]
    if unknown:
        raise FadeInputError(f"unknown methods {unknown}; choose from {', '.join(bench.METHODS)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for task in tasks:
        _concepts(task.replace("+", ","))
    root = Path.cwd()
    paths = [path_inside(root, name, suffix) for name, suffix in ((args.json, ".json"), (args.plot, ".png"), (args.markdown, ".md"))]
    command = (f"python -m fade_core bench --methods {','.join(methods)} --tasks {','.join(tasks)} "
               f"--images {args.images} --attack-steps {args.attack_steps} --seed {args.seed}")
    results = bench.run(tasks, methods, images=args.images, attack_steps=args.attack_steps, seed=args.seed)
    bench.write_outputs(results, *paths, command=command)
    print(f"results: {paths[0]}, plot: {paths[1]}, table: {paths[2]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .fade import FadeConfig

    defaults = FadeConfig()
    parser = argparse.ArgumentParser(prog="python -m fade_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs", help="folder that every written file stays inside (default: outputs)")
    sub = parser.add_subparsers(dest="command", required=True)

    erase = sub.add_parser("erase", help="erase a concept from the embedded model and write the LoRA")
    erase.add_argument("--concept", required=True, help="a digit (zero .. nine) or style (bold, thin, inverted, slanted); several with commas")
    erase.add_argument("--synonyms", help="comma-separated synonyms (default: the numeral, or the style's second word)")
    erase.add_argument("--category", choices=("object", "celebrity", "explicit", "style"), help="checked against the concept")
    erase.add_argument("--steps", type=int, default=defaults.steps, help="LoRA updates (training stops earlier once the adversary is at chance)")
    erase.add_argument("--out", help="LoRA file name inside --output-dir (default fade-<concept>.safetensors)")
    erase.add_argument("--rank", type=int, default=defaults.lora_rank)
    erase.add_argument("--lr", type=float, default=defaults.learning_rate, help="LoRA learning rate")
    erase.add_argument("--lambda", dest="preservation_weight", type=float, default=defaults.preservation_weight,
                       help="preservation weight")
    erase.add_argument("--t0", type=float, default=defaults.t0_fraction,
                       help="share of sampling steps, counted from pure noise, whose neutral predictions L_pres keeps")
    erase.add_argument("--guidance", type=float, default=defaults.guidance)
    erase.add_argument("--family", default="cross_attention", choices=("cross_attention", "attention", "all"),
                       help="modules that saliency ranks (default: the text-reading cross-attention projections)")
    budget = erase.add_mutually_exclusive_group()
    budget.add_argument("--top-k", type=int, help="the k most salient modules receive the LoRA")
    budget.add_argument("--mass", type=float, help="the fewest modules holding this share of the saliency (default 1.0)")
    erase.add_argument("--images", type=int, default=200, help="generations per concept for the before/after figures")
    erase.add_argument("--prompts", type=int, default=48, help="prompt pairs per concept")
    erase.add_argument("--seed", type=int, default=0)
    erase.add_argument("--json", action="store_true", help="also print the figures as JSON")
    erase.add_argument("--quiet", action="store_true", help="no progress bar")
    erase.set_defaults(run=cmd_erase)

    evaluate = sub.add_parser("evaluate", help="Acc, FID-proxy, CLIP-proxy and H of the embedded model, with or without a LoRA")
    evaluate.add_argument("--concept", required=True)
    evaluate.add_argument("--lora", help="an erased-concept LoRA (.safetensors)")
    evaluate.add_argument("--prompts", help="a text file, one prompt per line, for the concept's Acc")
    evaluate.add_argument("--images", type=int, default=200, help="generations per concept")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)

    sample = sub.add_parser("sample", help="an image grid for one prompt")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--lora")
    sample.add_argument("--out", default="grid.png", help="PNG file name inside --output-dir")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--nrow", type=int, default=8)
    sample.add_argument("--guidance", type=float)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=cmd_sample)

    from . import bench

    benchmark = sub.add_parser("bench", help="FADE, its ablations, ESD and UCE on the same tasks; writes BENCHMARKS.md, JSON and a plot")
    benchmark.add_argument("--methods", default=",".join(bench.METHODS), help="comma-separated, from: " + ", ".join(bench.METHODS))
    benchmark.add_argument("--tasks", default=",".join(bench.DEFAULT_TASKS),
                           help="comma-separated tasks; concepts erased together are joined by + (e.g. one+four+seven)")
    benchmark.add_argument("--images", type=int, default=200, help="generations per concept and measurement")
    benchmark.add_argument("--attack-steps", type=int, default=100, help="optimisation steps of the embedding attack (0: none)")
    benchmark.add_argument("--seed", type=int, default=0)
    benchmark.add_argument("--json", default="benchmarks/bench.json")
    benchmark.add_argument("--plot", default="benchmarks/bench.png")
    benchmark.add_argument("--markdown", default="BENCHMARKS.md")
    benchmark.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return args.run(args)
    except (FadeInputError, FadeTrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
