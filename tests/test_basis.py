"""The collection basis: an orthonormal, energy-ordered map that changes no exact distance,
recovers nested principal subspaces, and survives serialisation."""

from __future__ import annotations

import io
import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import strategies as S
from anns import CorruptCollectionError, IndexConfig
from anns.basis import BASIS_FORMAT, Basis, fit_basis

Metric = str


def _pca(seed: int, n: int, dim: int, metric: Metric, *, shift: float = 0.0) -> Basis:
    return Basis.fit_pca(S.gaussian(seed, n, dim, shift=shift), metric)  # type: ignore[arg-type]


def _projector(columns: np.ndarray) -> np.ndarray:
    """Orthogonal projector (float64) onto the span of orthonormal ``columns``."""
    c = np.asarray(columns, dtype=np.float64)
    return c @ c.T


def _nested(seed: int, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Matryoshka-like data seen through a random rotation: independent coordinates with
    scales 2^-j, rotated by ``rotation`` (orthonormal [dim, dim]). Row j of ``rotation`` is the
    j-th true principal direction. Returns (x float32 [n, dim], rotation float64)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim)) * 2.0 ** -np.arange(dim)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (z @ rotation).astype(np.float32), rotation


# ---------------------------------------------------------------------- orthonormal
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@given(seed=S.seeds, n=st.integers(1, 60), dim=st.integers(1, 24))
def test_pca_basis_is_orthonormal_for_any_sample_shape(
    metric: Metric, seed: int, n: int, dim: int
) -> None:
    # n < dim included: a rank-deficient moment still gives a full orthonormal basis
    basis = _pca(seed, n, dim, metric, shift=0.5)
    assert basis.kind == "pca" and basis.dim == dim
    assert basis.matrix is not None and basis.matrix.shape == (dim, dim)
    assert basis.matrix.dtype == np.float32
    m = basis.matrix.astype(np.float64)
    np.testing.assert_allclose(m.T @ m, np.eye(dim), atol=1e-5)
    np.testing.assert_allclose(m @ m.T, np.eye(dim), atol=1e-5)


@given(S.float_matrices(max_rows=30, max_dim=12))
def test_pca_basis_of_adversarial_samples_is_orthonormal_with_valid_energy(
    x: np.ndarray,
) -> None:
    # duplicates, zero rows, constant columns, values up to 1e6
    for metric in ("l2", "ip"):
        basis = Basis.fit_pca(x, metric)  # type: ignore[arg-type]
        assert basis.matrix is not None
        m = basis.matrix.astype(np.float64)
        np.testing.assert_allclose(m.T @ m, np.eye(x.shape[1]), atol=1e-5)
        assert np.isfinite(basis.energy).all() and (basis.energy >= 0).all()
        assert basis.energy.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, n=st.integers(2, 80), dim=st.integers(1, 20))
def test_rotation_preserves_distances_and_inner_products(
    metric: Metric, seed: int, n: int, dim: int
) -> None:
    basis = _pca(seed, n, dim, metric, shift=1.0)
    points = S.gaussian(seed + 1, 12, dim, shift=1.0)
    rotated = basis.apply(points).astype(np.float64)
    raw = points.astype(np.float64)
    sq = (raw**2).sum(axis=1)
    scale = 1.0 + sq[:, None] + sq[None, :]
    l2_raw = ((raw[:, None] - raw[None]) ** 2).sum(-1)
    l2_rot = ((rotated[:, None] - rotated[None]) ** 2).sum(-1)
    np.testing.assert_allclose(l2_rot, l2_raw, atol=1e-5 * scale.max())
    assert (np.abs(l2_rot - l2_raw) <= 1e-5 * scale).all()
    assert (np.abs(rotated @ rotated.T - raw @ raw.T) <= 1e-5 * scale).all()
    # and back: invert undoes apply up to float32 rounding
    back = basis.invert(basis.apply(points))
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert (np.abs(back - raw) <= 1e-5 * norms + 1e-7).all()


@given(seed=S.seeds, n=st.integers(1, 40), dim=st.integers(1, 20), dims=st.integers(1, 24),
       identity=st.booleans())
def test_a_short_image_is_the_prefix_then_the_norm_of_the_rest(
    seed: int, n: int, dim: int, dims: int, identity: bool
) -> None:
    basis = Basis.identity(dim) if identity else _pca(seed, max(n, 2), dim, "l2", shift=1.0)
    points = S.gaussian(seed + 1, n, dim, shift=1.0)
    full = basis.apply(points).astype(np.float64)
    short = basis.apply_short(points, dims)
    norms = np.linalg.norm(full, axis=1)
    if dims >= dim:
        np.testing.assert_array_equal(short, basis.apply(points))
        return
    assert short.shape == (n, dims + 1) and short.dtype == np.float32
    np.testing.assert_allclose(short[:, :dims], full[:, :dims], atol=1e-5 * (1 + norms.max()))
    np.testing.assert_array_equal(basis.apply_prefix(points, dims), short[:, :dims])
    rest = np.linalg.norm(full[:, dims:], axis=1)
    # float32 products: the rest's norm is known to within the rounding of the whole norm
    assert (np.abs(short[:, dims] - rest) <= 1e-3 * (1 + norms)).all()


# --------------------------------------------------------------------------- energy
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@given(seed=S.seeds, n=st.integers(1, 60), dim=st.integers(1, 24))
def test_energy_is_non_increasing_and_sums_to_one(
    metric: Metric, seed: int, n: int, dim: int
) -> None:
    basis = _pca(seed, n, dim, metric, shift=0.3)
    assert basis.energy.shape == (dim,)
    assert (basis.energy >= 0).all()
    assert (np.diff(basis.energy) <= 1e-12).all(), f"energy increases: {basis.energy}"
    assert basis.energy.sum() == pytest.approx(1.0)
    assert basis.prefix_energy(dim) == pytest.approx(1.0)
    prefixes = [basis.prefix_energy(d) for d in range(dim + 1)]
    assert prefixes[0] == 0.0 and (np.diff(prefixes) >= -1e-12).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, n=st.integers(2, 100), dim=st.integers(2, 16))
def test_energy_is_the_share_of_the_sample_along_each_output_dim(
    metric: Metric, seed: int, n: int, dim: int
) -> None:
    x = S.gaussian(seed, n, dim, shift=0.7)
    basis = Basis.fit_pca(x, metric)  # type: ignore[arg-type]
    centred = x - x.mean(axis=0) if metric == "l2" else x
    y = basis.apply(centred.astype(np.float32)).astype(np.float64)
    along = (y**2).sum(axis=0)
    if along.sum() > 0:
        np.testing.assert_allclose(basis.energy, along / along.sum(), atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, n=st.integers(2, 100), dim=st.integers(2, 16), m=st.integers(1, 16))
def test_a_pca_prefix_keeps_at_least_the_energy_of_any_m_raw_coordinates(
    metric: Metric, seed: int, n: int, dim: int, m: int
) -> None:
    m = min(m, dim)
    # unequal scales per coordinate, so the best raw coordinates are far from uniform
    x = S.gaussian(seed, n, dim, shift=0.2) * np.geomspace(3.0, 0.3, dim).astype(np.float32)
    basis = Basis.fit_pca(x, metric)  # type: ignore[arg-type]
    centred = x.astype(np.float64) - (x.mean(axis=0) if metric == "l2" else 0.0)
    per_coordinate = (centred**2).sum(axis=0)
    total = per_coordinate.sum()
    best_raw = np.sort(per_coordinate)[::-1][:m].sum() / total
    assert basis.prefix_energy(m) >= best_raw - 1e-6


def test_l2_energy_is_centred_and_ip_energy_is_not() -> None:
    # a large common offset along e_0 and spread along e_1: the mean is what ip sees first
    rng = np.random.default_rng(3)
    x = np.zeros((500, 3), np.float32)
    x[:, 0] = 10.0 + 0.01 * rng.standard_normal(500)
    x[:, 1] = rng.standard_normal(500)
    x[:, 2] = 0.1 * rng.standard_normal(500)
    l2, ip = Basis.fit_pca(x, "l2"), Basis.fit_pca(x, "ip")
    assert l2.matrix is not None and ip.matrix is not None
    assert abs(l2.matrix[1, 0]) > 0.99, "l2: the top axis is the direction of largest variance"
    assert abs(ip.matrix[0, 0]) > 0.99, "ip: the top axis is the offset (second moment)"


# ------------------------------------------------------------------ nested prefixes
@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, dim=st.integers(2, 10))
def test_pca_recovers_the_nested_principal_subspaces_of_rotated_matryoshka_data(
    metric: Metric, seed: int, dim: int
) -> None:
    x, rotation = _nested(seed, 4000, dim)
    basis = Basis.fit_pca(x, metric)  # type: ignore[arg-type]
    assert basis.matrix is not None
    for m in range(1, dim):
        got = _projector(basis.matrix[:, :m])
        want = _projector(rotation[:m].T)
        gap = np.abs(got - want).max()
        assert gap < 0.1, f"prefix {m}: span differs from the true one by {gap:.3f}"
    # and each axis is the true direction itself, up to sign
    cos = np.abs((rotation @ basis.matrix.astype(np.float64)).diagonal())
    assert (cos > 0.97).all(), f"axes recovered with |cos| {cos}"


@given(seed=S.seeds, dim=st.integers(2, 10))
def test_pca_of_unrotated_matryoshka_data_is_close_to_the_identity(seed: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4000, dim)) * 2.0 ** -np.arange(dim)).astype(np.float32)
    basis = Basis.fit_pca(x, "l2")
    assert basis.matrix is not None
    # sign fixed: the largest component of each axis is positive, so this is +identity
    np.testing.assert_allclose(basis.matrix, np.eye(dim), atol=0.1)


@given(seed=S.seeds, n=st.integers(1, 60), dim=st.integers(1, 16))
def test_each_axis_has_its_largest_component_positive(seed: int, n: int, dim: int) -> None:
    basis = _pca(seed, n, dim, "l2")
    assert basis.matrix is not None
    largest = basis.matrix[np.abs(basis.matrix).argmax(axis=0), np.arange(dim)]
    assert (largest > 0).all()


# ------------------------------------------------------------------------- identity
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_matryoshka_config_gets_the_identity_which_returns_its_input(metric: Metric) -> None:
    x = S.gaussian(1, 40, 7)
    config = IndexConfig(dim=7, metric=metric, matryoshka=True)  # type: ignore[arg-type]
    basis = fit_basis(x, config)
    assert basis.kind == "identity" and basis.matrix is None and basis.dim == 7
    assert basis.apply(x) is x
    assert basis.invert(x) is x
    np.testing.assert_array_equal(basis.energy, np.full(7, 1 / 7))
    assert basis.prefix_energy(3) == pytest.approx(3 / 7)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_other_configs_get_a_pca_basis_fitted_on_the_sample(metric: Metric) -> None:
    x = S.gaussian(2, 40, 5)
    basis = fit_basis(x, IndexConfig(dim=5, metric=metric))  # type: ignore[arg-type]
    direct = Basis.fit_pca(x, metric)  # type: ignore[arg-type]
    assert basis.kind == "pca"
    assert basis.matrix is not None and direct.matrix is not None
    np.testing.assert_array_equal(basis.matrix, direct.matrix)


def test_an_empty_sample_gives_the_identity() -> None:
    basis = Basis.fit_pca(np.empty((0, 4), np.float32), "l2")
    assert basis.kind == "identity" and basis.matrix is None


# --------------------------------------------------------------------- determinism
@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, n=st.integers(1, 80), dim=st.integers(1, 16))
def test_the_same_sample_gives_the_identical_basis(
    metric: Metric, seed: int, n: int, dim: int
) -> None:
    a = _pca(seed, n, dim, metric, shift=0.1)
    b = _pca(seed, n, dim, metric, shift=0.1)
    assert a.matrix is not None and b.matrix is not None
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.energy, b.energy)
    assert a.to_bytes() == b.to_bytes()


# --------------------------------------------------------------------- persistence
@given(seed=S.seeds, n=st.integers(1, 50), dim=st.integers(1, 16))
def test_pca_basis_round_trips_through_bytes(seed: int, n: int, dim: int) -> None:
    basis = _pca(seed, n, dim, "l2")
    back = Basis.from_bytes(basis.to_bytes())
    assert back.kind == "pca" and back.dim == dim
    assert back.matrix is not None and basis.matrix is not None
    np.testing.assert_array_equal(back.matrix, basis.matrix)
    np.testing.assert_array_equal(back.energy, basis.energy)
    x = S.gaussian(seed + 1, 5, dim)
    np.testing.assert_array_equal(back.apply(x), basis.apply(x))


@pytest.mark.parametrize("dim", [1, 9, 300])
def test_identity_basis_round_trips_through_bytes(dim: int) -> None:
    back = Basis.from_bytes(Basis.identity(dim).to_bytes())
    assert back.kind == "identity" and back.dim == dim and back.matrix is None
    np.testing.assert_array_equal(back.energy, np.full(dim, 1.0 / dim))


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _rewrite(blob: bytes, **changes: object) -> bytes:
    """The serialised basis with header fields or arrays replaced."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    header = json.loads(bytes(arrays["header"]).decode())
    for key in ("format", "kind", "dim"):
        if key in changes:
            header[key] = changes.pop(key)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays.update(changes)  # type: ignore[arg-type]
    return _npz(**arrays)


@pytest.mark.parametrize("version", [0, BASIS_FORMAT + 1, None, "1"])
def test_a_basis_of_another_format_is_refused_naming_both_versions(version: object) -> None:
    blob = _rewrite(_pca(0, 30, 4, "l2").to_bytes(), format=version)
    with pytest.raises(CorruptCollectionError, match=f"format {version}") as info:
        Basis.from_bytes(blob)
    assert f"reads format {BASIS_FORMAT}" in str(info.value)


def test_a_matrix_of_the_wrong_shape_is_refused() -> None:
    blob = _rewrite(_pca(0, 30, 4, "l2").to_bytes(), matrix=np.eye(3, dtype=np.float32))
    with pytest.raises(CorruptCollectionError, match=r"shape \(3, 3\), expected \(4, 4\)"):
        Basis.from_bytes(blob)


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage",
        b"\x93NUMPY not really",
        _npz(energy=np.ones(2)),
        _npz(header=np.frombuffer(b"{nope", np.uint8), energy=np.ones(2), matrix=np.eye(2)),
    ],
    ids=["garbage", "npy-magic", "no-header", "header-not-json"],
)
def test_unreadable_basis_blobs_raise_corrupt_collection(blob: bytes) -> None:
    with pytest.raises(CorruptCollectionError, match="basis"):
        Basis.from_bytes(blob)


@pytest.mark.parametrize("cut", [0, 10, 0.5, -10])
def test_empty_and_truncated_basis_blobs_raise_corrupt_collection(cut: float) -> None:
    blob = _pca(0, 30, 4, "l2").to_bytes()
    end = int(cut * len(blob)) if isinstance(cut, float) else cut
    with pytest.raises(CorruptCollectionError):
        Basis.from_bytes(blob[:end])
