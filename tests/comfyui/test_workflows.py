"""The example workflows: each UI-format file converts to its API-format twin (the page's rules) against
the nodes' own INPUT_TYPES, and loads only nodes that exist; scripts/comfyui-check runs them in ComfyUI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "comfyui" / "workflows"
sys.path.insert(0, str(ROOT))

from comfyui import nodes  # noqa: E402
from comfyui.workflow_api import same_prompt, ui_to_api  # noqa: E402

# ComfyUI's core nodes the workflows use, described as its /object_info does.
CORE = {
    "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": True}]}},
                  "input_order": {"required": ["image"]}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
                  "input_order": {"required": ["images", "filename_prefix"]}},
}


def object_info() -> dict:
    info = dict(CORE)
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        info[name] = {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items() if k != "hidden"}}
    return info


PAIRS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".api.json"))


def test_the_guides_workflows_are_there():
    assert [p.stem for p in PAIRS] == ["depth_anything_v2_controlnet", "marigold_4step_depth", "midas_depth_normal"]


@pytest.mark.parametrize("ui_path", PAIRS, ids=lambda p: p.stem)
def test_ui_and_api_formats_agree(ui_path):
    api = json.loads(ui_path.with_name(ui_path.stem + ".api.json").read_text())
    assert same_prompt(ui_to_api(json.loads(ui_path.read_text()), object_info()), api)
    kinds = {node["class_type"] for node in api.values()}
    assert {"LoadImage", "DepthrtLoadBundle", "DepthrtDepthMap", "SaveImage"} <= kinds


def test_a_stale_workflow_is_caught():
    ui = json.loads((WORKFLOWS / "midas_depth_normal.json").read_text())
    depth = next(n for n in ui["nodes"] if n["type"] == "DepthrtDepthMap")
    depth["widgets_values"].append(7)  # a value the node has no input for
    with pytest.raises(ValueError, match="left over"):
        ui_to_api(ui, object_info())
    depth["type"] = "NoSuchNode"
    with pytest.raises(ValueError, match="no such node type"):
        ui_to_api(ui, object_info())
