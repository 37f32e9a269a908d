"""The PyTorch forum workflow, in jaxprune: global pruning of a model with an LSTM, ten rounds, then testing it.

In PyTorch one writes ``prune.global_unstructured(params, L1Unstructured, amount=0.1)``
ten times, expects 90% sparsity, gets 65.1%, and then finds ``weight_orig`` and
``weight_mask`` in the state dict and a warning from the LSTM about
non-contiguous weights. This script does the same steps in jaxprune: the
``amount=`` rounds reproduce PyTorch's numbers (and, where PyTorch is
installed, its masks, mask for mask), the ``sparsity=`` rounds reach 90%, and
``finalize`` returns plain params under the original names.

With PyTorch installed, it then brings the model pruned in PyTorch over as it
is (``jaxprune.integrations.torch.from_torch_state_dict``: the
``weight_orig``/``weight_mask`` pairs become params and bool masks), runs it,
checkpoints it with Orbax and compares the sizes on disk, and hands it back
as a plain ``state_dict`` that an unpruned PyTorch model loads with
``strict=True``.

  python examples/torch_migration.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

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
    model = torch_model(params)
    emb, lstm, fc = model["embedding"], model["lstm"], model["fc"]
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(np.array(params["embedding"]["weight"])))
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.array(params["lstm"]["layer_0"]["w_ih"])))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.array(params["lstm"]["layer_0"]["w_hh"])))
        fc.weight.copy_(torch.from_numpy(np.array(params["fc"]["weight"])))
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(lstm, name).copy_(torch.from_numpy(np.array(params["lstm"]["layer_0"][f"b_{name[5:7]}"])))
        fc.bias.copy_(torch.from_numpy(np.array(params["fc"]["bias"])))
    targets = [(emb, "weight"), (lstm, "weight_ih_l0"), (lstm, "weight_hh_l0"), (fc, "weight")]
    for _ in range(rounds):
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.1)
    return {
        "embedding": emb.weight_mask.bool().numpy(),
        "w_ih": lstm.weight_ih_l0_mask.bool().numpy(),
        "w_hh": lstm.weight_hh_l0_mask.bool().numpy(),
        "fc": fc.weight_mask.bool().numpy(),
        "state_dict_keys": sorted(k for k in lstm.state_dict() if k.endswith(("_orig", "_mask"))),
        "model": model,
    }


def torch_model(params):
    """The same model in PyTorch: an nn.ModuleDict, so its state_dict uses the names of ``params``."""
    import torch

    vocab, embed = params["embedding"]["weight"].shape
    classes, hidden = params["fc"]["weight"].shape
    return torch.nn.ModuleDict(
        {
            "embedding": torch.nn.Embedding(vocab, embed),
            "lstm": torch.nn.LSTM(embed, hidden),
            "fc": torch.nn.Linear(hidden, classes),
        }
    )


def torch_apply(model, tokens):
    import torch

    with torch.no_grad():
        hs, _ = model["lstm"](model["embedding"](torch.from_numpy(np.array(tokens)).T))
        return model["fc"](hs[-1]).numpy()


def directory_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def import_from_torch(model, tokens, out, expected_masks):
    """The PyTorch-pruned model brought over, checkpointed, and handed back: what a migrating user does."""
    import torch

    from jaxprune.integrations.torch import from_torch_state_dict, to_torch_state_dict

    state_dict = model.state_dict()  # embedding.weight_orig, embedding.weight_mask, lstm.weight_ih_l0_orig, ...
    # Embedding and Linear keep PyTorch's layouts (nothing is transposed unless layout= asks); the LSTM's
    # weight_ih_l0... are recognised and go to jp.init_lstm's layer_0/w_ih. So the names are the ones above.
    params, masks = from_torch_state_dict(state_dict)
    print("\nA model pruned in PyTorch, brought over (from_torch_state_dict):")
    print(
        f"  PyTorch's state_dict: {len(state_dict)} entries; imported: {sorted(params)}, sparsity "
        f"{float(jp.sparsity(masks)):.2%}"
    )
    same_masks = jax.tree.structure(masks) == jax.tree.structure(expected_masks) and all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(expected_masks))
    )
    print(f"  masks identical to jaxprune's amount=0.1 rounds above (biases None in both): {same_masks}")
    ours = apply(jp.apply_mask(params, masks), tokens)
    diff = float(np.abs(np.asarray(ours) - torch_apply(model, tokens)).max())
    print(f"  max |jaxprune - PyTorch| output difference: {diff:.1e}")

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    torch_bytes = buffer.getbuffer().nbytes
    dense = io.BytesIO()
    torch.save(to_torch_state_dict(params, masks), dense)
    with jp.Checkpointer(Path(out) / "imported") as ckpt:
        ckpt.save(0, {"params": params, "masks": masks})
    ckpt_bytes = directory_bytes(Path(out) / "imported")
    print(f"  PyTorch pruned state_dict (weight_orig + float weight_mask): {torch_bytes:,} bytes")
    print(f"  PyTorch plain state_dict (zeros baked in):                   {dense.getbuffer().nbytes:,} bytes")
    print(f"  jaxprune Orbax checkpoint (params + packed-bit masks):       {ckpt_bytes:,} bytes")

    back = torch_model(params)  # a fresh, unpruned PyTorch model: no hooks, no _orig/_mask
    back.load_state_dict(to_torch_state_dict(params, masks), strict=True)
    same = bool(np.array_equal(torch_apply(back, tokens), torch_apply(model, tokens)))
    print(f"  handed back with to_torch_state_dict, loaded strict=True: outputs identical: {same}")
    return {
        "import_max_diff": diff,
        "torch_pruned_bytes": torch_bytes,
        "checkpoint_bytes": ckpt_bytes,
        "export_identical": same,
        "imported_masks_identical": same_masks,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="(the script is already quick; kept for symmetry)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=None, help="where the imported model's checkpoint goes (default: a temporary dir)")
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
    result = {
        "amount_sparsity": float(jp.sparsity(amount_masks)),
        "sparsity": float(jp.sparsity(masks)),
        "same_as_torch": same,
    }
    if reference is not None:
        with tempfile.TemporaryDirectory() as tmp:
            result |= import_from_torch(reference["model"], tokens, args.out or tmp, amount_masks)
    return result


if __name__ == "__main__":
    main()
