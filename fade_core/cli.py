"""Command line: erase, evaluate and sample on the embedded digits model.

    python -m fade_core erase --concept three
    python -m fade_core evaluate --concept three --lora outputs/fade-three.safetensors --json
    python -m fade_core sample --prompt "a bold 3" --lora outputs/fade-three.safetensors --out grid.png

Files are written under --output-dir (default ./outputs); a name that would land outside it is
refused, and an existing file is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

# Only light modules at the top: --help and bad arguments are answered without importing torch.
from .bench_tasks import DEFAULT_METHODS, DEFAULT_TASKS, METHODS, method_name, method_settings, task_concepts
from .config import MAX_SEED, FadeConfig, flags
from .errors import FadeExportError, FadeInputError, FadeInterrupted, FadeTrainingError

OUTPUT_NAMES = ("--output-dir", "--out")
ACCEPT_FLAG = "--accept-other-base-model"


def require(condition: bool, message: str) -> None:
    if not condition:
        raise FadeInputError(message)


def _whole(value: int, flag: str, low: int, example: str) -> None:
    require(low <= value, f"{flag} is {value}; use {low} or more ({example})")


def _seed(value: int) -> None:
    require(0 <= value <= MAX_SEED, f"--seed is {value}; use a whole number from 0 to {MAX_SEED}")


def _guidance(value: float | None) -> None:
    if value is not None:
        require(math.isfinite(value) and value >= 0, f"--guidance is {value}; use a finite CFG scale of 0 or more (usually 1 to 10)")


def _concepts(text: str) -> list[str]:
    from .digits.vocabulary import check_concepts

    return check_concepts(text.split(","))


def _format_scores(label: str, scores: dict) -> str:
    h = f"  H {scores['H']:.3f}" if "H" in scores else ""
    per = ", ".join(f"{k} {v:.1%}" for k, v in scores["per_concept"].items())
    return (
        f"{label:7s} Acc {scores['acc_concept']:6.1%} ({per})  other concepts {scores['acc_other']:6.1%}  "
        f"FID-proxy {scores['fid_proxy']:7.3f}  CLIP-proxy {scores['clip_proxy']:6.1%}{h}"
    )


# -- LoRA files given to evaluate and sample ----------------------------------------------------------


def _read_lora(path: str):
    """The LoRA's tensors and metadata, the file checked before any model is loaded."""
    from .files import load_safetensors, read_safetensors_metadata

    return load_safetensors(path), read_safetensors_metadata(path)


def _adapter_with_lora(path: str | None, lora=None, accept_other_base: bool = False):
    """The embedded model, with the LoRA at ``path`` (read by :func:`_read_lora`) if given: its keys,
    shapes and base model checked against the model before it is applied."""
    from .digits.model import MODEL_NAME, load_pipeline, make_adapter
    from .lora_file import base_model_problem, check_lora, kohya_targets, kohya_text_encoder_targets

    pipeline = load_pipeline()
    if path:
        tensors, metadata = lora
        modules = dict(pipeline.unet.named_modules())
        problem = base_model_problem(
            metadata, MODEL_NAME, lambda name: getattr(modules.get(name), "weight", None)
        )
        if problem and not accept_other_base:
            raise FadeInputError(f"{Path(path).name} may not suit the embedded model: {problem}; pass {ACCEPT_FLAG} to use it anyway")
        if problem:
            print(f"warning: {Path(path).name} may not suit the embedded model: {problem}; used anyway ({ACCEPT_FLAG})", file=sys.stderr)
        targets = kohya_targets(pipeline.unet, "lora_unet_") | kohya_text_encoder_targets(pipeline.text_encoder)
        check_lora(path, tensors, targets, model=f"the embedded model {MODEL_NAME}")
        pipeline.load_lora_weights(dict(tensors))
    return make_adapter(pipeline)


# -- erase ----------------------------------------------------------------------------------------


def config_from(args: argparse.Namespace) -> FadeConfig:
    """The FadeConfig that ``erase``'s flags describe (every field with a flag; alpha = rank)."""
    values = {name: getattr(args, name) for name in flags()}
    return FadeConfig(**values, lora_alpha=float(values["lora_rank"]))


def cmd_erase(args: argparse.Namespace) -> int:
    from .digits.vocabulary import concept_kind, default_prompt_set
    from .outputs import LoraOutput
    from .prompts import parse_synonyms

    # Everything the user gave is checked, and the output reserved, before any model is loaded.
    concepts = _concepts(args.concept)
    kind = concept_kind(concepts[0])
    if args.category and args.category != kind:
        raise FadeInputError(f"{concepts[0]!r} is an {kind} concept of the embedded model, not {args.category}; drop --category or use {kind}")
    config = config_from(args)
    config.check()
    _whole(args.images, "--images", 1, "generations per concept for the figures; 200 gives steady figures")
    _whole(args.prompts, "--prompts", 2, "prompt pairs per concept; one of them is held out for validation")
    if args.top_k is not None:
        _whole(args.top_k, "--top-k", 1, "the number of modules that receive the LoRA")
    if args.mass is not None:
        require(math.isfinite(args.mass) and 0 < args.mass <= 1, f"--mass is {args.mass}; use a share of the saliency in (0, 1], such as 0.9")
    synonyms = None
    if args.synonyms is not None:
        synonyms = {c: [] for c in concepts} | parse_synonyms(args.synonyms, concepts)
    prompt_set = default_prompt_set(concepts, num_prompts=args.prompts, seed=args.seed, synonyms=synonyms)
    name = args.out or f"fade-{'-'.join(concepts)}"
    with LoraOutput.named(args.output_dir, name, overwrite=args.overwrite, names=OUTPUT_NAMES) as output:
        return _erase(args, concepts, prompt_set, config, output)


def _erase(args, concepts, prompt_set, config, output) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from .digits.judge import DigitsJudge
    from .digits.model import MODEL_NAME, load_adapter
    from .run import check_rank, erase_and_export
    from .saliency import compute_saliency

    started = time.time()
    adapter = load_adapter()
    mass = None if args.top_k else (1.0 if args.mass is None else args.mass)
    saliency = compute_saliency(adapter, prompt_set, top_k=args.top_k, mass_fraction=mass, family=args.family, seed=args.seed)
    check_rank(adapter, saliency.selected, config.lora_rank)  # before the figures, which take a while
    judge = DigitsJudge(seed=args.seed, concept_images=args.images)
    before = judge.measure(adapter, concepts)
    print(_format_scores("before", before.with_h(before)), flush=True)
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

    audit_bar = None

    def on_audit(done: int, total: int) -> None:
        nonlocal audit_bar
        if audit_bar is None:
            bar.close()
            audit_bar = tqdm(total=total, desc="audit", disable=args.quiet)
        audit_bar.update(done - audit_bar.n)

    try:
        erasure = erase_and_export(adapter, prompt_set, saliency.selected, config, output, base_model=MODEL_NAME,
                                   callback=on_step, audit_progress=on_audit)
    finally:
        bar.close()
        if audit_bar is not None:
            audit_bar.close()
    result = erasure.result
    after = judge.measure(adapter, concepts)
    print(_format_scores("after", after.with_h(before)))
    print(
        f"the training adversary's accuracy on validation pairs {result.validation_accuracy:.3f}, "
        f"{result.steps_done} steps{' (stopped at chance)' if result.stopped_at_chance else ''}; "
        f"{result.kept_summary() + '; ' if result.held_out_attack is not None else ''}{erasure.audit.summary()}; "
        f"LoRA written to {erasure.path}; {time.time() - started:.0f} s in all"
    )
    if args.json:
        print(json.dumps({"before": before.with_h(before), "after": after.with_h(before), "lora": str(erasure.path),
                          "config": asdict(config), "seconds": time.time() - started}, indent=1))
    return 0


# -- evaluate, sample, bench --------------------------------------------------------------------------


def _read_prompts(path: str) -> list[str]:
    file = Path(path)
    require(file.is_file(), f"no prompt file at {file}; give a text file with one prompt per line")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FadeInputError(f"{file} is not a UTF-8 text file; give a text file with one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    require(bool(prompts), f"{file} holds no prompts; write one prompt per line")
    return prompts


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .digits.vocabulary import eraser_synonyms, held_out_synonyms
    from .prompts import require_mentions

    concepts = _concepts(args.concept)
    _whole(args.images, "--images", 1, "generations per concept; 200 gives steady figures")
    _seed(args.seed)
    prompts = _read_prompts(args.prompts) if args.prompts else None
    for concept in concepts if prompts else ():
        require_mentions(prompts, [concept, *eraser_synonyms(concept), *held_out_synonyms(concept)], repr(concept))
    lora = _read_lora(args.lora) if args.lora else None
    from .digits.judge import DigitsJudge

    with_lora = _adapter_with_lora(args.lora, lora, args.accept_other_base_model) if args.lora else None
    judge = DigitsJudge(seed=args.seed, concept_images=args.images)
    base = judge.measure(_adapter_with_lora(None), concepts, prompts)
    scores = base if with_lora is None else judge.measure(with_lora, concepts, prompts)
    report = scores.with_h(base)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        if args.lora:
            print(_format_scores("base", base.with_h(base)))
        print(_format_scores("lora" if args.lora else "base", report))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .files import atomic_write, path_inside
    from .outputs import check_folder

    _whole(args.n, "--n", 1, "the number of samples in the grid")
    _whole(args.nrow, "--nrow", 1, "samples per row of the grid")
    _guidance(args.guidance)
    _seed(args.seed)
    require(bool(args.prompt.strip()), "--prompt is empty; give a prompt such as 'a bold 3'")
    check_folder(Path(args.output_dir), "--output-dir")
    out = path_inside(args.output_dir, args.out, suffix=".png", setting="--out")
    require(not out.is_dir(), f"{out} is a folder; choose another --out")
    require(args.overwrite or not out.exists(), f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    lora = _read_lora(args.lora) if args.lora else None

    import torch
    from torchvision.utils import make_grid, save_image

    from .digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS
    from .sampling import generate

    adapter = _adapter_with_lora(args.lora, lora, args.accept_other_base_model)
    samples = generate(
        adapter, [args.prompt] * args.n, seed=args.seed, num_steps=DEFAULT_SAMPLING_STEPS,
        guidance=args.guidance if args.guidance is not None else DEFAULT_GUIDANCE,
    )
    require(bool(torch.isfinite(samples).all()), "the samples are not finite; lower --guidance")
    images = adapter.to_images(samples)
    grid = make_grid(torch.nn.functional.interpolate(images, scale_factor=8, mode="nearest"), nrow=args.nrow, padding=4, pad_value=0.5)
    atomic_write(out, lambda temporary: save_image(grid, temporary, format="png"), replace=args.overwrite)
    print(f"{args.n} samples of {args.prompt!r} written to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .files import path_inside

    methods = _bench_methods(args.methods)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    require(bool(tasks), "--tasks is empty; give tasks such as three,bold,one+four+seven")
    for task in tasks:
        _concepts(",".join(task_concepts(task)))
    _whole(args.images, "--images", 1, "generations per concept and measurement; 200 gives steady figures")
    _whole(args.attack_steps, "--attack-steps", 0, "0 runs no attack")
    _whole(args.workers, "--workers", 1, "jobs at once, one CPU thread each; at most the number of cores")
    _seed(args.seed)
    root = Path.cwd()
    paths = [path_inside(root, name, suffix) for name, suffix in ((args.json, ".json"), (args.plot, ".png"), (args.markdown, ".md"))]
    runs_dir = paths[0].parent / "runs"
    notes_path = paths[0].parent / "notes.md"
    from . import bench

    command = (f"python -m fade_core bench --methods {','.join(methods)} --tasks {','.join(tasks)} "
               f"--images {args.images} --attack-steps {args.attack_steps} --seed {args.seed} --workers {args.workers}"
               + ("" if args.tuning else " --no-tuning"))
    results = bench.run(tasks, methods, images=args.images, attack_steps=args.attack_steps, seed=args.seed,
                        workers=args.workers, tuning=args.tuning, runs_dir=runs_dir)
    notes = notes_path.read_text() if notes_path.is_file() else ""
    bench.write_outputs(results, *paths, command=command, notes=notes)
    readme = root / "README.md"
    if readme.is_file() and "<!-- robustness:start -->" in readme.read_text(encoding="utf-8"):
        from .report import replace_section

        replace_section("robustness", bench.robustness_table(results, command), readme)
    print(f"results: {paths[0]}, plot: {paths[1]}, table: {paths[2]}")
    return 0


def _bench_methods(text: str) -> list[str]:
    """Methods separated by commas, a method's own settings after @ and separated by ':':
    fade,esd@steps=400:learning_rate=0.001."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    require(bool(methods), f"--methods is empty; choose from {', '.join(METHODS)}")
    unknown = [method_name(m) for m in methods if method_name(m) not in METHODS]
    require(not unknown, f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    for method in methods:
        try:
            method_settings(method)
        except ValueError as error:
            require(False, str(error))
    return methods


# -- the parser -----------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fade_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs", help="folder that every written file stays inside (default: outputs)")
    sub = parser.add_subparsers(dest="command", required=True)

    erase = sub.add_parser("erase", help="erase a concept from the embedded model and write the LoRA")
    erase.add_argument("--concept", required=True, help="a digit (zero .. nine) or style (bold, thin, inverted, slanted); several with commas")
    erase.add_argument("--synonyms", help="other names of the concept, erased too (default: the numeral, or the style's second word); "
                                          "with several concepts 'three: 3, iii; five: 5'")
    erase.add_argument("--category", choices=("object", "celebrity", "explicit", "style"), help="checked against the concept")
    erase.add_argument("--out", help="LoRA file name inside --output-dir (default fade-<concept>.safetensors)")
    erase.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    for setting in fields(FadeConfig):
        flag = setting.metadata.get("flag")
        if flag:
            erase.add_argument(flag, dest=setting.name, type=type(setting.default), default=setting.default,
                               help=f"{setting.metadata.get('help') or setting.name} (default %(default)s)")
    erase.add_argument("--family", default="cross_attention", choices=("cross_attention", "attention", "all"),
                       help="modules that saliency ranks (default: the text-reading cross-attention projections)")
    budget = erase.add_mutually_exclusive_group()
    budget.add_argument("--top-k", type=int, help="the k most salient modules receive the LoRA")
    budget.add_argument("--mass", type=float, help="the fewest modules holding this share of the saliency (default 1.0)")
    erase.add_argument("--images", type=int, default=200, help="generations per concept for the before/after figures")
    erase.add_argument("--prompts", type=int, default=48, help="prompt pairs per concept")
    erase.add_argument("--json", action="store_true", help="also print the figures as JSON")
    erase.add_argument("--quiet", action="store_true", help="no progress bar")
    erase.set_defaults(run=cmd_erase)

    evaluate = sub.add_parser("evaluate", help="Acc, FID-proxy, CLIP-proxy and H of the embedded model, with or without a LoRA")
    evaluate.add_argument("--concept", required=True)
    evaluate.add_argument("--lora", help="an erased-concept LoRA (.safetensors)")
    evaluate.add_argument(ACCEPT_FLAG, action="store_true", help="apply a LoRA made for another base model anyway")
    evaluate.add_argument("--prompts", help="a text file, one prompt per line, for the concept's Acc")
    evaluate.add_argument("--images", type=int, default=200, help="generations per concept")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)

    sample = sub.add_parser("sample", help="an image grid for one prompt")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--lora")
    sample.add_argument(ACCEPT_FLAG, action="store_true", help="apply a LoRA made for another base model anyway")
    sample.add_argument("--out", default="grid.png", help="PNG file name inside --output-dir")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--nrow", type=int, default=8)
    sample.add_argument("--guidance", type=float)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=cmd_sample)

    benchmark = sub.add_parser("bench", help="FADE, its ablations, ESD and UCE on the same tasks; writes BENCHMARKS.md, JSON and a plot")
    benchmark.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                           help="comma-separated, from: " + ", ".join(METHODS) + "; settings after @, such as esd@steps=400")
    benchmark.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                           help="comma-separated tasks; concepts erased together are joined by + (e.g. one+four+seven)")
    benchmark.add_argument("--images", type=int, default=100,
                           help="generations per concept and measurement (100: the published BENCHMARKS.md; 200 steadier, twice the time)")
    benchmark.add_argument("--attack-steps", type=int, default=300, help="optimisation steps of the embedding attack (0: no attacks)")
    benchmark.add_argument("--workers", type=int, default=1, help="jobs at once, each in its own process with one thread")
    benchmark.add_argument("--no-tuning", dest="tuning", action="store_false",
                           help="skip the tuning and placement variants on eight (each method's alternative settings, FADE's LoRA placements and the token-space robust rows)")
    benchmark.add_argument("--seed", type=int, default=0)
    benchmark.add_argument("--json", default="benchmarks/bench.json")
    benchmark.add_argument("--plot", default="benchmarks/bench.png")
    benchmark.add_argument("--markdown", default="BENCHMARKS.md")
    benchmark.set_defaults(run=cmd_bench)
    return parser


def _fail(error: BaseException | str) -> None:
    print("error: " + " ".join(str(error).split()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FadeInterrupted as stop:
        _fail(stop)
        return 130
    except KeyboardInterrupt:
        _fail("interrupted; no file was left half-written")
        return 130
    except (FadeInputError, FadeTrainingError, FadeExportError) as error:
        _fail(error)
        return 2
    except OSError as error:  # a disk or permission fault the checks could not foresee
        where = f" ({error.filename})" if error.filename else ""
        _fail(f"{error.strerror or error}{where}; check the path, its permissions and the free space")
        return 2
