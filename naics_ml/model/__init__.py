"""The NAICS embedding model: shared frozen encoder + LoRA channels, MoE fusion, Lorentz output.

``naics_ml.model.config`` (``ModelConfig``) and ``naics_ml.model.channels`` import without torch;
the network is in ``naics_ml.model.network``.
"""
