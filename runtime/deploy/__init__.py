"""Serving a model: its interface (model_interface), Triton repositories (triton_*), DeepStream
configs (deepstream) and `ffx serve` (serving, with its Python-backend model triton_image_model)."""
