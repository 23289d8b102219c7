"""Hugging Face integration: compress, accelerate, calibrate and decode causal LMs. Outside the core.

One file per job: ``config`` (the commands' options), ``load`` (HF folders, GGUF, SmolLM2),
``folder`` (the vqlogits model folder), ``compress`` (heads from a pretrained head's rows),
``accelerate`` (an index over them), ``calibrate``, ``training`` (the O(K) loss under HF),
``generate``, ``evaluate``, ``speed``, ``hidden``. Import the function from its module
(``from vqlogits.hf.compress import compress``): this package imports nothing, so that
``vqlogits.hf.config``, which the CLI reads its options from, does not import transformers.
"""
