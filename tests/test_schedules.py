import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import schedules


def values(schedule, steps):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))


def test_linear_equal_cumulative_steps():
    s = schedules.linear(final=0.9, rounds=10)
    np.testing.assert_allclose(values(s, range(12)), [0.09 * min(k + 1, 10) for k in range(12)], rtol=1e-6)
    assert s.final == 0.9


def test_linear_every_and_begin_are_piecewise_constant():
    s = schedules.linear(final=0.5, rounds=5, every=10, begin=100)
    v = values(s, [0, 99, 100, 109, 110, 140, 1000])
    np.testing.assert_allclose(v, [0, 0, 0.1, 0.1, 0.2, 0.5, 0.5], rtol=1e-6)


def test_geometric_is_pytorch_iterative_meaning():
    s = schedules.geometric(rate=0.1, rounds=10)
    v = values(s, range(10))
    np.testing.assert_allclose(v, [1 - 0.9 ** (k + 1) for k in range(10)], rtol=1e-5)
    assert s.final == pytest.approx(0.6513215599)


def test_polynomial_zhu_gupta():
    s = schedules.polynomial(final=0.9, begin=1000, end=10_000, every=100, initial=0.1)
    steps = [0, 999, 1000, 1050, 1100, 5000, 9999, 10_000, 20_000]
    expect = []
    for t in steps:
        if t < 1000:
            expect.append(0.0)
            continue
        tq = min(1000 + (t - 1000) // 100 * 100, 10_000)
        expect.append(0.9 + (0.1 - 0.9) * (1 - (tq - 1000) / 9000) ** 3)
    np.testing.assert_allclose(values(s, steps), expect, rtol=1e-5, atol=1e-7)
    assert (np.diff(values(s, range(0, 12_000, 7))) >= 0).all()


def test_one_shot_and_constant():
    np.testing.assert_allclose(values(schedules.one_shot(0.8, at=5), [4, 5, 6]), [0, 0.8, 0.8], rtol=1e-6)
    np.testing.assert_allclose(values(schedules.constant(0.3), [0, 10]), [0.3, 0.3], rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: schedules.linear(1.2, 10), ValueError, r"`final` must be in \[0, 1\]"),
        (lambda: schedules.linear(float("nan"), 10), ValueError, "`final`"),
        (lambda: schedules.linear(0.9, 0), ValueError, "`rounds` must be a positive int"),
        (lambda: schedules.linear(0.9, 10, every=0), ValueError, "`every` must be a positive int"),
        (lambda: schedules.geometric(-0.1, 3), ValueError, "`rate`"),
        (lambda: schedules.polynomial(0.9, begin=10, end=5, every=1), ValueError, "`end` must be >= `begin`"),
        (lambda: schedules.polynomial(0.9, begin=0, end=5, every=-1), ValueError, "`every` must be a positive int"),
        (lambda: schedules.polynomial(0.5, begin=0, end=5, every=1, initial=0.6), ValueError, "`initial` must be <="),
        (lambda: schedules.one_shot("0.5"), TypeError, "`sparsity` must be a float"),
        (lambda: schedules.linear(0.9, 2.5), TypeError, "`rounds` must be a positive int"),
    ],
)
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(("step", "error"), [(2.7, TypeError), (True, TypeError), ("1", TypeError), (-1, ValueError)])
def test_a_step_is_a_non_negative_int(step, error):
    with pytest.raises(error, match="`step` must be a non-negative int"):
        schedules.linear(0.9, 3)(step)


def test_integer_steps_of_any_kind_work_under_jit():
    s = schedules.linear(0.9, 3)
    for value in (s(np.int64(1)), s(jnp.int32(1)), jax.jit(s)(jnp.int32(1))):
        assert float(value) == pytest.approx(0.6)  # rounds at steps 0, 1, 2: two done by step 1
