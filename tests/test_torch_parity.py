"""Number-for-number parity with torch.nn.utils.prune on the same weights (no ties)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

torch = pytest.importorskip("torch")
prune_t = pytest.importorskip("torch.nn.utils.prune")


def torch_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 40), torch.nn.ReLU(), torch.nn.Linear(40, 20), torch.nn.Linear(20, 5)
    )


def as_params(model):
    """Torch layout ([out, in]) kept as is, so masks compare entry for entry."""
    return {
        str(i): {"weight": jnp.asarray(m.weight.detach().numpy())} for i, m in enumerate(model) if hasattr(m, "weight")
    }


def torch_masks(model):
    return {str(i): {"weight": m.weight_mask.bool().numpy()} for i, m in enumerate(model) if hasattr(m, "weight_mask")}


def assert_same(jax_masks, torch_masks_):
    assert jax_masks.keys() == torch_masks_.keys()
    for k in jax_masks:
        np.testing.assert_array_equal(np.asarray(jax_masks[k]["weight"]), torch_masks_[k]["weight"], err_msg=k)


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9, 17])
def test_l1_unstructured(amount):
    model = torch_model()
    params = as_params(model)
    for m in model:
        if hasattr(m, "weight"):
            prune_t.l1_unstructured(m, "weight", amount=amount)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), amount=amount, scope="layer")
    assert_same(masks, torch_masks(model))


def test_global_unstructured_one_shot():
    model = torch_model(1)
    params = as_params(model)
    targets = [(m, "weight") for m in model if hasattr(m, "weight")]
    prune_t.global_unstructured(targets, pruning_method=prune_t.L1Unstructured, amount=0.8)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), amount=0.8)
    assert_same(masks, torch_masks(model))


def test_global_unstructured_ten_rounds_of_amount_point_one_give_65_13_percent():
    model = torch_model(2)
    params = as_params(model)
    targets = [(m, "weight") for m in model if hasattr(m, "weight")]
    masks = jp.init_masks(params)
    scores = jp.magnitude(params)
    for _ in range(10):
        prune_t.global_unstructured(targets, pruning_method=prune_t.L1Unstructured, amount=0.1)
        masks = jp.prune(scores, masks, amount=0.1)
        assert_same(masks, torch_masks(model))
    total = sum(m.weight.numel() for m, _ in targets)
    torch_sparsity = sum(int((m.weight_mask == 0).sum()) for m, _ in targets) / total
    assert float(jp.sparsity(masks)) == pytest.approx(torch_sparsity, abs=1e-7)
    assert torch_sparsity == pytest.approx(1 - 0.9**10, abs=1e-3)  # 65.1% (rounded per round), not 90%
    # jaxprune's cumulative meaning reaches what people expected in the same ten rounds.
    masks = jp.init_masks(params)
    for r in range(1, 11):
        masks = jp.prune(scores, masks, sparsity=0.09 * r)
    assert float(jp.sparsity(masks)) == pytest.approx(round(0.9 * total) / total)


@pytest.mark.parametrize(("n", "dim", "amount"), [(2, 0, 0.5), (1, 1, 0.3), (float("inf"), 0, 3), (2, 1, 0.75)])
def test_ln_structured(n, dim, amount):
    model = torch_model(3)
    params = as_params(model)
    for m in model:
        if hasattr(m, "weight"):
            prune_t.ln_structured(m, "weight", amount=amount, n=n, dim=dim)
    masks = jp.prune(
        jp.magnitude(params),
        jp.init_masks(params),
        amount=amount,
        scope="layer",
        structure=jp.Structured(axis=dim, ord=n),
    )
    assert_same(masks, torch_masks(model))


def test_ln_structured_iterative_is_relative_to_remaining_channels():
    model = torch_model(4)
    params = as_params(model)
    masks = jp.init_masks(params)
    for _ in range(3):
        for m in model:
            if hasattr(m, "weight"):
                prune_t.ln_structured(m, "weight", amount=0.25, n=2, dim=0)
        masks = jp.prune(jp.magnitude(params), masks, amount=0.25, scope="layer", structure=jp.Structured(axis=0))
        assert_same(masks, torch_masks(model))


def empty_and_full_model(seed=5):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return torch.nn.Sequential(torch.nn.Linear(6, 0), torch.nn.Linear(0, 4), torch.nn.Linear(6, 5))


@pytest.mark.parametrize("amount", [0.0, 0.4, 1.0])
def test_empty_tensors_l1_and_ln_structured(amount):
    model = empty_and_full_model()
    params = as_params(model)
    for m in model:
        prune_t.l1_unstructured(m, "weight", amount=amount)
    assert_same(jp.prune(jp.magnitude(params), jp.init_masks(params), amount=amount, scope="layer"), torch_masks(model))
    model = empty_and_full_model()
    for m in model:
        prune_t.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    structured = jp.prune(
        jp.magnitude(params), jp.init_masks(params), amount=amount, scope="layer", structure=jp.Structured(axis=0)
    )
    assert_same(structured, torch_masks(model))


def test_empty_tensors_global_unstructured_and_int_amounts():
    model = empty_and_full_model()
    params = as_params(model)
    prune_t.global_unstructured([(m, "weight") for m in model], pruning_method=prune_t.L1Unstructured, amount=0.5)
    assert_same(jp.prune(jp.magnitude(params), jp.init_masks(params), amount=0.5), torch_masks(model))
    # An int count on an empty tensor: both refuse with PyTorch's message.
    with pytest.raises(ValueError, match="number of parameters to prune=0"):
        prune_t.l1_unstructured(empty_and_full_model()[1], "weight", amount=2)
    with pytest.raises(ValueError, match="number of parameters to prune=0"):
        jp.prune(jp.magnitude(params), jp.init_masks(params), amount=2, scope="layer")


def test_importance_scores_l1_unstructured():
    model = torch_model(6)
    params = as_params(model)
    rng = np.random.default_rng(0)
    scores = {k: {"weight": jnp.asarray(rng.random(v["weight"].shape), jnp.float32)} for k, v in params.items()}
    for i, m in enumerate(model):
        if hasattr(m, "weight"):
            prune_t.l1_unstructured(
                m, "weight", amount=0.6, importance_scores=torch.from_numpy(np.array(scores[str(i)]["weight"]))
            )
    assert_same(jp.prune(scores, jp.init_masks(params), amount=0.6, scope="layer"), torch_masks(model))


def test_ln_structured_with_scores_and_an_earlier_mask_counts_pruned_entries_as_zero():
    """The documented difference: PyTorch ranks slices by the raw importance scores, pruned entries included;
    jaxprune counts pruned entries as 0. With the earlier mask applied to the scores the two agree."""
    model = torch_model(7)
    params = as_params(model)
    rng = np.random.default_rng(1)
    scores = {k: {"weight": jnp.asarray(rng.random(v["weight"].shape), jnp.float32)} for k, v in params.items()}
    masks = jp.prune(scores, jp.init_masks(params), sparsity=0.5, scope="layer")
    for i, m in enumerate(model):
        if hasattr(m, "weight"):
            prune_t.custom_from_mask(m, "weight", torch.from_numpy(np.array(masks[str(i)]["weight"])))
            masked_scores = np.asarray(scores[str(i)]["weight"]) * np.asarray(masks[str(i)]["weight"])
            prune_t.ln_structured(
                m, "weight", amount=0.5, n=2, dim=0, importance_scores=torch.from_numpy(masked_scores)
            )
    ours = jp.prune(scores, masks, amount=0.5, scope="layer", structure=jp.Structured(axis=0))
    assert_same(ours, torch_masks(model))


def test_importance_scores_global_unstructured():
    model = torch_model(8)
    params = as_params(model)
    rng = np.random.default_rng(2)
    scores = {k: {"weight": jnp.asarray(rng.random(v["weight"].shape), jnp.float32)} for k, v in params.items()}
    targets = [(m, "weight") for m in model if hasattr(m, "weight")]
    importance = {
        (m, "weight"): torch.from_numpy(np.array(scores[str(i)]["weight"]))
        for i, m in enumerate(model)
        if hasattr(m, "weight")
    }
    prune_t.global_unstructured(
        targets, pruning_method=prune_t.L1Unstructured, importance_scores=importance, amount=0.7
    )
    assert_same(jp.prune(scores, jp.init_masks(params), amount=0.7), torch_masks(model))
