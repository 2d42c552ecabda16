"""Translate a Hugging Face ``preprocessor_config.json`` into depthrt's processing specs.

``processing_from_hf(config) -> (preprocessing, postprocessing)``; both are plain
JSON-able dicts consumed by ``depthrt.processing`` (schema in that module's docstring).
The target is what transformers' PIL backends do (``DPTImageProcessorPil``,
``ZoeDepthImageProcessorPil``; transformers 5.x), which is also what the classic
"slow" processors did. Keys absent from the config take the processor class
defaults, copied below from the transformers source so transformers is not needed.
"""

from __future__ import annotations

IMAGENET_STANDARD_MEAN = [0.5, 0.5, 0.5]
IMAGENET_STANDARD_STD = [0.5, 0.5, 0.5]

# PIL resampling codes as stored in preprocessor_config.json ("resample": 3)
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# Class attributes of transformers.models.dpt.image_processing_pil_dpt.DPTImageProcessorPil
# (+ BaseImageProcessor.rescale_factor). size_divisor is not a class attribute: None.
DPT_DEFAULTS = {
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": 3,  # PILImageResampling.BICUBIC
    "keep_aspect_ratio": False,
    "ensure_multiple_of": 1,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_STANDARD_MEAN,
    "image_std": IMAGENET_STANDARD_STD,
    "do_pad": False,
    "size_divisor": None,
}

# Class attributes of ZoeDepthImageProcessorPil. Yes, ensure_multiple_of defaults to
# 1/32 there (published configs set 32); the rounding formula copes with fractions.
ZOEDEPTH_DEFAULTS = {
    "do_resize": True,
    "size": {"height": 384, "width": 512},
    "resample": 2,  # PILImageResampling.BILINEAR
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 1 / 32,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_STANDARD_MEAN,
    "image_std": IMAGENET_STANDARD_STD,
    "do_pad": True,
}

# Processor type names (image_processor_type, or legacy feature_extractor_type) -> family.
# Depth Anything V1/V2 ship DPTImageProcessor configs.
FAMILIES = {
    "DPTImageProcessor": "dpt",
    "DPTImageProcessorFast": "dpt",
    "DPTImageProcessorPil": "dpt",
    "DPTFeatureExtractor": "dpt",
    "ZoeDepthImageProcessor": "zoedepth",
    "ZoeDepthImageProcessorFast": "zoedepth",
    "ZoeDepthImageProcessorPil": "zoedepth",
}


def _size(value) -> tuple[int, int]:
    """transformers' get_size_dict for these processors (default_to_square=True)."""
    if isinstance(value, bool):
        raise ValueError(f"unsupported size {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict) and value.get("height") and value.get("width"):
        return int(value["height"]), int(value["width"])
    raise ValueError(f"unsupported size {value!r}: these processors need a height and a width")


def _resample(value) -> str:
    if isinstance(value, str) and value.lower() in PIL_RESAMPLE.values():
        return value.lower()
    if isinstance(value, int) and value in PIL_RESAMPLE:
        return PIL_RESAMPLE[value]
    raise ValueError(f"unsupported resample {value!r}")


def _triple(value, name: str) -> list[float]:
    vals = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (RGB), got {value!r}")
    return vals


def processing_from_hf(preprocessor_config: dict) -> tuple[dict, dict]:
    """Return ``(preprocessing, postprocessing)`` specs for a HF preprocessor config dict.

    Raises ValueError for an unknown processor type or an unsupported setting.
    """
    kind = preprocessor_config.get("image_processor_type") or preprocessor_config.get(
        "feature_extractor_type")
    family = FAMILIES.get(kind)
    if family is None:
        raise ValueError(f"unsupported image processor type {kind!r}; "
                         f"supported: {', '.join(sorted(FAMILIES))}")
    defaults = DPT_DEFAULTS if family == "dpt" else ZOEDEPTH_DEFAULTS
    # like the processors' __init__: a key that is absent or null takes the class default
    cfg = {key: default if preprocessor_config.get(key) is None else preprocessor_config[key]
           for key, default in defaults.items()}
    height, width = _size(cfg["size"])
    multiple = cfg["ensure_multiple_of"]
    if not isinstance(multiple, (int, float)) or isinstance(multiple, bool) or multiple <= 0:
        raise ValueError(f"unsupported ensure_multiple_of {multiple!r}")
    resample = _resample(cfg["resample"])
    resize = {
        "enabled": bool(cfg["do_resize"]),
        "height": height,
        "width": width,
        "keep_aspect": bool(cfg["keep_aspect_ratio"]),
        "multiple_of": int(multiple) if float(multiple).is_integer() else float(multiple),
        "resample": resample,
    }
    rescale = {"enabled": bool(cfg["do_rescale"]), "factor": float(cfg["rescale_factor"])}
    normalize = {"enabled": bool(cfg["do_normalize"]),
                 "mean": _triple(cfg["image_mean"], "image_mean"),
                 "std": _triple(cfg["image_std"], "image_std")}
    if family == "dpt":
        # PIL.Image.resize on the uint8 image; pad (after normalize) only if do_pad and
        # size_divisor is set, centred, zeros. post-process does not remove it.
        resize.update(backend="pil", align_corners=None)
        divisor = cfg["size_divisor"]
        if divisor is not None and (not isinstance(divisor, int) or divisor < 1):
            raise ValueError(f"unsupported size_divisor {divisor!r}")
        pad = {"enabled": bool(cfg["do_pad"]) and divisor is not None, "rule": "size_divisor",
               "mode": "constant", "value": 0.0, "size_divisor": divisor, "factor": None}
        order = ["resize", "rescale", "normalize", "pad"]
        remove_padding = False
    else:
        # rescale -> reflect pad int(sqrt(side/2)*3) -> torch interpolate(align_corners=True)
        # -> normalize; post-process crops the pad (do_remove_padding defaults to do_pad).
        if resample not in ("bilinear", "bicubic"):
            raise ValueError(f"ZoeDepth supports only bilinear/bicubic resample, got {resample!r}")
        resize.update(backend="torch", align_corners=True)
        pad = {"enabled": bool(cfg["do_pad"]), "rule": "zoedepth", "mode": "reflect",
               "value": None, "size_divisor": None, "factor": 3}
        order = ["rescale", "pad", "resize", "normalize"]
        remove_padding = bool(cfg["do_pad"])
    if resize["enabled"] and (height < 1 or width < 1):
        raise ValueError(f"unsupported size {cfg['size']!r}")
    preprocessing = {"order": order, "resize": resize, "rescale": rescale,
                     "normalize": normalize, "pad": pad}
    postprocessing = {"resize": "bicubic", "align_corners": False, "remove_padding": remove_padding}
    return preprocessing, postprocessing
