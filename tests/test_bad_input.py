"""Bad input, table by table, as a careless or hostile user gives it: to the command line and to the
four nodes. Every case must end in one line, ``error: ...`` on stderr (a FadeInputError or
FadeTrainingError in a node), naming the problem and the fix, with a non-zero exit code, no
traceback, and every file that was there before unchanged. Argument and path errors must be
refused without importing torch, peft or diffusers.

The node cases run inside ComfyUI when COMFYUI_PATH names a checkout, and skip otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import REPO, SKIP_REASON, comfyui_path

from fade_core.cli import main
from fade_core.files import owner_tag

DIGITS = "fade-embedded-digits-8x8"
DIGITS_MODULE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # Linear 32 -> 32
SD15_MODULE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"  # of the tiny SD1.5 in comfy_host
LONG = "a" * 300


# -- the files a user might hand over ----------------------------------------------------------------


def kohya(prefix: str, down: tuple[int, ...], up: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}.lora_down.weight": 0.01 * torch.randn(down, generator=generator),
        f"{prefix}.lora_up.weight": 0.01 * torch.randn(up, generator=generator),
        f"{prefix}.alpha": torch.tensor(4.0),
    }


def digits_lora() -> dict[str, torch.Tensor]:
    return kohya("lora_unet_" + DIGITS_MODULE.replace(".", "_"), (4, 32), (32, 4))


def save(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})


def write_inputs(folder: Path) -> None:
    """Every broken or foreign file of the tables, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / "lora.safetensors", digits_lora(), {"fade_method": "FADE", "fade_base_model": DIGITS})
    good = (folder / "lora.safetensors").read_bytes()
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (folder / "random.safetensors").write_bytes(random.Random(0).randbytes(4096))
    (folder / "pickled.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    (folder / "model.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    nan = digits_lora()
    nan[next(k for k in nan if k.endswith("lora_up.weight"))][0, 0] = float("nan")
    save(folder / "nan.safetensors", nan)
    save(folder / "not-a-lora.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(4, 4)})
    save(folder / "unrelated.safetensors", kohya("lora_unet_no_such_block_proj", (4, 32), (32, 4)))
    save(folder / "wrong-shapes.safetensors", kohya("lora_unet_" + DIGITS_MODULE.replace(".", "_"), (4, 768), (320, 4)))
    save(folder / "other-family.safetensors", digits_lora(), {"fade_method": "FADE", "fade_base_model": "sd_v1"})
    save(folder / "other-weights.safetensors", digits_lora(),
         {"fade_method": "FADE", "fade_base_model": DIGITS, "fade_base_fingerprint": {DIGITS_MODULE: [0.0, 5.0]}})
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "digits.txt").write_text("a handwritten 5\nthe digit seven\n")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line(message: str, problem: str, fix: str) -> None:
    lines = message.strip().splitlines()
    assert len(lines) == 1, message
    assert "Traceback" not in message, message
    assert problem in lines[0], (problem, lines[0])
    assert fix in lines[0], (fix, lines[0])


# -- the command line -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    id: str
    argv: str  # {in}: the folder of write_inputs
    problem: str
    fix: str
    light: bool = True  # refused before torch, peft or diffusers are imported


ERASE = "erase --concept three"
CLI_CASES = [
    Cli("empty concept", "erase --concept ''", "the concept is empty", "name a digit"),
    Cli("unknown concept", "erase --concept airplane", "does not know 'airplane'", "its concepts are the digits"),
    Cli("concept twice, case apart", "erase --concept three,Three", "name the same concept", "name each concept once"),
    Cli("digit and style together", "erase --concept three,bold", "one prompt set has one category", "separate runs"),
    Cli("category that does not fit", f"{ERASE} --category style", "not style", "drop --category"),
    Cli("synonym naming another digit", f"{ERASE} --synonyms seven", "names seven", "give other names of three only"),
    Cli("synonyms without their concept", "erase --concept one,two --synonyms 1", "name no concept", "'concept: synonym, synonym'"),
    Cli("synonyms for an absent concept", f"{ERASE} --synonyms 'five: 5'", "not among the concepts", "start the entry with one of them"),
    Cli("learning rate nan", f"{ERASE} --lr nan", "learning_rate (--lr) is nan", "finite positive number"),
    Cli("learning rate inf", f"{ERASE} --lr inf", "learning_rate (--lr) is inf", "finite positive number"),
    Cli("learning rate negative", f"{ERASE} --lr -1", "learning_rate (--lr) is -1.0", "finite positive number"),
    Cli("adversary learning rate zero", f"{ERASE} --adversary-lr 0", "adversary_learning_rate (--adversary-lr) is 0.0", "finite positive number"),
    Cli("rank zero", f"{ERASE} --rank 0", "lora_rank (--rank) is 0", "1 or more"),
    Cli("steps zero", f"{ERASE} --steps 0", "steps (--steps) is 0", "1 or more"),
    Cli("lambda negative", f"{ERASE} --lambda -1", "preservation_weight (--lambda) is -1.0", "0 or more"),
    Cli("lambda nan", f"{ERASE} --lambda nan", "preservation_weight (--lambda) is nan", "finite number"),
    Cli("t0 zero", f"{ERASE} --t0 0", "t0_fraction (--t0) is 0.0", "a number in (0, 1]"),
    Cli("t0 above one", f"{ERASE} --t0 1.5", "t0_fraction (--t0) is 1.5", "a number in (0, 1]"),
    Cli("guidance nan", f"{ERASE} --guidance nan", "guidance (--guidance) is nan", "finite CFG scale"),
    Cli("guidance inf", f"{ERASE} --guidance inf", "guidance (--guidance) is inf", "finite CFG scale"),
    Cli("warm-up negative", f"{ERASE} --warmup -1", "adversary_warmup (--warmup) is -1", "0 or more"),
    Cli("batch size zero", f"{ERASE} --batch-size 0", "batch_size (--batch-size) is 0", "1 or more"),
    Cli("seed negative", f"{ERASE} --seed -1", "seed (--seed) is -1", "from 0 to"),
    Cli("mass above one", f"{ERASE} --mass 1.5", "--mass is 1.5", "(0, 1]"),
    Cli("mass nan", f"{ERASE} --mass nan", "--mass is nan", "(0, 1]"),
    Cli("top-k zero", f"{ERASE} --top-k 0", "--top-k is 0", "1 or more"),
    Cli("no images", f"{ERASE} --images 0", "--images is 0", "1 or more"),
    Cli("one prompt pair", f"{ERASE} --prompts 1", "--prompts is 1", "2 or more"),
    Cli("rank wider than the modules", f"{ERASE} --rank 10000", "lora_rank (--rank) is 10000", "use 32 or less", light=False),
    Cli("out leaves the folder", f"{ERASE} --out ../outside", "points outside", "use a plain name"),
    Cli("out absolute", f"{ERASE} --out /tmp/fade-escape", "points outside", "use a plain name"),
    Cli("out is the folder", f"{ERASE} --out .", "names a folder", "give a file name"),
    Cli("out 300 characters", f"{ERASE} --out {LONG}", "characters long", "use a shorter --out"),
    Cli("output dir is a file", f"--output-dir {{in}}/lora.safetensors {ERASE}", "is a file, not a folder", "choose another --output-dir"),
    Cli("output dir inside a file", f"--output-dir {{in}}/lora.safetensors/sub {ERASE}", "is a file, not a folder", "choose another --output-dir"),
    Cli("existing LoRA", f"{ERASE} --out earlier", "already exists", "pass --overwrite"),
    Cli("another run writes the name", ERASE, "another run (process", "wait for it to finish or choose another --out"),
    Cli("learning rate not a number", f"{ERASE} --lr abc", "invalid float value: 'abc'", "--help"),
    Cli("unknown family", f"{ERASE} --family everything", "invalid choice: 'everything'", "--help"),
    Cli("LoRA missing", "evaluate --concept three --lora {in}/missing.safetensors", "no such file", "check the name"),
    Cli("LoRA pickled .pt", "evaluate --concept three --lora {in}/model.pt", "is not a .safetensors file", "only safetensors are loaded"),
    Cli("LoRA empty", "evaluate --concept three --lora {in}/empty.safetensors", "is empty (0 bytes)", "write or download"),
    Cli("LoRA truncated", "evaluate --concept three --lora {in}/truncated.safetensors", "is truncated", "write or download"),
    Cli("LoRA random bytes", "evaluate --concept three --lora {in}/random.safetensors", "is not a safetensors file", "write or download"),
    Cli("LoRA a renamed pickle", "evaluate --concept three --lora {in}/pickled.safetensors", "pickled PyTorch file", "convert it to safetensors"),
    Cli("LoRA a folder", "evaluate --concept three --lora {in}", "is not a .safetensors file", "only safetensors"),
    Cli("LoRA with NaN", "sample --prompt 'a 3' --lora {in}/nan.safetensors", "NaN or infinite values", "use another file", light=False),
    Cli("LoRA that is a model", "sample --prompt 'a 3' --lora {in}/not-a-lora.safetensors", "is not a LoRA:", "choose a LoRA file", light=False),
    Cli("LoRA of unrelated modules", "sample --prompt 'a 3' --lora {in}/unrelated.safetensors", "exists in the embedded model", "choose a LoRA made for", light=False),
    Cli("LoRA of other shapes", "sample --prompt 'a 3' --lora {in}/wrong-shapes.safetensors", "changes a 320x768 weight", "choose a LoRA made for", light=False),
    Cli("LoRA of another family", "evaluate --concept three --lora {in}/other-family.safetensors", "made for sd_v1", "pass --accept-other-base-model", light=False),
    Cli("LoRA of other weights", "sample --prompt 'a 3' --lora {in}/other-weights.safetensors", "the weights it changes differ", "pass --accept-other-base-model", light=False),
    Cli("prompts file binary", "evaluate --concept three --prompts {in}/binary.txt", "not a UTF-8 text file", "one prompt per line"),
    Cli("prompts file missing", "evaluate --concept three --prompts {in}/none.txt", "no prompt file", "one prompt per line"),
    Cli("prompts without the concept", "evaluate --concept three --prompts {in}/digits.txt", "none of the 2 prompts mentions 'three'", "add the concept"),
    Cli("evaluate no images", "evaluate --concept three --images 0", "--images is 0", "1 or more"),
    Cli("sample no samples", "sample --prompt 'a 3' --n 0", "--n is 0", "1 or more"),
    Cli("sample no rows", "sample --prompt 'a 3' --nrow 0", "--nrow is 0", "1 or more"),
    Cli("sample guidance nan", "sample --prompt 'a 3' --guidance nan", "--guidance is nan", "finite CFG scale"),
    Cli("sample seed too large", "sample --prompt 'a 3' --seed 99999999999", "--seed is 99999999999", "from 0 to"),
    Cli("sample empty prompt", "sample --prompt ' '", "--prompt is empty", "give a prompt"),
    Cli("sample grid exists", "sample --prompt 'a 3' --out earlier.png", "already exists", "pass --overwrite"),
    Cli("sample out leaves the folder", "sample --prompt 'a 3' --out ../grid.png", "points outside", "use a plain name"),
    Cli("bench unknown method", "bench --methods fade,magic", "unknown methods ['magic']", "choose from"),
    Cli("bench unknown concept", "bench --tasks three+airplane", "does not know 'airplane'", "its concepts are the digits"),
    Cli("bench no images", "bench --images 0", "--images is 0", "1 or more"),
    Cli("bench negative attack steps", "bench --attack-steps -5", "--attack-steps is -5", "0 or more"),
]


def cli_argv(case: Cli, inputs: Path) -> list[str]:
    return shlex.split(case.argv.replace("{in}", str(inputs)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with the broken inputs in in/, and earlier results in outputs/."""
    write_inputs(tmp_path / "in")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    save(outputs / "earlier.safetensors", digits_lora(), {"fade_status": "complete"})
    save(outputs / "earlier-interrupted.safetensors", digits_lora(), {"fade_status": "interrupted"})
    (outputs / "earlier.png").write_bytes(b"an earlier grid")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_the_command_line_refuses_bad_input(case, workdir):
    argv = cli_argv(case, workdir / "in")
    if "another run" in case.id:  # a live run (this very process) holds fade-three
        (workdir / "outputs" / ".fade-three.safetensors.reserved").write_text(owner_tag())
    before = snapshot(workdir)
    code, _, err = run_cli(argv)
    assert code == 2, err
    assert err.startswith("error: "), err
    assert_one_line(err, case.problem, case.fix)
    assert snapshot(workdir) == before  # nothing lost, changed or added
    assert not list(Path("/tmp").glob("fade-escape*"))


def test_there_are_at_least_40_bad_inputs():
    assert len(CLI_CASES) + len(NODE_CASES) >= 40 and len(CLI_CASES) >= 25 and len(NODE_CASES) >= 25


def test_argument_and_path_errors_need_no_torch(tmp_path):
    """In a fresh interpreter: --help and every light case, then which heavy modules got imported."""
    write_inputs(tmp_path / "in")
    (tmp_path / "outputs").mkdir()
    save(tmp_path / "outputs" / "earlier.safetensors", digits_lora())
    (tmp_path / "outputs" / "earlier.png").write_bytes(b"an earlier grid")
    light = [cli_argv(c, tmp_path / "in") for c in CLI_CASES if c.light and "another run" not in c.id]
    script = (
        "import contextlib, io, json, sys\n"
        "from fade_core.cli import main\n"
        "codes = []\n"
        f"for argv in [['--help'], ['erase', '--help']] + {light!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            codes.append(main(argv))\n"
        "        except SystemExit as stop:\n"
        "            codes.append(stop.code)\n"
        "heavy = sorted(m for m in ('torch', 'peft', 'diffusers', 'transformers', 'safetensors.torch') if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0] + [2] * len(light)
    assert report["heavy"] == []
    assert len(light) >= 40


# -- the nodes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    id: str
    node: str  # prompt_set, saliency, train or apply
    inputs: dict
    problem: str
    fix: str


NODE_CASES = [
    Node("empty concept", "prompt_set", {"concepts": " \n "}, "the concept is empty", "name what to erase"),
    Node("concept twice, case apart", "prompt_set", {"concepts": "Airplane\nairplane"}, "name the same concept", "name each concept once"),
    Node("synonyms for an absent concept", "prompt_set", {"synonyms": "car: automobile"}, "not among the concepts", "start the entry with one of them"),
    Node("synonyms without their concept", "prompt_set", {"concepts": "airplane, car", "synonyms": "jet"}, "name no concept", "'concept: synonym, synonym'"),
    Node("neutral word is the concept", "prompt_set", {"neutral": "Airplane"}, "name a concept being erased", "choose neutral words without it"),
    Node("synonym is a neutral word", "prompt_set", {"synonyms": "airplane: object"}, "are also neutral words", "remove them from the synonyms"),
    Node("mass fraction nan", "saliency", {"mass_fraction": float("nan")}, "mass_fraction is nan", "(0, 1]"),
    Node("top-k zero", "saliency", {"budget": "top_k", "top_k": 0}, "top_k is 0", "at least one module"),
    Node("learning rate nan", "train", {"learning_rate": float("nan")}, "learning_rate (--lr) is nan", "finite positive number"),
    Node("learning rate inf", "train", {"learning_rate": float("inf")}, "learning_rate (--lr) is inf", "finite positive number"),
    Node("guidance nan", "train", {"guidance": float("nan")}, "guidance (--guidance) is nan", "finite CFG scale"),
    Node("steps zero", "train", {"steps": 0}, "steps (--steps) is 0", "1 or more"),
    Node("batch size zero", "train", {"batch_size": 0}, "batch_size (--batch-size) is 0", "1 or more"),
    Node("t0 zero", "train", {"t0_fraction": 0.0}, "t0_fraction (--t0) is 0.0", "(0, 1]"),
    Node("preservation weight negative", "train", {"preservation_weight": -1.0}, "preservation_weight (--lambda) is -1.0", "0 or more"),
    Node("seed negative", "train", {"seed": -1}, "seed (--seed) is -1", "from 0 to"),
    Node("rank wider than the modules", "train", {"lora_rank": 10000}, "lora_rank (--rank) is 10000", "or less"),
    Node("clip adversary without weights", "train", {"adversary": "clip"}, "needs open_clip vision weights", "choose it in clip_vision_weights"),
    Node("prefix empty", "train", {"filename_prefix": "  "}, "filename_prefix is empty", "give one such as"),
    Node("prefix leaves the folder", "train", {"filename_prefix": "../../escape"}, "points outside", "use a plain name"),
    Node("prefix 300 characters", "train", {"filename_prefix": LONG}, "characters long", "use a shorter filename_prefix"),
    Node("prefix with odd characters", "train", {"filename_prefix": "fade/a*b"}, "characters other than", "use only those"),
    Node("strength nan", "apply", {"strength": float("nan")}, "strength is nan", "use a finite number"),
    Node("strength inf", "apply", {"strength": float("inf")}, "strength is inf", "use a finite number"),
    Node("LoRA outside the folder", "apply", {"lora_name": "../escape.safetensors"}, "points outside", "choose a file from the list"),
    Node("LoRA not in the folder", "apply", {"lora_name": "gone.safetensors"}, "is not a file inside the loras folders", "choose a LoRA from the list"),
    Node("LoRA pickled .pt", "apply", {"lora_name": "model.pt"}, "is not a .safetensors file", "only safetensors are loaded"),
    Node("LoRA empty", "apply", {"lora_name": "empty.safetensors"}, "is empty (0 bytes)", "write or download"),
    Node("LoRA truncated", "apply", {"lora_name": "truncated.safetensors"}, "is truncated", "write or download"),
    Node("LoRA random bytes", "apply", {"lora_name": "random.safetensors"}, "is not a safetensors file", "write or download"),
    Node("LoRA a renamed pickle", "apply", {"lora_name": "pickled.safetensors"}, "pickled PyTorch file", "convert it to safetensors"),
    Node("LoRA with NaN", "apply", {"lora_name": "nan.safetensors"}, "NaN or infinite values", "use another file"),
    Node("LoRA that is a model", "apply", {"lora_name": "not-a-lora.safetensors"}, "is not a LoRA", "choose a LoRA file"),
    Node("LoRA of unrelated modules", "apply", {"lora_name": "unrelated.safetensors"}, "exists in this sd_v1 model", "choose a LoRA made for"),
    Node("LoRA of other shapes", "apply", {"lora_name": "wrong-shapes.safetensors"}, "does not fit this sd_v1 model", "choose a LoRA made for"),
    Node("LoRA of another family", "apply", {"lora_name": "lora.safetensors"}, f"made for {DIGITS}, and this model is sd_v1", "set accept_other_base_model"),
    Node("LoRA of another family, accepted", "apply", {"lora_name": "lora.safetensors", "accept_other_base_model": True}, "does not fit this sd_v1 model", "choose a LoRA made for"),
    Node("LoRA of other SD15 weights", "apply", {"lora_name": "sd15-other-weights.safetensors"}, "made for another sd_v1 model", "set accept_other_base_model"),
]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(SKIP_REASON)
    from comfy_host import node_classes, start_host, tiny_clip, tiny_sd15

    loras = tmp_path_factory.mktemp("loras")
    write_inputs(loras)
    save(loras / "sd15-other-weights.safetensors", kohya("lora_unet_" + "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", (4, 64), (32, 4)),
         {"fade_method": "FADE", "fade_base_model": "sd_v1", "fade_base_fingerprint": {SD15_MODULE: [0.0, 5.0]}})
    (loras / "fade").mkdir()
    save(loras / "fade" / "erased_00001.safetensors", digits_lora(), {"fade_status": "complete"})
    save(loras / "fade" / "erased_00001-interrupted.safetensors", digits_lora(), {"fade_status": "interrupted"})
    pack = start_host(str(loras))
    nodes = node_classes(pack)
    model, clip = tiny_sd15(), tiny_clip()
    with torch.inference_mode():
        prompt_set, _ = nodes["FADEBuildPromptSet"].execute(**PROMPT_SET).args
        saliency, _ = nodes["FADEComputeSaliency"].execute(model, clip, prompt_set, **SALIENCY).args
    return dict(nodes=nodes, loras=loras, model=model, clip=clip, prompt_set=prompt_set, saliency=saliency)


PROMPT_SET = dict(concepts="airplane", category="object", synonyms="", neutral="", prompts_per_concept=8, seed=0)
SALIENCY = dict(budget="mass_fraction", mass_fraction=1.0, top_k=4, family="cross_attention", prompts=2, sampling_steps=2,
                guidance=3.0, width=64, height=64, seed=0)
TRAIN = dict(steps=2, adversary_warmup=1, learning_rate=5e-3, lora_rank=2, preservation_weight=20.0, t0_fraction=0.5,
             guidance=3.0, sampling_steps=2, batch_size=2, adversary="latent", clip_vision_weights="none",
             clip_architecture="ViT-B-32", width=64, height=64, seed=0, gradient_checkpointing=False,
             robust_every=0, audit_samples=8, filename_prefix="fade/bad")


def run_node(comfy, case: Node):
    nodes, model, clip = comfy["nodes"], comfy["model"], comfy["clip"]
    with torch.inference_mode():
        if case.node == "prompt_set":
            return nodes["FADEBuildPromptSet"].execute(**(PROMPT_SET | case.inputs))
        if case.node == "saliency":
            return nodes["FADEComputeSaliency"].execute(model, clip, comfy["prompt_set"], **(SALIENCY | case.inputs))
        if case.node == "train":
            return nodes["FADETrainEraser"].execute(model, clip, comfy["prompt_set"], comfy["saliency"], **(TRAIN | case.inputs))
        inputs = {"lora_name": "lora.safetensors", "strength": 1.0, "accept_other_base_model": False} | case.inputs
        return nodes["FADEApplyErasedLoRA"].execute(model, **inputs)


@pytest.mark.comfyui
@pytest.mark.parametrize("case", NODE_CASES, ids=[c.id for c in NODE_CASES])
def test_the_nodes_refuse_bad_input(case, comfy):
    from comfyui_fade.fade_core.errors import FadeInputError, FadeTrainingError

    before = snapshot(comfy["loras"])
    with pytest.raises((FadeInputError, FadeTrainingError)) as refused:
        run_node(comfy, case)
    assert_one_line(str(refused.value), case.problem, case.fix)
    assert snapshot(comfy["loras"]) == before
    assert not list(comfy["loras"].parent.glob("escape*"))
