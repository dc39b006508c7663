"""Synthetic checks of the founding papers' mechanisms (engines.training): each moves in the
direction its paper states, on data where the right answer is planted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.training.identity import IdentityConfig, pair_scores, train_split, true_match_rate  # noqa: E402
from engines.training.model import (  # noqa: E402
    AGE_BINS,
    GatedAttributes,
    HeadConfig,
    HeadNet,
    TaskWeighting,
    masked_losses,
    reverse_gradient,
)


def _weights_after_training(mode: str, steps: int = 300) -> np.ndarray:
    """Two side tasks on one shared feature: task 0 is easy (its label is the sign of an
    input), task 1 is noise (random labels). Returns the final logged weights (easy, noisy)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    shared = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
    heads = torch.nn.ModuleList([torch.nn.Linear(16, 2), torch.nn.Linear(16, 2)])
    weighting = TaskWeighting(mode, 16, 2)
    params = [*shared.parameters(), *heads.parameters(), *weighting.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    logged = None
    for _ in range(steps):
        x = torch.from_numpy(rng.normal(size=(128, 8)).astype(np.float32))
        easy = (x[:, 0] > 0).long()
        noisy = torch.from_numpy(rng.integers(0, 2, 128))
        h = shared(x)
        losses = torch.stack([torch.nn.functional.cross_entropy(heads[0](h), easy, reduction="none"),
                              torch.nn.functional.cross_entropy(heads[1](h), noisy, reduction="none")], dim=1)
        total, logged = weighting(losses, torch.ones(128, 2, dtype=torch.bool), h)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    return logged.numpy()


def test_dynamic_weighting_moves_weight_to_the_easy_task() -> None:
    easy, noisy = _weights_after_training("dynamic")
    assert easy > 1.5 and noisy < 0.5, (easy, noisy)  # the weights of a sample sum to 2 (its two tasks)


def test_reverse_weighting_moves_weight_to_the_hard_task() -> None:
    easy, noisy = _weights_after_training("reverse")
    assert noisy > 1.5 and easy < 0.5, (easy, noisy)


def test_uncertainty_weighting_lowers_the_noisy_task() -> None:
    easy, noisy = _weights_after_training("uncertainty")
    assert easy > 4 * noisy, (easy, noisy)  # each weight tends to 1 / (its task's loss)


def test_fixed_weighting_stays_put() -> None:
    assert _weights_after_training("fixed", steps=20).tolist() == [1.0, 1.0]


def test_a_missing_label_gives_zero_loss_and_zero_gradient() -> None:
    torch.manual_seed(0)
    net = HeadNet(HeadConfig(inputs="embedding", hidden=16, dropout=0.0), 8, 4)
    x = torch.randn(4, 12)
    labels = {"gender": torch.tensor([1, -1, -1, -1]), "age": torch.tensor([30.0, float("nan"), 5.0, float("nan")]),
              "attributes": torch.tensor([[-1] * 9, [1, 0] + [-1] * 7, [-1] * 9, [-1] * 9]),
              "expression": torch.tensor([-1, -1, -1, 3])}
    h, out = net(x)
    for o in out.values():
        o.retain_grad()
    losses, mask = masked_losses(out, labels, 2.0)
    assert mask.tolist() == [[True, True, False, False], [False, False, True, False],
                             [False, True, False, False], [False, False, False, True]]
    assert (losses[~mask] == 0).all() and (losses[mask] > 0).all()
    losses.sum().backward()
    assert (out["gender"].grad[1:] == 0).all() and (out["gender"].grad[0] != 0).any()
    assert (out["age"].grad[[1, 3]] == 0).all() and (out["age"].grad[[0, 2]] != 0).any()
    assert (out["expression"].grad[:3] == 0).all() and (out["expression"].grad[3] != 0).any()
    attr_grad = out["attributes"].grad
    assert (attr_grad[[0, 2, 3]] == 0).all() and (attr_grad[1, 2:] == 0).all() and (attr_grad[1, :2] != 0).all()


def test_gradient_reversal_flips_and_scales() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.arange(15.0).view(5, 3)).sum().backward()
    assert torch.allclose(x.grad, -0.25 * torch.arange(15.0).view(5, 3))


def test_gated_attributes_learn_one_gate_per_attribute() -> None:
    """Attribute a depends only on input a: after training, each gate opens most on the units
    its own attribute uses, and the correlation layer starts as the identity."""
    torch.manual_seed(0)
    head = GatedAttributes(4, 4, correlation=True)
    assert torch.equal(head.correlation.weight, torch.eye(4))
    optimiser = torch.optim.Adam(head.parameters(), lr=2e-2)
    for _ in range(300):
        h = torch.randn(256, 4)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(h), (h > 0).float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    h = torch.randn(2000, 4)
    accuracy = ((head(h) > 0) == (h > 0)).float().mean(0)
    assert (accuracy > 0.95).all(), accuracy


def test_age_direction_is_removed_from_the_identity_part() -> None:
    """Embeddings = identity centre + age along a planted direction + noise. The split's age
    subspace must take in the direction (what is left of it in the identity part is under
    0.2 of its length), its age part must predict age, and nearest-neighbour identity
    accuracy on the identity part must stay at least 95%."""
    rng = np.random.default_rng(0)
    dim, people, shots = 32, 60, 8
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    centres = rng.normal(size=(people, dim))
    centres -= np.outer(centres @ direction, direction)
    identity = np.repeat(np.arange(people), shots)
    age = rng.uniform(0, 80, len(identity)).astype(np.float32)
    emb = (centres[identity] / np.sqrt(dim) * 3 + np.outer((age - 40) / 20, direction)
           + rng.normal(scale=0.15, size=(len(identity), dim))).astype(np.float32)

    def age_r2(x: np.ndarray) -> float:
        design = np.c_[x, np.ones(len(x))]
        coef, *_ = np.linalg.lstsq(design, age, rcond=None)
        return float(1 - (age - design @ coef).var() / age.var())

    def nn_accuracy(x: np.ndarray) -> float:
        v = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = v @ v.T
        np.fill_diagonal(sims, -2)
        return float((identity[sims.argmax(1)] == identity).mean())

    model = train_split(emb, identity, age, IdentityConfig(age_dims=4, epochs=300))
    with torch.no_grad():
        basis = model.subspace().numpy()
        ident, age_part = model(torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True)))
    left = np.linalg.norm(direction - basis @ (basis.T @ direction))
    assert left < 0.2, left
    assert age_r2(age_part.numpy()) > 0.9
    assert nn_accuracy(ident.numpy()) >= 0.95


def test_true_match_rate_at_a_false_match_rate() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(40, 16))
    identity = np.repeat(np.arange(20), 2)
    vectors[1::2] = vectors[::2] + rng.normal(scale=0.1, size=(20, 16))
    genuine, impostor = pair_scores(vectors, identity)
    assert len(genuine) == 20 and len(impostor) == 40 * 39 // 2 - 20
    tmr, threshold = true_match_rate(genuine, impostor, 1e-2)
    assert tmr == 1.0 and threshold < genuine.min()
    assert AGE_BINS == 101
