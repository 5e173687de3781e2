"""The collection basis: an orthonormal map from a model's raw embedding into the collection's
canonical space, where dimensions are ordered by importance.

Every stored vector and every query passes through it, so all search stages read *prefixes*
of one space: routing uses the first ``d_route`` dims, the scan codes the first ``d_scan``,
the rerank all (or a prefix). Orthonormal, it changes no exact distance: ``|xR - yR| = |x - y|``
and ``<xR, yR> = <x, y>``.

* ``identity``: for a Matryoshka model, whose prefixes are already embeddings.
* ``pca``: for any other model, learned at build time from a sample; the principal axes
  (highest energy first) make the embedding *nested*, so prefixes behave like Matryoshka
  prefixes and adaptive stage dims work for every model. For ``l2`` the energy is the variance
  about the mean (what separates points); for ``ip`` and ``cosine`` it is the uncentred second
  moment (what inner products are made of). The map itself is a pure rotation (no centring),
  so inner products are preserved too.

Stored with the collection as a versioned blob (:meth:`Basis.to_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from anns.config import IndexConfig, Metric
from anns.errors import CorruptCollectionError
from anns.formats import pack_arrays, unpack_arrays

BasisKind = Literal["identity", "pca"]

#: Version of the serialised form written by :meth:`Basis.to_bytes`.
BASIS_FORMAT = 1


class Basis:
    """An orthonormal [dim, dim] map applied as ``x @ matrix`` (None: the identity).

    ``energy`` is the share of the sample's energy along each output dim (sums to 1; uniform
    for the identity), so ``energy[:m].sum()`` is what a prefix of m dims keeps.

    A basis made :meth:`lazy` holds no matrix until something asks for it: a process that
    only maps queries onto a prefix (:meth:`apply_short`) keeps those columns alone in RAM
    (:meth:`keep_prefix`).
    """

    def __init__(
        self, kind: BasisKind, dim: int, matrix: np.ndarray | None, energy: np.ndarray
    ) -> None:
        self.kind = kind
        self.dim = dim
        self._matrix = matrix
        self._loader: Callable[[], np.ndarray] | None = None
        self.energy = energy
        self._columns: dict[int, np.ndarray] = {}  # kept leading columns, by count

    @property
    def matrix(self) -> np.ndarray | None:
        """The [dim, dim] float32 map (None for the identity); a lazy basis loads it now and
        keeps it."""
        if self._matrix is None and self._loader is not None:
            self._matrix = self._loader()
        return self._matrix

    def lazy(self, loader: Callable[[], np.ndarray], keep: int) -> Basis:
        """This basis without its matrix in RAM, but for its first ``keep`` columns (see
        :meth:`keep_prefix`): ``loader`` gives the matrix back when first needed (the identity
        has none to drop)."""
        if self.kind == "identity":
            return self
        out = Basis(self.kind, self.dim, None, self.energy)
        out.keep_prefix(keep, self.matrix)
        out._loader = loader
        return out

    def keep_prefix(self, dims: int, matrix: np.ndarray | None = None) -> None:
        """Keep a contiguous copy of the first ``dims`` columns (of ``matrix``, by default
        this basis's own), so that :meth:`apply_prefix` onto them reads only those: one width,
        the scan's, that every search maps its queries onto. Other widths slice the matrix."""
        if self.kind == "identity" or dims >= self.dim:
            return
        whole = self.matrix if matrix is None else matrix
        assert whole is not None
        self._columns = {dims: np.ascontiguousarray(whole[:, :dims])}

    # -------------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, dim: int) -> Basis:
        return cls("identity", dim, None, np.full(dim, 1.0 / dim))

    @classmethod
    def fit_pca(cls, sample: np.ndarray, metric: Metric) -> Basis:
        """Principal axes of ``sample`` (float32 [n, dim], already normalised for cosine),
        highest energy first. Computed in float64; each axis's sign is fixed (largest
        component positive) so that the same sample always gives the same basis."""
        n, dim = sample.shape
        if n == 0:
            return cls.identity(dim)
        # the second moment (centred for l2) in float64, a bounded block of rows at a time:
        # a float64 copy of the whole sample would double the memory a build peaks at
        mean = sample.mean(axis=0, dtype=np.float64) if metric == "l2" else np.zeros(dim)
        moment = np.zeros((dim, dim))
        step = max(1, (16 << 20) // (8 * dim))
        for s in range(0, n, step):
            block = sample[s : s + step].astype(np.float64) - mean
            moment += block.T @ block
        moment /= n
        values, vectors = np.linalg.eigh(moment)  # ascending
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vectors = vectors[:, order]
        flip = vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)] < 0
        vectors[:, flip] *= -1.0
        total = values.sum()
        energy = values / total if total > 0 else np.full(dim, 1.0 / dim)
        return cls("pca", dim, np.ascontiguousarray(vectors, dtype=np.float32), energy)

    # ------------------------------------------------------------------------- mapping
    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw float32 [n, dim] -> collection space (one BLAS product over the batch)."""
        if self.matrix is None:
            return x
        return np.ascontiguousarray(x @ self.matrix)

    def apply_prefix(self, x: np.ndarray, dims: int) -> np.ndarray:
        """The first ``dims`` dims of :meth:`apply` (only those columns of the map)."""
        if self.kind == "identity":
            return np.ascontiguousarray(x[:, :dims])
        if dims >= self.dim:
            return self.apply(x)
        columns = self._columns.get(dims)
        if columns is None:  # (a lazy basis loads its matrix for this)
            columns = self.matrix[:, :dims]  # type: ignore[index]
        return np.ascontiguousarray(x @ columns)

    def apply_short(self, x: np.ndarray, dims: int) -> np.ndarray:
        """float32 [n, dims + 1]: the first ``dims`` dims of :meth:`apply`, then the norm of
        the others in one column (all of :meth:`apply` when ``dims`` covers the space).

        A stand-in for a query wherever the dims past the prefix count only through their
        norm, as in the tail codec's scan (``|x_t|``, read from the columns past its prefix):
        the norm is preserved by the orthonormal map, so computing it needs no more columns
        of the map, and the product costs ``dims / dim`` of :meth:`apply`'s."""
        if dims >= self.dim:
            return self.apply(x)
        out = np.empty((len(x), dims + 1), dtype=np.float32)
        out[:, :dims] = self.apply_prefix(x, dims)
        # in float64: the difference of two large norms keeps a short tail's digits
        total = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        head = np.einsum("ij,ij->i", out[:, :dims], out[:, :dims], dtype=np.float64)
        out[:, dims] = np.sqrt(np.maximum(total - head, 0.0))
        return out

    def apply_in_place(self, x: np.ndarray) -> np.ndarray:
        """:meth:`apply` for a large writable float32 array, overwriting it a bounded block of
        rows at a time (no second copy of it); returns ``x``."""
        if self.matrix is None:
            return x
        step = max(1, (16 << 20) // (4 * self.dim))
        for s in range(0, len(x), step):
            x[s : s + step] = x[s : s + step] @ self.matrix
        return x

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Collection space -> raw (the transpose: the map is orthonormal). Equal to the raw
        vector up to float32 rounding (~1e-7 relative) for ``pca``; exact for the identity."""
        if self.matrix is None:
            return y
        return np.ascontiguousarray(y @ self.matrix.T)

    @property
    def nbytes(self) -> int:
        """Bytes the basis holds in memory (the [dim, dim] float32 matrix if loaded, columns
        kept for :meth:`apply_prefix`, the energies)."""
        held = [self.energy] + list(self._columns.values())
        if self._matrix is not None:
            held.append(self._matrix)
        return sum(int(a.nbytes) for a in held)

    def prefix_energy(self, dims: int) -> float:
        """Share of the sample's energy the first ``dims`` dims keep."""
        return float(self.energy[:dims].sum())

    # --------------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        return pack_arrays(
            {"format": BASIS_FORMAT, "kind": self.kind, "dim": self.dim},
            energy=self.energy.astype(np.float64),
            matrix=self.matrix if self.matrix is not None else np.empty((0, 0), np.float32),
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Basis:
        header, arrays = unpack_arrays(blob, "basis", BASIS_FORMAT, ("energy", "matrix"))
        energy, matrix = arrays["energy"], arrays["matrix"]
        kind, dim = header["kind"], int(header["dim"])
        if kind == "identity":
            return cls("identity", dim, None, energy)
        if matrix.shape != (dim, dim):
            raise CorruptCollectionError(
                f"the stored basis matrix has shape {matrix.shape}, expected ({dim}, {dim})"
            )
        return cls(kind, dim, np.ascontiguousarray(matrix, dtype=np.float32), energy)


def fit_basis(sample: np.ndarray, config: IndexConfig) -> Basis:
    """The basis a collection gets from a sample of its (raw, validated) vectors: the identity
    for a Matryoshka model, else the PCA rotation."""
    if config.matryoshka:
        return Basis.identity(config.dim)
    return Basis.fit_pca(sample, config.metric)
