"""Model-upgrade transforms (anns.compat): the fit recovers a known rotation and the new
model's extra dims, stays orthonormal, meets the compatibility criterion, and the gate refuses
every bad input and every fit that would do worse than not migrating, with the figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anns import compat
from anns.compat import ModelTransform, fit_bt2, fit_model_transform
from anns.errors import (
    CorruptCollectionError,
    DTypeError,
    IncompatibleModelError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
)

OLD_DIM, EXTRA, NOISE_DIMS = 32, 8, 8
NEW_DIM = OLD_DIM + EXTRA + NOISE_DIMS


def _orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def two_models(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(old [n, 32], new [n, 48], rotation [48, 48]): the new model is a rotation of
    [old's latent, 8 informative dims the old model lacks, 8 faint noise dims] plus a little
    noise; the old model sees its latent dims through more noise (it is the weaker model);
    ``rotation[:32].T`` maps the new model onto the old space."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, OLD_DIM + EXTRA)) * 2.0
    latent = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, OLD_DIM + EXTRA)) * 0.6
    old = latent[:, :OLD_DIM] + rng.standard_normal((n, OLD_DIM)) * 0.5
    faint = rng.standard_normal((n, NOISE_DIMS)) * 0.02
    rotation = _orthogonal(NEW_DIM, rng)
    new = np.hstack([latent, faint]) @ rotation + rng.standard_normal((n, NEW_DIM)) * 0.05
    return old.astype(np.float32), new.astype(np.float32), rotation


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return two_models(2000)


@pytest.fixture(scope="module")
def fitted(
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[ModelTransform, compat.CompatReport]:
    old, new, _ = synthetic
    return fit_model_transform(old, new, "l2", seed=1)


def test_fit_recovers_the_rotation_and_the_extra_dims(
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: tuple[ModelTransform, compat.CompatReport],
) -> None:
    _, new, rotation = synthetic
    transform, report = fitted
    align = transform.matrix[:, :OLD_DIM].astype(np.float64)
    truth = rotation[:OLD_DIM].T
    # the mapped vectors are the true map's, within 5% (faint directions are free to differ)
    centred = new - new.mean(axis=0)
    assert np.linalg.norm(centred @ (align - truth)) / np.linalg.norm(centred @ truth) < 0.05
    # the informative extra dims are kept, the faint noise dims are not needed
    assert EXTRA <= transform.extra_dims < EXTRA + NOISE_DIMS
    assert report.extra_dims == transform.extra_dims
    # the first extra axes span the informative dims: principal angles near zero
    informative = rotation[OLD_DIM:OLD_DIM + EXTRA].T
    cosines = np.linalg.svd(informative.T @ transform.matrix[:, OLD_DIM:OLD_DIM + EXTRA],
                            compute_uv=False)
    assert cosines.min() > 0.95


def test_compatibility_criterion_holds_on_synthetic(
    fitted: tuple[ModelTransform, compat.CompatReport],
) -> None:
    _, report = fitted
    r = report.recall
    assert report.verdict == "accepted" and not report.reasons
    assert r["new_old"] >= r["old_old"]
    assert r["new_new"] >= compat.NEW_NEW_TARGET


def test_learning_curve_grows_with_pairs() -> None:
    old, new, _ = two_models(600, seed=6)  # the smallest subset has about one pair per dim
    _, report = fit_model_transform(old, new, "l2", seed=0)
    curve = report.learning_curve
    assert [p["pairs"] for p in curve] == sorted(p["pairs"] for p in curve)
    assert curve[-1]["pairs"] == report.n_fit
    assert curve[-1]["new_old"] > curve[0]["new_old"]


@settings(max_examples=15, deadline=None)
@given(old_dim=st.integers(2, 24), new_dim=st.integers(2, 24), seed=st.integers(0, 2**16))
def test_the_map_is_orthonormal(old_dim: int, new_dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    old = rng.standard_normal((60, old_dim))
    new = rng.standard_normal((60, new_dim))
    full = fit_bt2(old, new, "ip", None)
    m = full.matrix.astype(np.float64)
    assert m.shape == (new_dim, max(old_dim, new_dim))
    assert np.allclose(m @ m.T, np.eye(new_dim), atol=1e-5)  # new/new preserved exactly
    if new_dim >= old_dim:  # orthonormal columns too: the map is square or has extra dims
        assert np.allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-5)
    trimmed = fit_bt2(old, new, "ip", 0).matrix.astype(np.float64)
    assert trimmed.shape[1] == old_dim
    assert np.allclose(trimmed[:, :old_dim], m[:, :old_dim])


def test_new_new_through_the_full_transform_is_the_raw_model() -> None:
    old, new, _ = two_models(300, seed=3)
    transform = fit_bt2(old.astype(np.float64), new.astype(np.float64), "l2", None)
    figures = compat.evaluate_transform(transform, old.astype(np.float64),
                                        new.astype(np.float64), "l2")
    assert figures["new_new"] == 1.0


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_other_metrics(metric: str) -> None:
    old, new, _ = two_models(1000, seed=2)
    _, report = fit_model_transform(old, new, metric, seed=0)  # type: ignore[arg-type]
    assert report.recall["new_old"] >= report.recall["old_old"]
    assert report.recall["new_new"] >= compat.NEW_NEW_TARGET


def test_deterministic_with_a_seed(synthetic: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    old, new, _ = synthetic
    a, ra = fit_model_transform(old[:600], new[:600], "l2", seed=7)
    b, rb = fit_model_transform(old[:600], new[:600], "l2", seed=7)
    assert np.array_equal(a.matrix, b.matrix) and ra.to_dict() == rb.to_dict()


def test_serialisation_round_trip(fitted: tuple[ModelTransform, compat.CompatReport]) -> None:
    import json

    transform, report = fitted
    back = ModelTransform.from_bytes(transform.to_bytes())
    assert np.array_equal(back.matrix, transform.matrix)
    assert np.array_equal(back.offset, transform.offset)
    assert (back.method, back.metric, back.old_dim, back.new_dim) == (
        transform.method, transform.metric, transform.old_dim, transform.new_dim)
    assert json.loads(json.dumps(report.to_dict()))["recall"] == report.recall
    with pytest.raises(CorruptCollectionError):
        ModelTransform.from_bytes(b"not a transform")


# ----------------------------------------------------------------------------- refusals
def test_refuses_too_few_pairs_before_fitting() -> None:
    old, new, _ = two_models(compat.MIN_PAIRS - 1)
    with pytest.raises(LimitExceededError, match=f"{compat.MIN_PAIRS - 1} pairs"):
        fit_model_transform(old, new, "l2")


def test_refuses_too_few_pairs_per_dim_with_figures_unless_forced() -> None:
    old, new, _ = two_models(150)  # < 4 x 48
    with pytest.raises(IncompatibleModelError, match=r"too few pairs.*new/old 0\.\d+.*old/old"):
        fit_model_transform(old, new, "l2")
    _, report = fit_model_transform(old, new, "l2", force=True)
    assert report.verdict == "forced" and report.reasons
    _, dry = fit_model_transform(old, new, "l2", check=False)
    assert dry.verdict == "refused"


def test_refuses_mismatched_rows() -> None:
    old, new, _ = two_models(300)
    with pytest.raises(InvalidArgumentError, match="300 old, 299 new"):
        fit_model_transform(old, new[:299], "l2")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_non_finite_values(bad: float) -> None:
    old, new, _ = two_models(300)
    new[17, 3] = bad
    with pytest.raises(NonFiniteError, match="row 17"):
        fit_model_transform(old, new, "l2", force=True)


def test_refuses_non_float_input() -> None:
    old, new, _ = two_models(300)
    with pytest.raises(DTypeError):
        fit_model_transform(old.astype(np.int64), new, "l2")


def test_refuses_a_fit_worse_than_not_migrating() -> None:
    """Each cluster of the new model is rotated on its own: every neighbourhood is kept (the
    old model already finds them), yet no single map aligns the two models."""
    rng = np.random.default_rng(5)
    n, dim, clusters = 1200, 16, 12
    centres = rng.standard_normal((clusters, dim)) * 4.0
    which = rng.integers(0, clusters, n)
    local = rng.standard_normal((n, dim))
    old = centres[which] + local
    rotations = np.stack([_orthogonal(dim, rng) for _ in range(clusters)])
    new = centres[which] @ _orthogonal(dim, rng) + np.einsum("nd,nde->ne", local,
                                                               rotations[which])
    with pytest.raises(IncompatibleModelError, match="below old/old") as info:
        fit_model_transform(old, new, "l2")
    assert "learning curve" in str(info.value)
    _, report = fit_model_transform(old, new, "l2", force=True)
    assert report.verdict == "forced"
    assert report.recall["new_old"] < report.recall["old_old"]


def test_refuses_an_unrelated_model() -> None:
    old, _, _ = two_models(1000, seed=4)
    unrelated, _, _ = two_models(1000, seed=9)  # same shape, other items' structure
    with pytest.raises(IncompatibleModelError, match="model transform refused") as info:
        fit_model_transform(old, unrelated, "cosine")
    assert "new/old" in str(info.value) and "old/old" in str(info.value)


@pytest.mark.parametrize("method", ["ridge", "procrustes"])
def test_refuses_a_map_that_loses_the_new_models_own_geometry(
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray], method: str
) -> None:
    """Ridge shrinks towards the mean and plain Procrustes keeps only the old dims: the new
    model's queries would search backfilled vectors worse than the model itself does."""
    old, new, _ = synthetic
    with pytest.raises(IncompatibleModelError, match="new/new recall@10 through the transform"):
        fit_model_transform(old, new, "l2", method=method)  # type: ignore[arg-type]
    _, report = fit_model_transform(old, new, "l2", method=method, force=True)  # type: ignore[arg-type]
    assert report.recall["new_new"] < compat.NEW_NEW_TARGET
    _, bt2 = fit_model_transform(old, new, "l2")
    assert bt2.verdict == "accepted" and bt2.recall["new_new"] >= compat.NEW_NEW_TARGET
