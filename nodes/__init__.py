"""ComfyUI nodes of the FADE pack (V3 schema). Each node translates ComfyUI's types into fade_core."""

from comfy_api.latest import ComfyExtension, io

from .apply import FADEApplyErasedLoRA
from .prompt_set import FADEBuildPromptSet
from .saliency import FADEComputeSaliency
from .train import FADETrainEraser

NODES: list[type[io.ComfyNode]] = [FADEBuildPromptSet, FADEComputeSaliency, FADETrainEraser, FADEApplyErasedLoRA]


class FadeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> FadeExtension:
    return FadeExtension()
