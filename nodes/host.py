"""The few ComfyUI services the FADE nodes share: grad mode, progress, interrupts, the loras folder."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..fade_core.errors import FadeInputError
from ..fade_core.files import path_within, require_safetensors_name
from ..fade_core.outputs import LoraOutput

PROGRESS_EVENT = "fade.progress"


@contextlib.contextmanager
def gradients_enabled():
    """ComfyUI runs every prompt under torch.inference_mode(); training needs autograd back."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class Progress:
    """ComfyUI's progress bar, advanced once per unit of work; raises promptly on interrupt."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id

    def advance(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)

    def advance_to(self, done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)

    def send(self, data: dict) -> None:
        """A custom event for the web view; silently nothing when no server runs (tests, scripts)."""
        try:
            from server import PromptServer
        except ImportError:
            return
        if getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_sync(PROGRESS_EVENT, {"node": self.node_id, **data})


def running_node_id(node_class) -> str | None:
    """The graph id of the executing node; None when a node is called directly (scripts, tests)."""
    return getattr(getattr(node_class, "hidden", None), "unique_id", None)


def loras_folder() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0])


def reserve_lora_output(prefix: str) -> LoraOutput:
    """``<loras>/<prefix>_00001.safetensors``, the next number that no file (``-interrupted`` ones
    included) and no other run holds, reserved until released; the prefix may name a subfolder but
    cannot leave the loras folder."""
    prefix = prefix.strip().replace("\\", "/")
    if not prefix or prefix.endswith("/"):
        raise FadeInputError("the filename_prefix is empty; give one such as 'fade/airplane'")
    if not re.fullmatch(r"[\w\-./ ]+", prefix):
        raise FadeInputError(f"the filename_prefix {prefix!r} has characters other than letters, digits, - _ . / and spaces; use only those")
    return LoraOutput.numbered(loras_folder(), prefix, names=("loras folder (extra_model_paths.yaml)", "filename_prefix"))


def lora_file(name: str) -> Path:
    """The full path of a file chosen from the loras list; refuses a name that leaves those folders
    and any format other than safetensors (no pickle is ever loaded). A link inside a loras folder
    is followed, as ComfyUI's own list does."""
    require_safetensors_name(name)
    folders = folder_paths.get_folder_paths("loras")
    for folder in folders:
        path = path_within(folder, name)
        if path.is_file():
            return path
    raise FadeInputError(f"{name} is not a file inside the loras folders ({', '.join(folders)}); choose a LoRA from the list")

