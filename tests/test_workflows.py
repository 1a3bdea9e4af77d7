"""Every workflow in workflows/ fits the node schemas of ComfyUI and of this pack: each node type
exists, every link joins an output to an input of the same type, and the widget values fit their
inputs (type, range, options) in the order ComfyUI's editor reads them. Needs COMFYUI_PATH."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from comfy_host import REPO, SKIP_REASON, comfyui_path, node_classes, start_host

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_NODES = {"Note", "MarkdownNote"}  # drawn by the editor only, never sent to the server
CATEGORIES = {"object", "celebrity", "explicit", "style"}


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    """{node type: (inputs in order as (name, type, options), output types)} for core, extras and pack;
    options carry "required" (False for optional inputs)."""
    pack = start_host(str(tmp_path_factory.mktemp("loras")))
    import nodes as comfy_nodes

    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS) | node_classes(pack)
    table = {}
    for name, cls in classes.items():
        try:
            spec = cls.INPUT_TYPES()
        except Exception:  # a core node whose optional dependency is missing here (audio)
            continue
        inputs = []
        for group in ("required", "optional"):
            for input_name, entry in spec.get(group, {}).items():
                kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
                if isinstance(kind, (list, tuple)):
                    kind, options = "COMBO", {**options, "options": list(kind)}
                inputs.append((input_name, kind, options | {"required": group == "required"}))
        table[name] = (inputs, list(cls.RETURN_TYPES))
    return table


def widget_values_fit(name: str, kind: str, options: dict, values: list) -> int:
    """Checks the values of one widget (two for a seed and its control widget); returns how many it used."""
    value = values[0]
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        assert options.get("min", value) <= value <= options.get("max", value), (name, value)
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        assert options.get("min", value) <= value <= options.get("max", value), (name, value)
    elif kind == "STRING":
        assert isinstance(value, str), (name, value)
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), (name, value)
    elif kind == "COMBO":
        choices = options.get("options", [])
        file_list = name.endswith("_name") and not [c for c in choices if not str(c).endswith(".safetensors")]
        if file_list:  # the model folders are empty here; the user's checkpoint or LoRA fills them
            assert str(value).endswith(".safetensors"), (name, value)
        else:
            assert value in choices, (name, value, choices)
    if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
        assert values[1] in ("fixed", "increment", "decrement", "randomize"), (name, values[1])
        return 2
    return 1


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_fits_the_node_schemas(schemas, path: Path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in nodes.values():
        if node["type"] in FRONTEND_NODES:
            assert all(isinstance(value, str) for value in node["widgets_values"])
            continue
        assert node["type"] in schemas, f"{path.name}: unknown node type {node['type']}"
        inputs, _ = schemas[node["type"]]
        sockets = {name: kind for name, kind, _ in inputs if kind not in WIDGET_TYPES}
        for socket in node["inputs"]:
            assert sockets.get(socket["name"]) == socket["type"], (path.name, node["type"], socket)
        linked = {s["name"] for s in node["inputs"] if s["link"] is not None}
        missing = [name for name, kind, o in inputs if kind not in WIDGET_TYPES and o["required"] and name not in linked]
        assert not missing, f"{path.name}: {node['type']} has unconnected inputs {missing}"
        values = list(node["widgets_values"])
        for name, kind, options in inputs:
            if kind in WIDGET_TYPES:
                assert values, f"{path.name}: {node['type']} lacks a value for {name}"
                used = widget_values_fit(name, kind, options, values)
                values = values[used:]
        assert not values, f"{path.name}: {node['type']} has extra widget values {values}"

    for link_id, source, source_slot, target, target_slot, link_type in workflow["links"]:
        source_node, target_node = nodes[source], nodes[target]
        output_type = schemas[source_node["type"]][1][source_slot]
        target_input = target_node["inputs"][target_slot]
        assert output_type == link_type == target_input["type"], (path.name, link_id, output_type, target_input)
        assert target_input["link"] == link_id
        assert link_id in source_node["outputs"][source_slot]["links"]


def test_there_is_a_workflow_for_every_category_and_one_for_several_concepts():
    seen, multi = set(), False
    for path in WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "FADEBuildPromptSet":
                concepts, category = node["widgets_values"][:2]
                seen.add(category)
                multi |= len([c for c in concepts.splitlines() if c.strip()]) > 1
    assert seen == CATEGORIES and multi


def test_the_apply_workflow_says_on_the_canvas_what_to_run_first():
    workflow = json.loads((REPO / "workflows" / "fade_apply_erased_lora.json").read_text())
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "Note"]
    chosen = next(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "FADEApplyErasedLoRA")
    writer = json.loads((REPO / "workflows" / "fade_object_airplane.json").read_text())
    prefix = next(node["widgets_values"][-1] for node in writer["nodes"] if node["type"] == "FADETrainEraser")
    assert chosen == f"{prefix}_00001.safetensors"  # the file the named workflow writes on its first run
    assert notes and "fade_object_airplane.json" in notes[0] and chosen in notes[0]
