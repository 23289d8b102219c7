"""The VQ-Logits head (arXiv 2505.10202): K code vectors, a token -> code map and a per-token bias."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as VF
from .. import quant
from .._checks import check_assignment, check_dims, check_hidden, check_sampling, check_state_shapes, check_targets
from ..cluster import balanced_assignment, code_means, kmeans
from ..code_index import CodeIndex
from ..screens import int4 as screen_int4
from .rows import frequent_split
from .sizes import codes

INITS = ("kmeans", "random", "frequency")


class VQLogitsHead(nn.Module):
    """Output head with ``logits = (h @ codebook.T)[..., assignment] + bias``.

    Attributes:
        codebook: Parameter (K, d).
        assignment: long buffer (V,), values in [0, K); saved in ``state_dict``.
        bias: Parameter (V,) or None.
        validate: check targets and assignments for range errors (each check syncs a GPU).

    The default map deals tokens to codes round-robin by id; use ``from_weight`` or
    ``set_assignment`` for k-means, random or frequency maps.
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        codebook_size: int,
        bias: bool = True,
        *,
        validate: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_dims(d_model, vocab_size, codebook_size)
        self.d_model, self.vocab_size, self.codebook_size = d_model, vocab_size, codebook_size
        self.validate = validate
        self.codebook = nn.Parameter(torch.empty(codebook_size, d_model, device=device, dtype=dtype))
        nn.init.normal_(self.codebook, std=0.02)
        self.register_buffer("assignment", balanced_assignment(vocab_size, codebook_size).to(device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(vocab_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self._index_key = None
        self._index: CodeIndex | None = None
        self._int4: tuple | None = None  # (the codebook's version, its 4-bit codes or their Int4Screen)

    # -- what the registry asks of a kind (heads/__init__.py) --------------------------------
    BUDGET_BIAS = True  # sized to a budget, the per-token bias is paid for first
    FREQUENT_ROWS = True  # built from rows, its first codes may hold frequent tokens' exact rows
    ROW_OPTIONS = ("codebook_size", "exact_tokens", "init", "head_budget")  # compress's options it takes

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "VQLogitsHead":
        return cls(d_model, vocab_size, sizes["codebook_size"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """K = rest / d codes."""
        K = codes(rest, d_model, vocab_size)
        return {"codebook_size": K}, K * d_model

    def row_inputs(self, h: torch.Tensor) -> dict:
        """The parameters whose rows make logits as dot products, and what they are dotted with for
        hidden states h (N, d): ``calibrate`` steps them in logit units."""
        return {"codebook": h}

    def config(self) -> dict:
        return {"bias": self.bias is not None, "codebook_size": self.codebook_size}

    @classmethod
    def rows_sizes(cls, options: dict) -> dict:
        """compress's options without a budget: ``exact_tokens`` of the K codes hold frequent tokens' rows."""
        K, exact = options["codebook_size"], options["exact_tokens"]
        if not isinstance(exact, int) or not 0 <= exact < K:
            raise ValueError(f"exact_tokens must be an int in [0, codebook_size={K}), got {exact!r}")
        return {"codebook_size": K - exact, "bias": options["bias"], "n_frequent": exact, "init": options["init"]}

    @classmethod
    @torch.no_grad()
    def from_rows(cls, dense: torch.Tensor, sizes: dict, frequent=None, seed: int = 0, progress: bool = True):
        """A head approximating ``dense`` (V, d): k-means of the rows, the codebook their centroids.
        ``n_frequent`` > 0: the first codes are the exact rows of the most frequent tokens
        (``frequent``: ids by decreasing count), singleton codes, and k-means shares the others
        among ``codebook_size`` codes; ``init`` random or frequency: ``from_weight``."""
        dense = dense.float()
        V, d = dense.shape
        K, bias = sizes["codebook_size"], sizes.get("bias", True)
        n = sizes.get("n_frequent", 0) if cls.FREQUENT_ROWS else 0
        if not n and sizes.get("init", "kmeans") != "kmeans":
            return cls.from_weight(dense, K, init=sizes["init"], seed=seed, bias=bias, progress=progress)
        tail, assignment = frequent_split(V, n, frequent, f"a {cls.__name__}")
        result = kmeans(dense[tail], K, seed=seed, progress=progress)
        head = cls.with_frequent(d, V, n, K, bias)
        assignment[tail] = n + result.assignment
        head.codebook.copy_(torch.cat([dense[frequent[:n]], result.centroids]) if n else result.centroids)
        head.set_assignment(assignment)
        return head

    @classmethod
    def with_frequent(cls, d_model: int, vocab_size: int, n_frequent: int, codebook_size: int, bias: bool):
        """A head whose first ``n_frequent`` codes are for frequent tokens, ``codebook_size`` after them."""
        return cls(d_model, vocab_size, n_frequent + codebook_size, bias=bias)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        codebook_size: int,
        init: str = "kmeans",
        counts: torch.Tensor | None = None,
        seed: int = 0,
        bias: bool = True,
        kmeans_iters: int = 25,
        progress: bool = False,
    ) -> "VQLogitsHead":
        """Build a head that approximates an existing (V, d) output matrix.

        init:
            ``"kmeans"``: codebook = k-means centroids of the rows, map = their clusters.
            ``"random"``: a random balanced map (seeded), codebook = mean row of each code.
            ``"frequency"``: tokens ranked by ``counts`` (V,) are dealt round-robin, so every
            code gets one of the K most frequent tokens; codebook = mean row of each code.
        The bias starts at zero.
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D (V, d) tensor, got {getattr(weight, 'shape', weight)!r}")
        vocab_size, d_model = weight.shape
        check_dims(d_model, vocab_size, codebook_size)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        generator = torch.Generator().manual_seed(seed)
        if init == "kmeans":
            result = kmeans(weight, codebook_size, iters=kmeans_iters, seed=seed, progress=progress)
            codebook, assignment = result.centroids, result.assignment
        else:
            if init == "random":
                order = torch.randperm(vocab_size, generator=generator)
            else:
                if counts is None or tuple(counts.shape) != (vocab_size,):
                    raise ValueError(
                        f"counts must be a ({vocab_size},) tensor for init='frequency', "
                        f"got {None if counts is None else tuple(counts.shape)}"
                    )
                order = torch.sort(counts.cpu(), descending=True, stable=True).indices
            assignment = balanced_assignment(vocab_size, codebook_size, order).to(weight.device)
            codebook = code_means(weight, assignment, codebook_size)
        head = cls(d_model, vocab_size, codebook_size, bias=bias, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            head.codebook.copy_(codebook)
        head.set_assignment(assignment)
        return head

    def set_assignment(self, assignment: torch.Tensor) -> None:
        """Replace the token -> code map (validated: shape (V,), values in [0, K))."""
        check_assignment(assignment, self.vocab_size, self.codebook_size)
        with torch.no_grad():
            self.assignment.copy_(assignment)

    # -- math --------------------------------------------------------------------------------
    def code_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Code logits ``h @ codebook.T``, (..., d) -> (..., K)."""
        check_hidden(h, self.d_model)
        return VF.code_logits(h, self.codebook)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Full logits, (..., d) -> (..., V); same as ``(h @ codebook.T)[..., assignment] + bias``."""
        return VF.scatter_logits(self.code_logits(h), self.assignment, self.bias)

    def log_code_mass(self) -> torch.Tensor:
        """``log sum_{v in code k} exp(b_v)``, (K,)."""
        return VF.log_code_mass(self.assignment, self.codebook_size, self.bias)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"):
        """Same as ``F.cross_entropy(self(h).flatten(0, -2), targets.flatten(), ...)``, in O(N*K) memory.

        Reductions: ``"mean"`` (over non-ignored tokens), ``"sum"``, ``"none"`` (shape of targets).
        """
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        return VF.vq_cross_entropy(h, targets, self.codebook, self.assignment, self.bias, ignore_index, reduction)

    # -- decoding ----------------------------------------------------------------------------
    def code_index(self) -> CodeIndex:
        """Sorted token layout for decoding, rebuilt only when the map or bias changes.

        Under ``torch.compile`` the index built by the last eager call is reused (comparing data
        pointers would break the graph): call ``head.code_index()`` once before compiling decode.
        """
        if self._index is not None and torch.compiler.is_compiling():
            return self._index
        bias = self.bias
        key = (
            self.assignment.data_ptr(),
            self.assignment._version,
            None if bias is None else (bias.data_ptr(), bias._version, bias.dtype),
        )
        if key != self._index_key:
            self._index = CodeIndex(self.assignment, self.codebook_size, bias)
            self._index_key = key
        return self._index

    @torch.no_grad()
    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """Same as ``self(h).argmax(-1)``, in O(K) per row: best code, then its best token. (..., d) -> (...).

        With the codebook held as 4-bit groups (``hold_int4_codebook``), on the CPU: the exact
        fp64 argmax of the logits (ties to the smallest id), reading the 4-bit codes."""
        screen = self._int4_screen()
        if screen is not None:
            check_hidden(h, self.d_model)
            index = self.code_index()
            ids, _ = screen.argmax(h.reshape(-1, self.d_model).float(), bias=index.best_bias, ids=index.best_token)
            return ids.reshape(h.shape[:-1])
        z = self.code_logits(h)
        return self.code_index().greedy(z.reshape(-1, self.codebook_size)).reshape(z.shape[:-1])

    def hold_int4_codebook(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int) -> None:
        """Decode greedy from the codebook's 4-bit form (a folder saved with ``part_bits`` 4): codes
        ``q`` (K, d) in [0, 15], ``scale`` and ``offset`` (K, d / group_size), which must
        dequantize (``quant.dequantize``) to the codebook exactly. ``greedy`` then reads them
        through the int4 kernel's certified screen (``screens.int4``), about a sixth of the fp32 codebook's
        bytes, until the codebook changes (a calibration step), when it goes back to fp32."""
        if not screen_int4.available(4, group_size, self.d_model, self.codebook.device):
            raise ValueError(
                f"group_size must be one of {screen_int4.GROUP_SIZES} dividing d_model={self.d_model} on the CPU,"
                f" got {group_size!r} on {self.codebook.device}"
            )
        if not torch.equal(quant.dequantize(q, scale, offset, group_size), self.codebook.detach()):
            raise ValueError("q, scale and offset do not dequantize to the codebook")
        self._int4 = (self._codebook_version(), (q, scale, offset, group_size))

    def _codebook_version(self) -> tuple:
        return (self.codebook.data_ptr(), self.codebook._version, self.codebook.device)

    def _int4_screen(self):
        """The held 4-bit codes' screen (built on first use) while the codebook is the one they
        dequantize to, else None."""
        if self._int4 is not None and self._int4[0] != self._codebook_version():
            self._int4 = None
        if self._int4 is not None and isinstance(self._int4[1], tuple):
            rows = lambda ids: self.codebook.detach()[ids]  # noqa: E731 (the fp32 codes, for the exact pass)
            self._int4 = (self._int4[0], screen_int4.Int4Screen(*self._int4[1], rows))
        return None if self._int4 is None else self._int4[1]

    @torch.no_grad()
    def sample(
        self,
        h: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Same distribution as ``vqlogits.functional.sample_logits(self(h), temperature, top_k, top_p)``.

        Draws a code, then a token inside it; top-k / top-p thresholds are found in code space.
        Allocates nothing of size (N, V). (..., d) -> (...).
        """
        check_sampling(temperature, top_k, top_p)
        z = self.code_logits(h)
        flat = z.reshape(-1, self.codebook_size)
        tokens = self.code_index().sample(flat, float(temperature), top_k, top_p, generator)
        return tokens.reshape(z.shape[:-1])

    @torch.no_grad()
    def sampling_probs(self, h, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
        """The exact distribution ``sample`` draws from, expanded to (..., V) (for tests and inspection)."""
        check_sampling(temperature, top_k, top_p)
        z = self.code_logits(h)
        probs = self.code_index().dense_probs(z.reshape(-1, self.codebook_size), float(temperature), top_k, top_p)
        return probs.reshape(*z.shape[:-1], self.vocab_size)

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward on the unfused path: ``h C^T`` and its two
        gradients (the fused kernel recomputes ``h C^T`` in backward: 8 N K d)."""
        return 6 * targets.numel() * self.codebook_size * self.d_model

    def decode_cost(self) -> dict:
        """Compact greedy decoding of one token: code logits, then per-code best-token tables."""
        K, d = self.codebook_size, self.d_model
        return {"flops": 2 * K * d + 2 * K, "bytes": 4 * K * d + 12 * K}

    # -- bookkeeping -------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        expected = {"codebook": self.codebook.shape, "assignment": (self.vocab_size,)}
        if self.bias is not None:
            expected["bias"] = (self.vocab_size,)
        check_state_shapes(state_dict, prefix, expected)
        if prefix + "assignment" in state_dict:
            check_assignment(state_dict[prefix + "assignment"], self.vocab_size, self.codebook_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, vocab_size={self.vocab_size}, "
            f"codebook_size={self.codebook_size}, bias={self.bias is not None}"
        )
