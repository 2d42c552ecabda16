"""Depth Anything 3, monocular presets (da3mono-large, da3metric-large): the PyTorch port
(``model``), its checkpoint loader (``loader``), tiny checkpoints (``tiny``), and the reference
pipeline (``reference``, with ``cvresize`` standing in for OpenCV)."""
