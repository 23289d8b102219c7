"""Training LMs from scratch with any head: the harness, outside the core. One job per module:
``config``, ``data``, ``model``, ``train`` (the loop), ``evaluate``, ``experiments`` (eval, sweep),
``report``, ``scaling``, ``equal_compute``, ``learned_map``, ``analysis``, ``devdocs``, ``embedded``."""
