"""Wanda and SparseGPT against NumPy references written from the papers, plus their invariants and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.oneshot import sparsegpt, wanda

# ---------------------------------------------------------------- references (NumPy, [out, in], straightforward loops)


def prune_first(score, dead, k):
    """Flat indices of the k entries pruned first: dead, then NaN, then the lowest score, then the earlier index."""
    score = np.asarray(score).ravel()
    order = np.lexsort((np.arange(score.size), np.nan_to_num(score, nan=-1.0), ~np.isnan(score), ~dead.ravel()))
    return order[:k]


def wanda_reference(w, norms, sparsity=None, nm=None):
    """Sun et al. 2023: S_ij = |W_ij| * ||X_j||, compared within each output (row); True = keep."""
    score = np.abs(w.astype(np.float32)) * norms.astype(np.float32)  # the same float32 product, so ties agree
    out, n_in = w.shape
    keep = np.ones(w.shape, bool)
    no_dead = np.zeros(n_in, bool)
    for i in range(out):
        if nm is None:
            keep[i, prune_first(score[i], no_dead, round(sparsity * n_in))] = False
        else:
            n, m = nm
            for g in range(0, n_in, m):
                keep[i, g + prune_first(score[i, g : g + m], no_dead[g : g + m], m - n)] = False
    return keep


def sparsegpt_reference(w, h, sparsity=None, nm=None, blocksize=128, percdamp=0.01):
    """Frantar & Alistarh 2023, Algorithm 1 as in its reference code, in float64; exact count per block.

    Unstructured ties: dead first, then the lower score, then the earlier input, then the earlier output.
    """
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    out, n_in = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * np.mean(np.diag(h)) * np.eye(n_in)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    keep = np.ones(w.shape, bool)
    for i1 in range(0, n_in, blocksize):
        i2 = min(i1 + blocksize, n_in)
        c = i2 - i1
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        q1, err1 = np.zeros_like(w1), np.zeros_like(w1)
        d = np.diag(u1)
        dead1 = np.broadcast_to(dead[i1:i2], (out, c))
        pruned = np.zeros((out, c), bool)
        if nm is None:
            # Flat order input-major (the block transposed), so "earlier index" = earlier input, then output.
            first = prune_first((w1**2 / d**2).T, dead1.T, round(sparsity * out * c))
            flat = np.zeros(c * out, bool)
            flat[first] = True
            pruned = flat.reshape(c, out).T | dead1
        for i in range(c):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                for r in range(out):
                    score = w1[r, i : i + m] ** 2 / d[i : i + m] ** 2
                    pruned[r, i + prune_first(score, dead[i1 + i : i1 + i + m], m - n)] = True
                pruned[:, i : i + m] |= dead1[:, i : i + m]
            col = w1[:, i]
            q = np.where(pruned[:, i], 0.0, col)
            err = (col - q) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            q1[:, i], err1[:, i] = q, err
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~pruned
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w, keep


# ---------------------------------------------------------------------------------------------------------- data


def layer(seed, out, n_in, dead=(), tokens=None, mix=0.3):
    """A [out, in] weight and calibration inputs X [tokens, in] with correlated features; dead inputs are zero."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, n_in)).astype(np.float32)
    z = rng.standard_normal((tokens or 3 * n_in, n_in))
    x = z @ (np.eye(n_in) + mix * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in))
    x[:, list(dead)] = 0.0
    return w, x


def in_layout(w_out_in, in_axis):
    return w_out_in.T if in_axis in (0, -2) else w_out_in


def hessian(x):
    return (x.T @ x).astype(np.float32)


def norms(x):
    return np.sqrt(np.sum(x**2, axis=0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------- wanda

WANDA_CASES = [
    dict(seed=0, out=16, n_in=32, sparsity=0.5, in_axis=0),
    dict(seed=1, out=24, n_in=40, sparsity=0.3, in_axis=1),
    dict(seed=2, out=48, n_in=96, sparsity=0.7, in_axis=-2),
    dict(seed=3, out=20, n_in=36, nm=(2, 4), in_axis=0),
    dict(seed=4, out=16, n_in=64, nm=(1, 8), in_axis=-1),
]


@pytest.mark.parametrize("case", WANDA_CASES)
def test_wanda_matches_reference(case):
    case = dict(case)
    w, x = layer(case.pop("seed"), case.pop("out"), case.pop("n_in"), dead=(3, 5))
    in_axis = case.pop("in_axis")
    got = wanda(jnp.asarray(in_layout(w, in_axis)), jnp.asarray(norms(x)), in_axis=in_axis, **case)
    assert got.dtype == jnp.bool_ and got.shape == in_layout(w, in_axis).shape
    np.testing.assert_array_equal(np.asarray(in_layout(got, in_axis)), wanda_reference(w, norms(x), **case))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.35, 0.5, 0.55, 1.0])
def test_wanda_prunes_exactly_round_s_n_per_output_with_ties(sparsity):
    rng = np.random.default_rng(7)
    w = rng.integers(-2, 3, (10, 12)).astype(np.float32)  # [in, out], heavy ties (and zeros)
    n = rng.integers(0, 3, 10).astype(np.float32)
    mask = np.asarray(wanda(jnp.asarray(w), jnp.asarray(n), sparsity=sparsity))
    np.testing.assert_array_equal((~mask).sum(axis=0), round(sparsity * 10))
    np.testing.assert_array_equal(mask.T, wanda_reference(w.T, n, sparsity=sparsity))


def test_wanda_tie_rule_prunes_the_earlier_input_first():
    kernel = jnp.ones((8, 3))  # [in, out]: every score equal
    mask = wanda(kernel, jnp.ones(8), sparsity=0.5)
    np.testing.assert_array_equal(np.asarray(mask), np.repeat(np.arange(8) >= 4, 3).reshape(8, 3))
    # Equal scores from different factors: |w| * ||x|| = 2 for inputs 1, 2 and 3; input 0 scores 1.
    mask = wanda(jnp.asarray([[1.0, 2.0, 1.0, 4.0]]), jnp.asarray([1.0, 1.0, 2.0, 0.5]), sparsity=0.5, in_axis=1)
    np.testing.assert_array_equal(np.asarray(mask), [[False, False, True, True]])
    mask = wanda(jnp.asarray([[1.0, 1.0, 1.0, 1.0]]), jnp.ones(4), nm=(2, 4), in_axis=1)
    np.testing.assert_array_equal(np.asarray(mask), [[False, False, True, True]])


def test_wanda_nan_scores_are_pruned_first():
    kernel = jnp.asarray([[3.0, jnp.nan, 1.0, 2.0, 0.5, 4.0]])
    mask = wanda(kernel, jnp.ones(6), sparsity=2 / 6, in_axis=1)
    np.testing.assert_array_equal(np.asarray(mask), [[True, False, True, True, False, True]])


def test_wanda_nm_prunes_m_minus_n_in_every_group():
    w, x = layer(11, 12, 32)
    for n, m in [(2, 4), (0, 4), (4, 4), (3, 8)]:
        mask = np.asarray(wanda(jnp.asarray(w.T), jnp.asarray(norms(x)), nm=(n, m)))
        np.testing.assert_array_equal((~mask).reshape(32 // m, m, 12).sum(axis=1), m - n)


def test_wanda_sparsity_zero_keeps_everything_and_one_prunes_everything():
    w, x = layer(12, 8, 16, dead=(0,))
    assert np.asarray(wanda(jnp.asarray(w), jnp.asarray(norms(x)), sparsity=0.0, in_axis=1)).all()
    assert not np.asarray(wanda(jnp.asarray(w), jnp.asarray(norms(x)), sparsity=1.0, in_axis=1)).any()


def test_wanda_under_jit():
    w, x = layer(13, 16, 32, dead=(1,))
    f = jax.jit(wanda, static_argnames=("sparsity", "nm", "in_axis"))
    for kw in [dict(sparsity=0.4), dict(nm=(2, 4), in_axis=1)]:
        kernel = jnp.asarray(in_layout(w, kw.get("in_axis", 0)))
        np.testing.assert_array_equal(np.asarray(f(kernel, norms(x), **kw)), np.asarray(wanda(kernel, norms(x), **kw)))


# ------------------------------------------------------------------------------------------------------ sparsegpt

SPARSEGPT_CASES = [
    dict(seed=20, out=16, n_in=40, sparsity=0.5, blocksize=16, in_axis=0),  # 3 blocks, the last 8 wide
    dict(seed=21, out=24, n_in=64, sparsity=0.6, blocksize=8, in_axis=1),  # 8 blocks: several scanned groups
    dict(seed=22, out=48, n_in=96, sparsity=0.3, blocksize=32, in_axis=-2),
    dict(seed=23, out=20, n_in=36, sparsity=0.5, blocksize=128, in_axis=-1),  # one block wider than the kernel
    dict(seed=24, out=16, n_in=48, nm=(2, 4), blocksize=16, in_axis=0),
    dict(seed=25, out=32, n_in=40, nm=(2, 4), blocksize=8, in_axis=1),
    dict(seed=26, out=16, n_in=64, nm=(3, 8), blocksize=24, in_axis=0, percdamp=0.1),
]


@pytest.mark.parametrize("case", SPARSEGPT_CASES)
def test_sparsegpt_matches_reference(case):
    case = dict(case)
    w, x = layer(case.pop("seed"), case.pop("out"), case.pop("n_in"), dead=(2, 9))
    in_axis = case.pop("in_axis")
    h = hessian(x)
    new, mask = sparsegpt(jnp.asarray(in_layout(w, in_axis)), jnp.asarray(h), in_axis=in_axis, **case)
    assert (
        new.dtype == jnp.float32 and mask.dtype == jnp.bool_ and new.shape == mask.shape == in_layout(w, in_axis).shape
    )
    ref_w, ref_keep = sparsegpt_reference(w, h, **case)
    new, mask = in_layout(np.asarray(new), in_axis), in_layout(np.asarray(mask), in_axis)
    np.testing.assert_array_equal(mask, ref_keep)
    np.testing.assert_allclose(new, ref_w, rtol=1e-5, atol=1e-5 * np.abs(ref_w).max())  # seen: ~3e-7
    assert np.all(new[~mask] == 0.0)
    assert not mask[:, [2, 9]].any()


def test_sparsegpt_prunes_exactly_its_count_in_every_block():
    w, x = layer(30, 12, 44)
    for sparsity in [0.25, 0.5, 0.9]:
        _, mask = sparsegpt(jnp.asarray(w.T), jnp.asarray(hessian(x)), sparsity=sparsity, blocksize=16)
        pruned = (~np.asarray(mask)).sum(axis=1)  # per input, [in, out] layout
        for i1 in range(0, 44, 16):
            width = min(16, 44 - i1)
            assert pruned[i1 : i1 + width].sum() == round(sparsity * 12 * width)


def test_sparsegpt_tie_rule_prunes_the_earlier_input_then_the_earlier_output():
    # Equal weights and H = I: every score in a block ties and U is diagonal, so nothing moves.
    kernel = jnp.ones((6, 4))  # [in, out]
    new, mask = sparsegpt(kernel, jnp.eye(6), sparsity=0.5, blocksize=3)
    expected = np.ones((6, 4), bool)
    expected.reshape(2, 12)[:, :6] = False  # each block of 3 inputs: its first 6 entries in (input, output) order
    np.testing.assert_array_equal(np.asarray(mask), expected)
    np.testing.assert_array_equal(np.asarray(new), expected.astype(np.float32))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.85])
def test_sparsegpt_heavy_ties_against_reference(sparsity):
    # Integer weights and a diagonal H: many equal scores, and U is diagonal, so nothing but the mask changes.
    rng = np.random.default_rng(8)
    w = rng.integers(-2, 3, (12, 20)).astype(np.float32)  # [out, in]
    h = np.diag(rng.choice([0.0, 1.0, 4.0], 20)).astype(np.float32)  # some dead inputs
    new, mask = sparsegpt(jnp.asarray(w), jnp.asarray(h), sparsity=sparsity, blocksize=8, in_axis=1)
    ref_w, ref_keep = sparsegpt_reference(w, h, sparsity=sparsity, blocksize=8)
    np.testing.assert_array_equal(np.asarray(mask), ref_keep)
    np.testing.assert_array_equal(np.asarray(new), ref_w.astype(np.float32))


def test_sparsegpt_nm_groups_and_dead_inputs():
    w, x = layer(31, 10, 32, dead=(0, 1, 2, 13))
    new, mask = sparsegpt(jnp.asarray(w.T), jnp.asarray(hessian(x)), nm=(2, 4), blocksize=8)
    pruned = (~np.asarray(mask)).reshape(8, 4, 10).sum(axis=1)
    assert pruned[0].tolist() == [3] * 10 and pruned[3].tolist() == [2] * 10  # three dead inputs in the first group
    assert np.all(np.delete(pruned, 0, axis=0) == 2)
    assert not np.asarray(mask)[[0, 1, 2, 13]].any() and np.all(np.asarray(new)[[0, 1, 2, 13]] == 0.0)


def test_sparsegpt_sparsity_zero_keeps_all_but_dead_inputs():
    w, x = layer(32, 12, 24)
    kernel = jnp.asarray(w.T)
    new, mask = sparsegpt(kernel, jnp.asarray(hessian(x)), sparsity=0.0, blocksize=8, percdamp=0.05)
    assert np.asarray(mask).all()
    np.testing.assert_array_equal(np.asarray(new), w.T)  # nothing pruned: every err is 0, nothing moves
    w, x = layer(33, 12, 24, dead=(4, 20))
    new, mask = sparsegpt(jnp.asarray(w.T), jnp.asarray(hessian(x)), sparsity=0.0, blocksize=8)
    expected = np.ones((24, 12), bool)
    expected[[4, 20]] = False
    np.testing.assert_array_equal(np.asarray(mask), expected)
    np.testing.assert_array_equal(np.asarray(new)[expected], w.T[expected])
    new, mask = sparsegpt(jnp.asarray(w.T), jnp.asarray(hessian(x)), sparsity=1.0, blocksize=8)
    assert not np.asarray(mask).any() and np.all(np.asarray(new) == 0.0)


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda():
    out, n_in, sparsity = 32, 64, 0.5
    w, x = layer(34, out, n_in, tokens=256, mix=3.0)  # strongly correlated inputs
    x = x * np.exp(np.random.default_rng(34).standard_normal(n_in))  # of unequal scales, as LLM features are
    target = w @ x.T
    new, _ = sparsegpt(jnp.asarray(w), jnp.asarray(hessian(x)), sparsity=sparsity, in_axis=1, blocksize=16)
    magnitude = wanda_reference(w, np.ones(n_in, np.float32), sparsity=sparsity)
    by_wanda = np.asarray(wanda(jnp.asarray(w), jnp.asarray(norms(x)), sparsity=sparsity, in_axis=1))

    def error(v):
        return np.linalg.norm(target - v @ x.T)

    e_gpt, e_mag, e_wanda = error(np.asarray(new, np.float64)), error(w * magnitude), error(w * by_wanda)
    assert e_gpt < 0.9 * e_wanda and e_wanda < 0.6 * e_mag, (e_gpt, e_wanda, e_mag)  # seen: 0.76, 0.36


def test_sparsegpt_keeps_the_kernel_dtype():
    w, x = layer(35, 8, 16)
    for dtype in [jnp.bfloat16, jnp.float16]:
        new, mask = sparsegpt(jnp.asarray(w.T, dtype), jnp.asarray(hessian(x)), sparsity=0.5, blocksize=8)
        assert new.dtype == dtype and mask.dtype == jnp.bool_
        assert np.all(np.asarray(new, np.float32)[~np.asarray(mask)] == 0.0)


def test_sparsegpt_under_jit():
    w, x = layer(36, 16, 32, dead=(5,))
    f = jax.jit(sparsegpt, static_argnames=("sparsity", "nm", "blocksize", "percdamp", "in_axis"))
    for kw in [dict(sparsity=0.5, blocksize=16), dict(nm=(2, 4), blocksize=8, in_axis=1)]:
        kernel = jnp.asarray(in_layout(w, kw.get("in_axis", 0)))
        got, want = f(kernel, hessian(x), **kw), sparsegpt(kernel, jnp.asarray(hessian(x)), **kw)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------- errors

K = jnp.ones((8, 4))  # [in, out]: 8 inputs
NORMS = jnp.ones(8)
H = jnp.eye(8)

WANDA_ERRORS = [
    (dict(kernel=jnp.ones((8, 4), jnp.int32)), TypeError, "`kernel` must be a floating-point array"),
    (dict(kernel=jnp.ones((2, 8, 4))), ValueError, r"`kernel` must be a 2-D array.*\(2, 8, 4\)"),
    (dict(input_norms=jnp.ones(4)), ValueError, r"`input_norms` must have shape \(8,\).*got shape \(4,\)"),
    (dict(input_norms=jnp.ones((8, 1))), ValueError, "`input_norms` must have shape"),
    (dict(input_norms=[1.0] * 8), TypeError, "`input_norms` must be a floating-point array"),
    (dict(input_norms=jnp.ones(8, jnp.int32)), TypeError, "`input_norms`"),
    (dict(sparsity=1.5), ValueError, r"`sparsity` must be in \[0, 1\], got 1.5"),
    (dict(sparsity=float("nan")), ValueError, "`sparsity`"),
    (dict(sparsity="0.5"), TypeError, "`sparsity`"),
    (dict(sparsity=True), TypeError, "`sparsity`"),
    (dict(sparsity=0.5, nm=(2, 4)), ValueError, "exactly one of `sparsity`"),
    (dict(sparsity=None), ValueError, "exactly one of `sparsity`"),
    (dict(sparsity=None, nm=(2,)), TypeError, "`nm` must be a pair of ints"),
    (dict(sparsity=None, nm=(2.0, 4)), TypeError, "`nm` must be a pair of ints"),
    (dict(sparsity=None, nm=4), TypeError, "`nm` must be a pair of ints"),
    (dict(sparsity=None, nm=(5, 4)), ValueError, r"`nm` must be \(n, m\) with 0 <= n <= m"),
    (dict(sparsity=None, nm=(0, 0)), ValueError, "`nm` must be"),
    (dict(sparsity=None, nm=(-1, 4)), ValueError, "`nm` must be"),
    (dict(sparsity=None, nm=(2, 3)), ValueError, "`nm`.*8 inputs are not divisible by m=3"),
    (dict(in_axis=2), ValueError, "`in_axis` must be one of"),
    (dict(in_axis=0.0), TypeError, "`in_axis` must be an int"),
    (dict(in_axis=True), TypeError, "`in_axis`"),
]


@pytest.mark.parametrize("bad,error,match", WANDA_ERRORS)
def test_wanda_rejects_bad_arguments(bad, error, match):
    kw = dict(kernel=K, input_norms=NORMS, sparsity=0.5) | bad
    with pytest.raises(error, match=match):
        wanda(kw.pop("kernel"), kw.pop("input_norms"), **kw)


SPARSEGPT_ERRORS = [
    (dict(kernel=np.ones((8, 4), np.int64)), TypeError, "`kernel` must be a floating-point array"),
    (dict(kernel=jnp.ones(8)), ValueError, "`kernel` must be a 2-D array"),
    (dict(hessian=jnp.ones((8, 4))), ValueError, r"`hessian` must have shape \(8, 8\).*\(8, 4\).*got shape \(8, 4\)"),
    (dict(hessian=jnp.eye(4)), ValueError, r"`hessian` must have shape \(8, 8\).*got shape \(4, 4\)"),
    (dict(in_axis=1), ValueError, r"`hessian` must have shape \(4, 4\).*got shape \(8, 8\)"),  # [out, in]: 4 inputs
    (dict(hessian=jnp.eye(8, dtype=jnp.int32)), TypeError, "`hessian` must be a floating-point array"),
    (dict(hessian=None), TypeError, "`hessian`"),
    (dict(sparsity=-0.1), ValueError, "`sparsity`"),
    (dict(sparsity=0.5, nm=(2, 4)), ValueError, "exactly one of"),
    (dict(sparsity=None, nm=(2, 3)), ValueError, "not divisible by m=3"),
    (dict(sparsity=None, nm=(2, 4), blocksize=6), ValueError, "`blocksize`=6 must be divisible by m=4"),
    (dict(blocksize=0), ValueError, "`blocksize` must be a positive int, got 0"),
    (dict(blocksize=2.0), TypeError, "`blocksize` must be a positive int"),
    (dict(percdamp=-0.01), ValueError, "`percdamp` must be a finite float >= 0, got -0.01"),
    (dict(percdamp=float("inf")), ValueError, "`percdamp`"),
    (dict(percdamp=float("nan")), ValueError, "`percdamp`"),
    (dict(percdamp="0.01"), TypeError, "`percdamp` must be a float"),
    (dict(percdamp=None), TypeError, "`percdamp`"),
    (dict(in_axis=-3), ValueError, "`in_axis`"),
]


@pytest.mark.parametrize("bad,error,match", SPARSEGPT_ERRORS)
def test_sparsegpt_rejects_bad_arguments(bad, error, match):
    kw = dict(kernel=K, hessian=H, sparsity=0.5) | bad
    with pytest.raises(error, match=match):
        sparsegpt(kw.pop("kernel"), kw.pop("hessian"), **kw)


def test_traced_sparsity_is_rejected():
    with pytest.raises(TypeError, match="`sparsity` must be a static Python float"):
        jax.jit(lambda s: wanda(K, NORMS, sparsity=s))(0.5)
    with pytest.raises(TypeError, match="`sparsity` must be a static Python float"):
        jax.jit(lambda s: sparsegpt(K, H, sparsity=s))(0.5)


# ------------------------------------------------------------------------------- bad calibration statistics (issue 21)

BAD_NORMS = [
    (np.array([1.0, 2.0, -0.5, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32), "first at input 2: -0.5 \\(negative\\)"),
    (np.array([1.0, 1.0, 1.0, 1.0, np.nan, 1.0, 1.0, np.nan], np.float32), "2 bad value.*input 4: nan"),
    (np.array([np.inf, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32), "input 0: inf"),
]


@pytest.mark.parametrize("bad,match", BAD_NORMS)
def test_wanda_rejects_negative_and_non_finite_norms(bad, match):
    for norms_ in (jnp.asarray(bad), bad):  # JAX and NumPy
        with pytest.raises(ValueError, match="`input_norms` must hold finite L2 norms >= 0.*" + match):
            wanda(K, norms_, sparsity=0.5)
    wanda(K, jnp.asarray(np.abs(np.nan_to_num(bad, nan=0.0, posinf=1.0))), sparsity=0.5)  # repaired: fine
    wanda(K, jnp.zeros(8), sparsity=0.5)  # zero norms (dead inputs) are fine


def test_wanda_under_jit_uses_bad_norms_as_documented():
    # A negative norm flips its input's order: within each output, its largest weight is pruned first.
    w = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])  # [out, in]
    got = jax.jit(lambda n: wanda(w, n, sparsity=0.25, in_axis=1))(jnp.asarray([1.0, 1.0, 1.0, -1.0]))
    np.testing.assert_array_equal(np.asarray(got), [[True, True, True, False]])
    # NaN: its input's scores are pruned first; +inf: kept last, but 0 * inf = NaN is pruned first.
    got = jax.jit(lambda n: wanda(w, n, sparsity=0.25, in_axis=1))(jnp.asarray([1.0, 1.0, jnp.nan, 1.0]))
    np.testing.assert_array_equal(np.asarray(got), [[True, True, False, True]])
    w0 = jnp.asarray([[1.0, 0.0, 3.0, 4.0]])
    got = jax.jit(lambda n: wanda(w0, n, sparsity=0.25, in_axis=1))(jnp.asarray([jnp.inf, jnp.inf, 1.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(got), [[True, False, True, True]])


def indefinite(n):
    h = np.eye(n, dtype=np.float32)
    h[0, 1] = h[1, 0] = 2.0  # eigenvalues 3 and -1: no damping of 1% makes it positive definite
    return jnp.asarray(h)


BAD_HESSIANS = [
    ("nan", lambda: H.at[3, 5].set(jnp.nan), 0.01, r"`hessian` must be finite, got 1 NaN or inf.*\(3, 5\): nan"),
    ("inf", lambda: H.at[0, 0].set(jnp.inf), 0.01, r"`hessian` must be finite.*\(0, 0\): inf"),
    ("-inf", lambda: H.at[7, 1].set(-jnp.inf), 0.01, r"`hessian` must be finite.*\(7, 1\): -inf"),
    (
        "indefinite",
        lambda: indefinite(8),
        0.01,
        r"`hessian` is not positive definite after damping.*percdamp=0.01 \(adding 0.01 = percdamp \* mean",
    ),
    (
        "singular",  # two identical inputs, no damping
        lambda: jnp.ones((8, 8)).at[2:, 2:].set(jnp.eye(6)).at[:2, 2:].set(0.0).at[2:, :2].set(0.0),
        0.0,
        r"`hessian` is not positive definite after damping.*percdamp=0.0 \(adding 0 = ",
    ),
]


@pytest.mark.parametrize("name,make,percdamp,match", BAD_HESSIANS, ids=[c[0] for c in BAD_HESSIANS])
def test_sparsegpt_rejects_a_hessian_it_cannot_factor(name, make, percdamp, match):
    with pytest.raises(ValueError, match=match):
        sparsegpt(K, make(), sparsity=0.5, percdamp=percdamp)
    with pytest.raises(ValueError, match=match):  # NumPy too, and N:M
        sparsegpt(K, np.asarray(make()), nm=(2, 4), blocksize=4, percdamp=percdamp)


@pytest.mark.parametrize("name,make,percdamp,match", BAD_HESSIANS, ids=[c[0] for c in BAD_HESSIANS])
def test_sparsegpt_under_jit_returns_a_nan_kernel_and_keeps_everything(name, make, percdamp, match):
    kernel = jax.random.normal(jax.random.key(0), (8, 4), jnp.bfloat16)
    f = jax.jit(lambda k, h: sparsegpt(k, h, sparsity=0.5, percdamp=percdamp, blocksize=4))
    for _ in range(2):  # deterministic
        new, mask = f(kernel, make())
        assert new.dtype == jnp.bfloat16 and new.shape == mask.shape == (8, 4)
        assert np.isnan(np.asarray(new, np.float32)).all() and np.asarray(mask).all()
        # apply_mask and finalize keep the NaN in sight (an all-False mask would zero it out).
        assert np.isnan(np.asarray(jnp.where(mask, new, 0), np.float32)).all()


def test_sparsegpt_under_jit_with_a_good_hessian_is_unaffected():
    w, x = layer(37, 8, 16)
    kernel, h = jnp.asarray(w.T), jnp.asarray(hessian(x))
    f = jax.jit(lambda k, h: sparsegpt(k, h, sparsity=0.5, blocksize=8))
    got, want = f(kernel, h), sparsegpt(kernel, h, sparsity=0.5, blocksize=8)
    assert not np.isnan(np.asarray(got[0])).any() and float(np.mean(~np.asarray(got[1]))) == 0.5
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)
