"""FAISS inner-product indexes behind one interface: flat (exact), HNSW, IVF-PQ.

    params = choose_params(n_vectors, dim)          # by catalogue size; override any field
    index = VectorIndex.build(vectors, params)      # rows are positions 0..n-1
    scores, positions = index.search(queries, k)    # best first; -1 where fewer than k exist
    index.save(path); VectorIndex.load(path)

Size rules (measured by benchmarks/bench_retrieval.py, see docs/retrieval.md):
- below 20,000 vectors exact search is fast enough: `flat`;
- up to 2,000,000: `hnsw` (M=32, efConstruction=100, efSearch=max(100, k)): on clustered
  synthetic vectors efSearch = k = 100 already gives recall@100 >= 0.98 at 100k and 1M
  (the fastest setting; 128 cost 5-21% speed for +0.001-0.004 recall); M=32 rather than 16
  because it holds recall far better on unstructured data;
- above: `ivfpq` (nlist ~ 4 sqrt(n), PQ codes of 8 bits) with an exact re-rank of the
  shortlist (`refine`), which holds the vectors compressed but answers with exact scores.

faiss-gpu is used when it is installed and a GPU is visible (`device="auto"`), or when asked
(`device="cuda"`, which fails with a clear message otherwise). It is imported from the same
`faiss` module: install the `gpu` extra (`pip install '.[gpu]'`) to get it. HNSW has no GPU
implementation in FAISS and stays on the CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.errors import RetrievalError

IndexKind = Literal["flat", "hnsw", "ivfpq"]
KINDS = ("flat", "hnsw", "ivfpq")
FLAT_MAX = 20_000
HNSW_MAX = 2_000_000


@dataclass(frozen=True)
class IndexParams:
    kind: IndexKind = "flat"
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 100  # FAISS searches with max(ef_search, k)
    nlist: int = 1024
    pq_m: int = 16  # sub-quantizers; must divide dim
    pq_bits: int = 8
    nprobe: int = 32
    train_per_list: int = 256  # IVF-PQ: k-means training sample, vectors per list (FAISS's cap)
    refine: bool = True  # IVF-PQ: re-rank a shortlist with exact inner products
    refine_factor: int = 4
    device: str = "auto"  # auto | cpu | cuda

    def with_overrides(self, **overrides: object) -> IndexParams:
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise RetrievalError(
                f"unknown index parameter(s) {sorted(unknown)}; known: {sorted(asdict(self))}"
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def choose_params(n_vectors: int, dim: int, **overrides: object) -> IndexParams:
    """Index parameters for a catalogue of this size; keyword overrides win.

    The kind follows the size unless `kind=` is given; IVF-PQ's list count and code size
    follow the size and dimension either way."""
    kind = overrides.pop("kind", None)
    if kind is None:
        kind = "flat" if n_vectors <= FLAT_MAX else "hnsw" if n_vectors <= HNSW_MAX else "ivfpq"
    params = IndexParams(kind=kind)  # type: ignore[arg-type]
    if kind == "ivfpq":
        params = replace(
            params,
            nlist=max(1, int(4 * math.sqrt(n_vectors))),
            pq_m=_largest_divisor_at_most(dim, max(8, dim // 4)),
        )
    return params.with_overrides(**overrides)


class VectorIndex:
    """One FAISS inner-product index over float32 row vectors."""

    def __init__(self, index, params: IndexParams, dim: int) -> None:  # type: ignore[no-untyped-def]
        self._index = index
        self.params = params
        self.dim = dim

    # -- build / add / search ---------------------------------------------------------------

    @classmethod
    def build(
        cls, vectors: np.ndarray, params: IndexParams | None = None, *, seed: int = 7
    ) -> VectorIndex:
        """Build over `vectors` (n x dim); position i of the index is row i."""
        x = _as_matrix(vectors)
        n, dim = x.shape
        params = params or choose_params(n, dim)
        if params.kind not in KINDS:
            raise RetrievalError(f"unknown index kind {params.kind!r}; use one of {list(KINDS)}")
        faiss = _faiss()
        index = _new_index(faiss, params, dim, n)
        if not index.is_trained:
            index.train(_training_sample(x, params, seed))
        index = _to_device(faiss, index, params)
        index.add(x)
        built = cls(index, params, dim)
        built._set_search_params()
        return built

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append vectors (e.g. new items); returns their positions."""
        x = _as_matrix(vectors, self.dim)
        start = self.size
        self._index.add(x)
        return np.arange(start, start + len(x))

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, positions) per query row, best first; position -1 pads short rows."""
        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, self.dim)
        k_eff = min(k, self.size)
        if k_eff == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, positions = self._index.search(q, k_eff)
        return scores, positions

    def tune(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change search-time parameters without rebuilding (speed vs recall)."""
        self.params = self.params.with_overrides(ef_search=ef_search, nprobe=nprobe)
        self._set_search_params()

    def _set_search_params(self) -> None:
        faiss = _faiss()
        inner = _inner(faiss, self._index)
        if self.params.kind == "hnsw":
            inner.hnsw.efSearch = self.params.ef_search
        elif self.params.kind == "ivfpq":
            if hasattr(inner, "nprobe"):
                inner.nprobe = self.params.nprobe
            else:  # GPU index: search parameters go through the cloner's setter
                faiss.GpuParameterSpace().set_index_parameter(inner, "nprobe", self.params.nprobe)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index (CPU form) to `path` and its parameters to `path`.json."""
        faiss = _faiss()
        path = Path(path)
        cpu = self._index
        if _on_gpu(faiss, cpu):
            cpu = faiss.index_gpu_to_cpu(cpu)
        faiss.write_index(cpu, str(path))
        meta = {"params": asdict(self.params), "dim": self.dim, "size": self.size}
        path.with_name(path.name + ".json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> VectorIndex:
        faiss = _faiss()
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not path.exists() or not meta_path.exists():
            raise RetrievalError(f"no index at {path} (expected the file and {meta_path.name})")
        meta = json.loads(meta_path.read_text())
        params = IndexParams(**meta["params"])
        if device is not None:
            params = replace(params, device=device)
        index = _to_device(faiss, faiss.read_index(str(path)), params)
        loaded = cls(index, params, int(meta["dim"]))
        loaded._set_search_params()
        return loaded


# -- helpers ------------------------------------------------------------------------------------


def _faiss():  # type: ignore[no-untyped-def]
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise RetrievalError("FAISS is not installed: `pip install faiss-cpu`") from exc
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _new_index(faiss, params: IndexParams, dim: int, n: int):  # type: ignore[no-untyped-def]
    ip = faiss.METRIC_INNER_PRODUCT
    if params.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, ip)
        index.hnsw.efConstruction = params.ef_construction
        return index
    if dim % params.pq_m:
        raise RetrievalError(
            f"IVF-PQ needs pq_m to divide the dimension: {params.pq_m} does not divide {dim}"
        )
    nlist = max(1, min(params.nlist, n // 39))  # FAISS wants >= 39 training points per list
    # "np": no polysemous training. index_factory turns it on by default; it only serves
    # polysemous (Hamming-filtered) search, which is not used here, and took ~80% of the build.
    spec = f"IVF{nlist},PQ{params.pq_m}x{params.pq_bits}np" + (",RFlat" if params.refine else "")
    index = faiss.index_factory(dim, spec, ip)
    if params.refine:
        index.k_factor = float(params.refine_factor)
    return index


def _training_sample(x: np.ndarray, params: IndexParams, seed: int) -> np.ndarray:
    cap = max(params.train_per_list * params.nlist, 2**params.pq_bits * 64)
    if len(x) <= cap:
        return x
    rows = np.random.default_rng(seed).choice(len(x), cap, replace=False)
    return x[np.sort(rows)]


def _to_device(faiss, index, params: IndexParams):  # type: ignore[no-untyped-def]
    want = params.device
    if want == "cpu" or params.kind == "hnsw":
        if want == "cuda" and params.kind == "hnsw":
            raise RetrievalError("HNSW has no GPU implementation; use kind='flat' or 'ivfpq'")
        return index
    has_gpu = gpu_available()
    if want == "cuda" and not has_gpu:
        raise RetrievalError(
            "device='cuda' needs faiss-gpu and a visible GPU: install the `gpu` extra "
            "(pip install 'recsys-iranker[gpu]') or use device='cpu'"
        )
    if not has_gpu or (params.kind == "ivfpq" and params.refine):
        return index  # IndexRefineFlat does not move to the GPU as one piece
    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu.referenced_resources = resources  # keep alive as long as the index
    return gpu


def _on_gpu(faiss, index) -> bool:  # type: ignore[no-untyped-def]
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _inner(faiss, index):  # type: ignore[no-untyped-def]
    """The index that holds search parameters (IVF-PQ under a refine wrapper)."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index)
    return faiss.downcast_index(index) if not _on_gpu(faiss, index) else index


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise RetrievalError(f"vectors must be a 2-d array (n x dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise RetrievalError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
    if not np.isfinite(x).all():
        raise RetrievalError("vectors contain NaN or infinity")
    return np.ascontiguousarray(x)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
