"""UI-format workflows (what the ComfyUI page saves and loads) turned into the API format (what
``POST /prompt`` takes), the way the page does it: linked inputs become ``[node id, output slot]``,
the other inputs take the node's ``widgets_values`` in input order. Used to prove that each example
workflow's two files agree and that the UI file fits the nodes ComfyUI reports (``/object_info``).
"""

from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
MUTED_OR_BYPASSED = (2, 4)


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def extra_widget_values(name: str, spec) -> int:
    """Values the page stores after an input's own: the seed's 'control after generate' and the
    image upload button."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI-format workflow; ValueError names the first node that does not fit."""
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in MUTED_OR_BYPASSED:
            continue
        where = f"node {node['id']} ({node['type']})"
        info = object_info.get(node["type"])
        if info is None:
            raise ValueError(f"{where}: ComfyUI has no such node type")
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", []) if order else list(specs)
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in names:
            spec = specs[name]
            if name in linked:
                link = links.get(linked[name])
                if link is None or link[3] != node["id"]:
                    raise ValueError(f"{where}: input {name} names link {linked[name]}, which is not in the workflow")
                inputs[name] = [str(link[1]), link[2]]
                if is_widget(spec):  # a widget turned into an input keeps its stored value
                    del values[:1 + extra_widget_values(name, spec)]
            elif is_widget(spec):
                if not values:
                    raise ValueError(f"{where}: no stored value for input {name}")
                inputs[name] = values.pop(0)
                del values[:extra_widget_values(name, spec)]
            elif name in info["input"].get("required", {}):
                raise ValueError(f"{where}: required input {name} is not linked")
        if values:
            raise ValueError(f"{where}: {len(values)} stored widget value(s) left over: {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def same_prompt(a: dict, b: dict) -> bool:
    """Whether two API prompts run the same nodes with the same inputs (titles and metadata aside)."""
    strip = lambda p: {k: (v["class_type"], v["inputs"]) for k, v in p.items()}  # noqa: E731
    return strip(a) == strip(b)
