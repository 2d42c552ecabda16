"""Find a model's weights: a hub id or a local folder in the published Hugging Face layout.

The published layout is ``config.json`` + ``preprocessor_config.json`` + ``model.safetensors``
(or a sharded ``model.safetensors.index.json``). Pickle checkpoints (``pytorch_model.bin``) can run
arbitrary code when loaded, so they are refused unless the user passes ``--trust-pickle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from depthrt.errors import WeightsError
from depthrt.manifest import sha256_file

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Weights:
    """A resolved checkpoint folder and what the manifest records about it."""

    path: Path
    id: str
    revision: str | None
    config: dict
    use_safetensors: bool
    untrained: bool = False
    files: list[dict] = field(default_factory=list)


def _download(hub_id: str, trust_pickle: bool) -> tuple[Path, str | None]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(
            f"'{hub_id}' is a hub id, but huggingface_hub is not installed: pip install 'depthrt[export]', "
            "or pass --weights DIR with the downloaded files"
        ) from None
    patterns = ["*.json", "*.safetensors", "*.txt"] + (list(PICKLES) if trust_pickle else [])
    try:
        folder = snapshot_download(hub_id, allow_patterns=patterns)
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot get '{hub_id}' from the Hugging Face hub ({type(exc).__name__}: {reason[:160]}); "
            f"download it on a connected machine (huggingface-cli download {hub_id} --local-dir DIR) "
            "and pass --weights DIR"
        ) from None
    revision = Path(folder).name if Path(folder).parent.name == "snapshots" else None
    return Path(folder), revision


def resolve_weights(ref: str, trust_pickle: bool = False) -> Weights:
    """Resolve ``ref`` (hub id or local folder) to a checked checkpoint folder."""
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        if not local.exists():
            raise WeightsError(f"weights folder '{ref}' does not exist: pass a folder with config.json and "
                               "model.safetensors, or a hub id such as Intel/dpt-large")
        if not local.is_dir():
            raise WeightsError(f"weights '{ref}' is a file; pass the folder that holds config.json and "
                               "model.safetensors")
        path, revision, source_id = local.resolve(), None, str(local.resolve())
    else:
        path, revision = _download(ref, trust_pickle)
        source_id = ref
    config_path = path / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"'{path}' has no config.json, so it is not a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"'{config_path}' is not valid JSON ({exc}); download it again") from None
    has_safe = any((path / n).is_file() for n in SAFETENSORS)
    has_pickle = any((path / n).is_file() for n in PICKLES)
    if not has_safe:
        if has_pickle and not trust_pickle:
            raise WeightsError(
                f"'{path}' holds only a pickle checkpoint (pytorch_model.bin), which can run arbitrary code "
                "when loaded; convert it to safetensors, or pass --trust-pickle if you trust its source"
            )
        if not has_pickle:
            raise WeightsError(f"'{path}' has config.json but no model.safetensors: the download is "
                               "incomplete; fetch the weights file too")
    untrained = bool(json.loads((path / "depthrt_untrained.json").read_text()).get("untrained")) \
        if (path / "depthrt_untrained.json").is_file() else False
    weights = Weights(path=path, id=source_id, revision=revision, config=config,
                      use_safetensors=has_safe, untrained=untrained)
    weights.files = [
        {"name": f.name, "sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(path.iterdir())
        if f.is_file() and (f.suffix in (".json", ".safetensors") or (f.suffix == ".bin" and not has_safe))
    ]
    return weights
