"""ComfyUI's modules that the depthrt nodes call, with ComfyUI's call signatures, for tests without
ComfyUI: ``folder_paths`` (model folders), ``comfy.utils.ProgressBar`` and
``comfy.model_management``'s interrupt flag (the cancel button)."""

from __future__ import annotations

import os
import sys
import types


class InterruptProcessingException(Exception):
    pass


def install(monkeypatch, models_dir) -> types.SimpleNamespace:
    """Put fake ``folder_paths``, ``comfy.utils`` and ``comfy.model_management`` into sys.modules; returns
    what the tests read and steer: ``updates`` (progress bar calls), ``interrupt_after`` (set the cancel
    flag once that many progress updates were made)."""
    state = types.SimpleNamespace(updates=[], bars=0, interrupt_after=None, interrupted=False)

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(models_dir)
    folder_paths.folder_names_and_paths = {}

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths = folder_paths.folder_names_and_paths.setdefault(folder_name, ([], set()))[0]
        if full_folder_path in paths:
            paths.remove(full_folder_path)
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return folder_paths.folder_names_and_paths[folder_name][0][:]

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = get_folder_paths

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0
            state.bars += 1

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            state.updates.append((self.current, self.total))
            if state.interrupt_after is not None and len(state.updates) >= state.interrupt_after:
                state.interrupted = True

    management = types.ModuleType("comfy.model_management")
    management.InterruptProcessingException = InterruptProcessingException

    def throw_exception_if_processing_interrupted():
        if state.interrupted:
            state.interrupted = False
            raise InterruptProcessingException()

    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.utils, comfy.model_management = utils, management
    for name, module in (("folder_paths", folder_paths), ("comfy", comfy), ("comfy.utils", utils),
                         ("comfy.model_management", management)):
        monkeypatch.setitem(sys.modules, name, module)
    os.makedirs(os.path.join(models_dir, "depthrt"), exist_ok=True)
    return state
