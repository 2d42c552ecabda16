"""depthrt_engines: ONNX graphs of a bundle -> TensorRT plans (`depthrt build`).

* ``config``: BuildConfig, the options that decide an engine;
* ``profiles``: optimisation profiles from the manifest's ranges (pure);
* ``plan``: the build plan and its cache key (pure; ``--plan-only`` prints it);
* ``cache``: ``BUNDLE/engines/<key>/`` with atomic writes, per-key locks and timing caches;
* ``trt_build``: the TensorRT calls (imported only when a build runs);
* ``build``: ``build_bundle``, tying them together; ``cli``: the `depthrt build` arguments.

Nothing here imports TensorRT at import time.
"""

from .build import build_bundle, make_plans
from .config import BuildConfig
from .plan import BuildPlan, Environment, cache_key, make_plan

__all__ = ["BuildConfig", "BuildPlan", "Environment", "build_bundle", "cache_key", "make_plan", "make_plans"]
