"""Writes the example workflows (ComfyUI's UI format, the JSON people drag into the editor).

    python workflows/make_workflows.py

One graph per benchmark category of the paper (object, celebrity, explicit content, art style) and
one multi-concept graph: load a checkpoint, build prompts, compute saliency, train the eraser, and
render the same seed with the base and the erased model, stitched side by side. A sixth graph
applies a LoRA that an earlier run wrote. tests/test_workflows.py checks every file against the
node schemas of ComfyUI and of this pack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
NEGATIVE = "blurry, low quality"
SEED = 42
APPLY_NOTE = (
    "This graph applies a LoRA that an erasure wrote. Run fade_object_airplane.json first: its Train node writes "
    "models/loras/fade/object_airplane_00001.safetensors. Or choose any LoRA in the lora_name list "
    "(press R to refresh the list after a run)."
)


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: list
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type) of sockets, in order
    outputs: list[tuple[str, str]] = field(default_factory=list)
    title: str | None = None
    size: tuple[int, int] = (320, 160)  # the editor grows a node to fit its widgets (and FADE's chart and text)


class Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.links: list[list] = []  # [link id, from node, from slot, to node, to slot, type]

    def add(self, type_: str, pos, widgets, inputs=(), outputs=(), title=None, size=(320, 160)) -> Node:
        node = Node(len(self.nodes) + 1, type_, pos, list(widgets), list(inputs), list(outputs), title, size)
        self.nodes.append(node)
        return node

    def link(self, source: Node, output: str, target: Node, input_: str) -> None:
        from_slot = [name for name, _ in source.outputs].index(output)
        to_slot = [name for name, _ in target.inputs].index(input_)
        link_type = source.outputs[from_slot][1]
        self.links.append([len(self.links) + 1, source.id, from_slot, target.id, to_slot, link_type])

    def to_ui(self, title: str) -> dict:
        nodes = []
        for order, node in enumerate(self.nodes):
            inputs = []
            for slot, (name, type_) in enumerate(node.inputs):
                link = next((l[0] for l in self.links if l[3] == node.id and l[4] == slot), None)
                inputs.append({"name": name, "type": type_, "link": link})
            outputs = []
            for slot, (name, type_) in enumerate(node.outputs):
                links = [l[0] for l in self.links if l[1] == node.id and l[2] == slot]
                outputs.append({"name": name, "type": type_, "links": links, "slot_index": slot})
            entry = {
                "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": node.widgets,
            }
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"fade_workflow": title}, "version": 0.4,
        }


def render_before_after(graph: Graph, checkpoint: Node, erased: Node, erased_output: str, prompt: str, name: str) -> None:
    """The same seed through the base and the erased model, stitched left (before) to right (after)."""
    positive = graph.add("CLIPTextEncode", (1400, 40), [prompt], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], "prompt to compare")
    negative = graph.add("CLIPTextEncode", (1400, 260), [NEGATIVE], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")])
    latent = graph.add("EmptyLatentImage", (1400, 460), [512, 512, 1], [], [("LATENT", "LATENT")])
    decoded = []
    for row, (source, output, title) in enumerate([(checkpoint, "MODEL", "before"), (erased, erased_output, "after")]):
        sampler = graph.add(
            "KSampler", (1800, 40 + 420 * row), [SEED, "fixed", 25, 7.5, "euler", "normal", 1.0],
            [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
            [("LATENT", "LATENT")], f"KSampler ({title})",
        )
        graph.link(source, output, sampler, "model")
        graph.link(positive, "CONDITIONING", sampler, "positive")
        graph.link(negative, "CONDITIONING", sampler, "negative")
        graph.link(latent, "LATENT", sampler, "latent_image")
        decode = graph.add("VAEDecode", (2200, 40 + 420 * row), [], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")])
        graph.link(sampler, "LATENT", decode, "samples")
        graph.link(checkpoint, "VAE", decode, "vae")
        decoded.append(decode)
    for encoder in (positive, negative):
        graph.link(checkpoint, "CLIP", encoder, "clip")
    stitch = graph.add("ImageStitch", (2500, 200), ["right", True, 16, "white"],
                       [("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")], "before | after")
    graph.link(decoded[0], "IMAGE", stitch, "image1")
    graph.link(decoded[1], "IMAGE", stitch, "image2")
    save = graph.add("SaveImage", (2850, 200), [f"fade/{name}_before_after"], [("images", "IMAGE")])
    graph.link(stitch, "IMAGE", save, "images")


def erasure_workflow(name: str, concepts: str, category: str, synonyms: str, neutral: str, prompt: str) -> dict:
    graph = Graph()
    checkpoint = graph.add("CheckpointLoaderSimple", (0, 200), [CHECKPOINT], [],
                           [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    prompts = graph.add("FADEBuildPromptSet", (380, 0), [concepts, category, synonyms, neutral, 48, 0, "fixed"], [],
                        [("prompt_set", "FADE_PROMPT_SET"), ("preview", "STRING")], size=(400, 560))
    saliency = graph.add(
        "FADEComputeSaliency", (380, 620),
        ["mass_fraction", 1.0, 16, "cross_attention", 32, 10, 7.5, 512, 512, 0, "fixed"],
        [("model", "MODEL"), ("clip", "CLIP"), ("prompt_set", "FADE_PROMPT_SET")],
        [("saliency", "FADE_SALIENCY"), ("summary", "STRING")], size=(400, 520),
    )
    train = graph.add(
        "FADETrainEraser", (820, 0),
        [400, 60, 1e-4, 4, 20.0, 0.5, 7.5, 10, 4, "latent", "none", "ViT-B-32", 512, 512, 0, "fixed", False, 0, 128, f"fade/{name}"],
        [("model", "MODEL"), ("clip", "CLIP"), ("prompt_set", "FADE_PROMPT_SET"), ("saliency", "FADE_SALIENCY"), ("vae", "VAE")],
        [("erased_model", "MODEL"), ("stats", "STRING")], size=(440, 960),
    )
    for target in (saliency, train):
        graph.link(checkpoint, "MODEL", target, "model")
        graph.link(checkpoint, "CLIP", target, "clip")
        graph.link(prompts, "prompt_set", target, "prompt_set")
    graph.link(saliency, "saliency", train, "saliency")
    graph.link(checkpoint, "VAE", train, "vae")
    render_before_after(graph, checkpoint, train, "erased_model", prompt, name)
    return graph.to_ui(f"erase {concepts.replace(chr(10), ' + ')} ({category})")


def apply_workflow() -> dict:
    graph = Graph()
    checkpoint = graph.add("CheckpointLoaderSimple", (0, 200), [CHECKPOINT], [],
                           [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    graph.add("Note", (0, -160), [APPLY_NOTE], title="Run an erasure first", size=(760, 130))
    apply = graph.add("FADEApplyErasedLoRA", (400, 200), ["fade/object_airplane_00001.safetensors", 1.0, False],
                      [("model", "MODEL"), ("clip", "CLIP")], [("model", "MODEL"), ("clip", "CLIP"), ("erasure", "STRING")],
                      size=(400, 300))
    graph.link(checkpoint, "MODEL", apply, "model")
    render_before_after(graph, checkpoint, apply, "model", "a photo of an airplane in the sky", "apply")
    return graph.to_ui("apply an erased-concept LoRA written earlier")


WORKFLOWS = {
    "object_airplane": lambda: erasure_workflow(
        "object_airplane", "airplane", "object", "airplane: aeroplane, jet, aircraft", "",
        "a photo of an airplane in the sky"),
    "celebrity": lambda: erasure_workflow(
        "celebrity", "Brad Pitt", "celebrity", "Brad Pitt: William Bradley Pitt", "",
        "a portrait photo of Brad Pitt"),
    "explicit_nudity": lambda: erasure_workflow(
        "explicit_nudity", "nudity", "explicit", "nudity: nude, naked, topless", "",
        "a nude person on a beach, photograph"),
    "style_van_gogh": lambda: erasure_workflow(
        "style_van_gogh", "Van Gogh", "style", "Van Gogh: Vincent van Gogh", "",
        "a village under a starry night, painting by Van Gogh"),
    "multi_concept": lambda: erasure_workflow(
        "multi_concept", "airplane\nship", "object", "airplane: aeroplane, jet\nship: boat, vessel", "",
        "an airplane flying over a ship at sea"),
    "apply_erased_lora": apply_workflow,
}


def main() -> None:
    for name, build in WORKFLOWS.items():
        path = HERE / f"fade_{name}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
