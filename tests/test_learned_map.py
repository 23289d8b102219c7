"""The learned map's gain estimate against the exact change of the log-likelihood, for every head with a map."""

import pytest
import torch

from vqlogits.heads import HybridHead, HybridTwoLevelHead, RVQHead, TwoLevelHead, VQLogitsHead, VQLowRankHead
from vqlogits.heads.learned_map import MapLearner

D, V, K, N = 8, 96, 6, 128


def make(kind: str):
    torch.manual_seed(0)
    if kind == "vq":
        head = VQLogitsHead(D, V, K)
    elif kind == "hybrid":
        head = HybridHead(D, V, 4, K)
    elif kind == "vq-lowrank":
        head = VQLowRankHead(D, V, K, rank=2)
    elif kind == "rvq":
        head = RVQHead(D, V, K, num_codebooks=2)
    elif kind == "twolevel":
        head = TwoLevelHead(D, V, K, token_dim=3)
    else:
        head = HybridTwoLevelHead(D, V, 4, K, token_dim=3)
    with torch.no_grad():  # no token dominates a row, so first order is accurate
        for p in head.parameters():
            p.normal_(0, 0.25)
    return head.double()


def maps(head):
    if isinstance(head, RVQHead):
        return [(head.assignments[m], lambda a, m=m: head.set_assignment(a, m)) for m in range(len(head.assignments))]
    inner = head.vq if isinstance(head, VQLowRankHead) else head
    return [(inner.assignment, inner.set_assignment)]


def window():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(0, V, (N,), generator=g)


def predicted_gains(learner, head):
    """improvement[m][v, c] = gain[v, c] - gain[v, current], as ``reassign`` ranks moves."""
    out = []
    for m, (assignment, _) in enumerate(maps(head)):
        gain = learner.gain(head, m)
        out.append(gain - gain.gather(1, assignment[:, None]))
    return out


@pytest.mark.parametrize("kind", ["vq", "hybrid", "vq-lowrank", "rvq", "twolevel", "hybrid-twolevel"])
def test_gain_is_the_first_order_change_of_the_log_likelihood(kind):
    head = make(kind)
    h, y = window()
    learner = MapLearner(head, frac=0.1, samples=N)  # all rows: no sampling noise
    learner.observe(head, h, y)
    base = -float(head.loss(h, y, reduction="sum").detach())
    g = torch.Generator().manual_seed(2)
    for m, (assignment, set_map) in enumerate(maps(head)):
        predicted, own_only, exact = [], [], []
        movable = [
            v for v in y.unique().tolist() if not (kind.startswith("hybrid") and int(assignment[v]) < head.n_frequent)
        ]
        for v in torch.tensor(movable)[torch.randperm(len(movable), generator=g)[:12]].tolist():
            old = int(assignment[v])
            for c in range(head.n_frequent if kind.startswith("hybrid") else 0, learner.own.shape[2]):
                if c == old:
                    continue
                new = assignment.clone()
                new[v] = c
                set_map(new)
                exact.append(-float(head.loss(h, y, reduction="sum").detach()) - base)
                new[v] = old
                set_map(new)
                predicted.append(float(predicted_gains(learner, head)[m][v, c]))
                own_only.append(float(learner.own[m, v, c] - learner.own[m, v, old]))
        predicted, own_only, exact = torch.tensor(predicted), torch.tensor(own_only), torch.tensor(exact)
        budget = 0.03 * float(exact.abs().max())
        if kind.endswith("twolevel"):  # a move only changes within-code normalisers: the rule is exact
            torch.testing.assert_close(predicted, exact, rtol=1e-4, atol=1e-4)
        else:  # first order in the probability a token takes from each row: small next to the gains
            assert float((predicted - exact).abs().max()) < budget
        assert float((own_only - exact).abs().max()) > 2 * budget, (
            float((own_only - exact).abs().max()) / budget
        )  # control: the bound catches a rule without the taken term


@pytest.mark.parametrize("kind", ["vq", "hybrid", "vq-lowrank", "rvq", "twolevel", "hybrid-twolevel"])
def test_reassign_raises_the_window_likelihood(kind):
    head = make(kind)
    h, y = window()
    before = [a.clone() for a, _ in maps(head)]
    learner = MapLearner(head, frac=0.2, samples=N)
    learner.observe(head, h, y)
    loss = float(head.loss(h, y, reduction="sum").detach())
    moved = learner.reassign(head)
    assert moved > 0
    assert float(head.loss(h, y, reduction="sum").detach()) < loss
    n_seen = len(y.unique())
    changed = sum(int((a != b).sum()) for (a, _), b in zip(maps(head), before, strict=True))
    assert changed == round(moved * len(before) * V) and changed <= len(before) * 0.2 * n_seen
    assert float(learner.own.abs().sum()) == 0 and float(learner.seen.sum()) == 0  # window cleared
    if kind.startswith("hybrid"):  # frequent tokens keep their own codes; no tail token joins them
        a, b = maps(head)[0][0], before[0]
        assert torch.equal(a[b < head.n_frequent], b[b < head.n_frequent])
        assert bool((a[b >= head.n_frequent] >= head.n_frequent).all())
    if kind == "rvq":
        assert all(not torch.equal(a, b) for (a, _), b in zip(maps(head), before, strict=True))


def test_sampled_rows_estimate_matches_the_exact_factorised_rule():
    """vq-lowrank with a zero residual is plain VQ: its sampled-rows rule, over all rows, must equal
    the factorised VQ rule; with fewer rows it is an unbiased estimate."""
    head = make("vq-lowrank")
    with torch.no_grad():
        head.up.zero_()
    h, y = window()
    exact, sampled = MapLearner(head.vq, 0.1), MapLearner(head, 0.1, samples=N)
    exact.observe(head.vq, h, y), sampled.observe(head, h, y)
    weight = head.vq.bias.detach().exp()[:, None].float()
    torch.testing.assert_close(sampled.taken[0], weight * exact.taken[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sampled.own, exact.own)
    few = MapLearner(head, 0.1, samples=16)
    for _ in range(400):
        few.observe(head, h, y)
    torch.testing.assert_close(few.taken[0] / 400, weight * exact.taken[0], rtol=0.15, atol=0.05)


def test_learner_state_round_trips_and_bad_input_is_refused():
    head = make("rvq")
    h, y = window()
    a = MapLearner(head, 0.1, samples=32, seed=3)
    a.observe(head, h, y)
    b = MapLearner(head, 0.1, samples=32, seed=3)
    b.load_state_dict(a.state_dict())
    a.observe(head, h, y), b.observe(head, h, y)  # same sampled rows after the restore
    assert torch.equal(a.taken, b.taken) and torch.equal(a.own, b.own)
    with pytest.raises(ValueError, match="needs a head with a token -> code map"):
        MapLearner(torch.nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match="reassign_frac must be in"):
        MapLearner(head, 0.0)
    with pytest.raises(ValueError, match=r"codebook must be an int in \[0, 2\), got 2"):
        head.set_assignment(head.assignments[0].clone(), 2)
