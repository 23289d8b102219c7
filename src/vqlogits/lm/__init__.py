"""Training LMs from scratch with any head: the harness, outside the core. One job per module:
``config`` (``TrainConfig``), ``model`` (GPT), ``train`` (the loop), ``evaluate``, ``experiments``
(eval, sweep), ``generate``."""
