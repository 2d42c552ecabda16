"""depthrt nodes for ComfyUI: depth and normal maps from depthrt bundles (models/depthrt/<bundle>/).

Install: link or copy this folder into ComfyUI/custom_nodes/ and install depthrt into ComfyUI's Python;
`scripts/install-comfyui COMFY_DIR` in the depthrt repository does both. Example workflows are in
workflows/ (UI format to drag into the page; *.api.json for the HTTP API).
"""

try:
    import depthrt  # noqa: F401
except ImportError as exc:  # ComfyUI logs this line and goes on without the pack
    raise ImportError(f"the depthrt nodes need depthrt in ComfyUI's Python ({exc}); run "
                      "`scripts/install-comfyui COMFY_DIR` from the depthrt repository, or "
                      "`python -m pip install depthrt[cpu]` (depthrt[gpu] with an NVIDIA GPU) with ComfyUI's Python") from exc

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_model_folder

register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
