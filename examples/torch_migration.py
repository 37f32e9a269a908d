"""The PyTorch forum workflow, in jaxprune: global pruning of a model with an LSTM, ten rounds, then testing it.

In PyTorch one writes ``prune.global_unstructured(params, L1Unstructured, amount=0.1)``
ten times, expects 90% sparsity, gets 65.1%, and then finds ``weight_orig`` and
``weight_mask`` in the state dict and a warning from the LSTM about
non-contiguous weights. This script does the same steps in jaxprune: the
``amount=`` rounds reproduce PyTorch's numbers (and, where PyTorch is
installed, its masks, mask for mask), the ``sparsity=`` rounds reach 90%, and
``finalize`` returns plain params under the original names.

  python examples/torch_migration.py [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp


def init_model(key, vocab=100, embed=32, hidden=64, classes=10):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "embedding": {"weight": jax.random.normal(k1, (vocab, embed))},
        "lstm": jp.init_lstm(k2, embed, hidden),
        "fc": {"weight": jax.random.normal(k3, (classes, hidden)) / 8.0, "bias": jnp.zeros(classes)},  # torch layout
    }


def apply(params, tokens):
    xs = params["embedding"]["weight"][tokens.T]
    hs, _ = jp.lstm(params["lstm"], xs)
    return hs[-1] @ params["fc"]["weight"].T + params["fc"]["bias"]


def torch_masks(params, rounds):
    """PyTorch's own result for the same weights, or None without PyTorch."""
    try:
        import torch
        from torch.nn.utils import prune
    except ImportError:
        return None
    emb = torch.nn.Embedding(*params["embedding"]["weight"].shape)
    lstm = torch.nn.LSTM(params["lstm"]["layer_0"]["w_ih"].shape[1], params["lstm"]["layer_0"]["w_hh"].shape[1])
    fc = torch.nn.Linear(params["fc"]["weight"].shape[1], params["fc"]["weight"].shape[0])
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(np.array(params["embedding"]["weight"])))
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.array(params["lstm"]["layer_0"]["w_ih"])))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.array(params["lstm"]["layer_0"]["w_hh"])))
        fc.weight.copy_(torch.from_numpy(np.array(params["fc"]["weight"])))
    targets = [(emb, "weight"), (lstm, "weight_ih_l0"), (lstm, "weight_hh_l0"), (fc, "weight")]
    for _ in range(rounds):
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.1)
    return {
        "embedding": emb.weight_mask.bool().numpy(),
        "w_ih": lstm.weight_ih_l0_mask.bool().numpy(),
        "w_hh": lstm.weight_hh_l0_mask.bool().numpy(),
        "fc": fc.weight_mask.bool().numpy(),
        "state_dict_keys": sorted(k for k in lstm.state_dict() if k.endswith(("_orig", "_mask"))),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="(the script is already quick; kept for symmetry)")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)

    params = init_model(jax.random.key(0))
    # Prunable: every weight matrix (biases stay dense), as in the forum post.
    masks0 = jp.init_masks(params)
    scores = jp.magnitude(params)

    print("PyTorch's meaning, amount=0.1 each round (10% of what is still unpruned):")
    masks = masks0
    for r in range(1, args.rounds + 1):
        masks = jp.prune(scores, masks, amount=0.1)
        print(f"  round {r:2d}: {float(jp.sparsity(masks)):6.2%} pruned   (1 - 0.9**{r} = {1 - 0.9**r:6.2%})")
    amount_masks = masks
    reference = torch_masks(params, args.rounds)
    same = None
    if reference is not None:
        same = bool(
            np.array_equal(amount_masks["embedding"]["weight"], reference["embedding"])
            and np.array_equal(amount_masks["lstm"]["layer_0"]["w_ih"], reference["w_ih"])
            and np.array_equal(amount_masks["lstm"]["layer_0"]["w_hh"], reference["w_hh"])
            and np.array_equal(amount_masks["fc"]["weight"], reference["fc"])
        )
        print(f"  identical to torch.nn.utils.prune.global_unstructured's masks: {same}")
        print(f"  (PyTorch's LSTM state_dict now holds {reference['state_dict_keys']})")

    print("\njaxprune's meaning, sparsity=0.09 * r (cumulative, of all prunable weights):")
    masks = masks0
    for r in range(1, args.rounds + 1):
        masks = jp.prune(scores, masks, sparsity=0.9 * r / args.rounds)
        print(f"  round {r:2d}: {float(jp.sparsity(masks)):6.2%} pruned")
    print(jp.summary(masks))

    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, 100)
    masked_out = jax.jit(lambda p, m: apply(jp.apply_mask(p, m), tokens))(params, masks)
    final = jp.finalize(params, masks)  # what you ship: plain params, the same names
    final_out = apply(final, tokens)
    assert jax.tree.structure(final) == jax.tree.structure(params)
    print("\nTesting the pruned model:")
    print(f"  finalized params keep their names: {sorted(final)} / lstm: {sorted(final['lstm']['layer_0'])}")
    print(f"  max |masked - finalized| output difference: {float(jnp.abs(masked_out - final_out).max()):.1e}")
    print(
        "\nWhy 65.1% and not 90%: each PyTorch round prunes 10% of the weights still left, so after k rounds "
        "0.9**k of them remain: 0.9**10 = 34.9%. jaxprune's sparsity= says where you want to end up after the "
        "call, counting earlier rounds, so ten rounds of 0.09, 0.18, ..., 0.90 end at 90.00%."
    )
    return {
        "amount_sparsity": float(jp.sparsity(amount_masks)),
        "sparsity": float(jp.sparsity(masks)),
        "same_as_torch": same,
    }


if __name__ == "__main__":
    main()
