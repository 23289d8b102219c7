"""What ``compress``, ``accelerate`` and ``calibrate`` depend on: one dataclass each, whose fields
are the commands' options (``vqlogits.config.option``), checked before anything is loaded and
saved in the model folder's vqlogits.json."""

from __future__ import annotations

from dataclasses import dataclass

from .. import quant
from ..config import check_choices, check_ints, option
from ..data.embedded import MODEL_HELP
from ..heads import FROM_ROWS, KINDS, SIZES
from ..heads.vq import INITS

DTYPES = ("", "float32", "float16", "bfloat16")
DTYPE_HELP = "float32, float16 or bfloat16 for the weights written; empty: the smallest that holds the source exactly"
OVERWRITE_HELP = "replace what --out holds (default: refuse anything but an interrupted {})"
CACHE_HELP = "folder for embedded data and token caches; empty: $VQLOGITS_CACHE, else ~/.cache/vqlogits"


@dataclass
class CompressConfig:
    """``vqlogits compress``: a causal LM's output layer replaced by a smaller head built from its rows."""

    model: str = option("smollm2", MODEL_HELP)
    out: str = option("", "folder for the compressed model", required=True)
    head: str = option("vq", "head to build from the rows (heads/: each kind's from_rows)", choices=FROM_ROWS)
    head_budget: float = option(
        0.0, "> 0: size the head to this fraction of the dense head's parameters, as training does; 0: the sizes below"
    )
    codebook_size: int = option(SIZES["codebook_size"], "K, the codes (the tail codes of the hybrids)")
    token_dim: int = option(SIZES["token_dim"], "e of the two-level heads")
    init: str = option("kmeans", "how a vq head's codes are built from the rows", choices=INITS)
    exact_tokens: int = option(
        0, "frequent tokens of --corpus with exact rows: codes spent on them (vq), or the hybrids' frequent tokens"
    )
    corpus: str = option("pydocs", "corpus for token frequencies (frequent tokens' exact rows)")
    seed: int = option(0, "k-means seed")
    bits: int = option(4, "quantized: bits per weight, 1 to 8")
    group_size: int = option(32, "quantized: weights per scale and offset")
    method: str = option("hqq", "quantized: rounding", choices=quant.METHODS)
    part_bits: int = option(0, "hybrid heads: store the codebook and token vectors at 8 or 4 bits; 0: fp")
    bias: bool = option(SIZES["bias"], "a per-token bias (trained by calibrate)")
    dtype: str = option("", DTYPE_HELP, choices=DTYPES)
    overwrite: bool = option(False, OVERWRITE_HELP.format("compress"), flag=True)
    cache: str = option("", CACHE_HELP)

    def check(self) -> None:
        check_choices(self)
        if not self.out:
            raise ValueError("out is required: the folder for the compressed model")
        if not isinstance(self.head_budget, (int, float)) or not 0 <= self.head_budget <= 1:
            raise ValueError(f"head_budget must be in [0, 1], got {self.head_budget!r}")
        check_ints(self, ("codebook_size", "token_dim"), 1)
        check_ints(self, ("exact_tokens", "part_bits"), 0)
        if "bits" in KINDS[self.head].cls.ROW_OPTIONS:
            quant.check(self.bits, self.group_size, 0)  # the row length is checked once the model is loaded
        if self.part_bits not in (0, 4, 8):
            raise ValueError(f"part_bits must be 0, 4 or 8, got {self.part_bits!r}")


@dataclass
class AccelerateConfig:
    """``vqlogits accelerate``: the output rows indexed for fast decoding with the model's own logits."""

    model: str = option("smollm2", MODEL_HELP)
    out: str = option("", "folder for the accelerated model", required=True)
    clusters: int = option(0, "K, balanced clusters of ceil(V / K) rows; 0: a power of 2 near V / 48")
    probes: int = option(0, "clusters read by approximate greedy; 0: K / 8 (heads/indexed.py)")
    spherical: bool = option(False, "cluster the rows' directions instead of the rows", flag=True)
    corpus: str = option("pydocs", "text whose hidden states set the clustering metric")
    hidden_tokens: int = option(16384, "hidden states for the metric; 0: plain k-means")
    seed: int = option(0, "k-means seed")
    dtype: str = option("", DTYPE_HELP, choices=DTYPES)
    overwrite: bool = option(False, OVERWRITE_HELP.format("accelerate"), flag=True)
    cache: str = option("", CACHE_HELP)

    def check(self) -> None:
        check_choices(self)
        if not self.out:
            raise ValueError("out is required: the folder for the accelerated model")
        check_ints(self, ("clusters", "probes", "hidden_tokens", "seed"), 0)


@dataclass
class CalibrateConfig:
    """``vqlogits calibrate``: stage 1 trains the head on cached hidden states, stage 2 the last layers too."""

    folder: str = option("", "a compressed model folder", positional=True)
    corpus: str = option("pydocs", "training text")
    budget_minutes: float = option(10.0, "wall-clock budget over both stages, hidden-state caching included; resumable")
    max_steps: int = option(
        0, "also stop each stage after this many steps: a budget that does not depend on the machine's load; 0: none"
    )
    stages: str = option("12", "1: head only, 2: last layers + head, 12: both", choices=("1", "2", "12"))
    kl_weight: float = option(1.0, "weight of KL(original || compressed) beside cross-entropy")
    train_layers: int = option(4, "blocks trained in stage 2; 0: all weights")
    stage1_share: float = option(0.3, "share of the budget for stage 1 when both stages run")
    hidden_tokens: int = option(32768, "stage 1: tokens whose hidden states are cached")
    block: int = option(256, "tokens per sequence")
    batch: int = option(4, "sequences per step")
    lr_head: float = option(3e-3, "learning rate of the head's biases, scales and other parameters that are not rows")
    row_step: float = option(
        0.6,
        "nats: how far one step moves a row's logit for a mean hidden state; rows (codebook, exact rows) learn at"
        " row_step / mean ||h||_1",
    )
    lr_model: float = option(3e-5, "stage 2: learning rate of the trained blocks")
    reassign_every: int = option(50, "stage 1 learns the token -> code map every N steps; 0: a fixed map")
    reassign_frac: float = option(0.05, "at most this fraction of the seen tokens move per reassignment")
    seed: int = option(0, "batches and map moves")
    cache: str = option("", CACHE_HELP)

    def check(self) -> None:
        check_choices(self)
        if not self.folder:
            raise ValueError("folder is required: a compressed model folder")
        for name, low, high in (("budget_minutes", 0, float("inf")), ("stage1_share", 0, 1), ("reassign_frac", 0, 1)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low < value <= high):
                raise ValueError(f"{name} must be a number in ({low}, {high}], got {value!r}")
        for name in ("kl_weight", "lr_head", "row_step", "lr_model"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        check_ints(self, ("max_steps", "reassign_every", "train_layers", "seed"), 0)
        check_ints(self, ("hidden_tokens", "block", "batch"), 1)
