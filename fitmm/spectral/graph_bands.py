"""Band decompositions of a node signal on the user-item graph (SSR, arXiv 2512.01372;
book/methods.md, "SSR").

A signal X (N x D) on the N = N_u + N_i nodes is split into M bands (M x N x D)
by its frequencies on the normalised Laplacian L = I − Â, whose eigenvalues λ lie
in [0, 2]. All paths work with L̃ = L − I = −Â (spectrum t = λ − 1 ∈ [−1, 1]),
so the Chebyshev polynomials T_k(L̃) need no rescaling:
T_0 X = X, T_1 X = L̃X, T_k X = 2 L̃ T_{k−1} X − T_{k−2} X.

- `auto`: the released code's choice, `ExactBands` when N ≤ 5000, else `ChebyshevBands`.
- `ChebyshevBands`: the released SSR code's fixed split (M = 3), not band-pass.
- `ExactBands`: the paper's equal-energy bands from a dense eigendecomposition.
- `ScalableBands`: this study's equal-energy bands from Jackson-damped Chebyshev
  expansions of interval indicators (kernel polynomial method), linear in edges.

Every path maps X to bands differentiably in X; what depends only on the graph
is computed once (and the eigendecomposition cached on disk). Given its borders, every
split is linear in X; the equal-energy paths take the borders from a `signal` that may
differ from X (SSR cuts R + H at the borders of [R | H]: the bands of [R | H] with
their halves summed, at half the width).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import nn

from fitmm.cache import cached, graph_key
from fitmm.config import resolve_device
from fitmm.errors import TrainingError

BAND_PATHS = ("auto", "chebyshev", "exact", "scalable")
AUTO_EXACT_MAX_NODES = 5000  # the released SSR code: exact eigh bands up to this many nodes, Chebyshev above


# --- Chebyshev polynomials of L̃ = −Â --------------------------------------------------------------


def next_term(adj: torch.Tensor, prev: torch.Tensor, cur: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """T_{k+1}X = 2L̃ T_kX − T_{k−1}X = −2Â T_kX − T_{k−1}X in one fused sparse addmm, written over T_{k−1}
    when `overwrite` (without gradient): a fresh N x D buffer per order costs more than the mm itself on CPU."""
    if overwrite:
        return prev.addmm_(adj, cur, beta=-1, alpha=-2)
    return torch.addmm(prev, adj, cur, beta=-1, alpha=-2)


def chebyshev_moments(adj: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
    """μ_k = Σ_cols xᵀ T_k(L̃) x for k = 0..K (float64), from ⌈K/2⌉ sparse mms, without gradient.

    T_j T_k = (T_{j+k} + T_{|j−k|})/2 gives μ_{2k} = 2⟨T_k x, T_k x⟩ − μ_0 and
    μ_{2k−1} = 2⟨T_k x, T_{k−1} x⟩ − μ_1.
    """

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.dot(a.flatten(), b.flatten()).double()

    moments = torch.empty(order + 1, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        prev, cur = x, -torch.sparse.mm(adj, x)
        moments[0], moments[1] = dot(x, x), dot(cur, x)
        for k in range(1, (order + 1) // 2 + 1):
            if k > 1:
                prev, cur = cur, next_term(adj, prev, cur, overwrite=prev is not x)
                moments[2 * k - 1] = 2 * dot(cur, prev) - moments[1]
            if 2 * k <= order:
                moments[2 * k] = 2 * dot(cur, cur) - moments[0]
    return moments


class ChebyshevFilter(torch.autograd.Function):
    """Y_f = Σ_k c_fk T_k(L̃) X for each row f of c (F x K+1) at the given graph rows (None: all N), as
    F x rows x D, with a hand-written backward.

    The filters are polynomials of the symmetric L̃, so the gradient is Σ_k T_k(L̃) H_k with
    H_k = Σ_f c_fk G_f, summed by Clenshaw's recurrence b_k = H_k + 2L̃ b_{k+1} − b_{k+2},
    Σ_k T_k H_k = H_0 + L̃ b_1 − b_2: K sparse mms each way, as autograd through the recurrence
    would take, but in place on a few N x D buffers (memory O((F + 3) N D) whatever K). Only the rows
    asked for are accumulated forward, and H_k lives on them backward: per order, one gather or scatter
    of those rows instead of F passes over all N.
    """

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor, coefficients: torch.Tensor,
                rows: torch.Tensor | None) -> torch.Tensor:
        ctx.adj, ctx.coefficients, ctx.rows = adj, coefficients.tolist(), rows
        c = ctx.coefficients
        prev, cur = x, -torch.sparse.mm(adj, x)
        out = x.new_zeros(len(c), *(x.shape if rows is None else (len(rows), x.shape[1])))
        for k in range(len(c[0])):
            if k >= 2:
                prev, cur = cur, next_term(adj, prev, cur, overwrite=prev is not x)
            if not any(c[f][k] for f in range(len(c))):  # the released split has five non-zeros of eight
                continue
            term = cur if k else prev
            term = term if rows is None else term.index_select(0, rows)
            for f in range(len(c)):
                if c[f][k]:
                    out[f].add_(term, alpha=c[f][k])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None, None]:
        adj, c, rows = ctx.adj, ctx.coefficients, ctx.rows
        n, width = adj.shape[0], grad.shape[2]
        stacked = grad.reshape(len(c), -1).T  # (rows·D) x F: H_k = stacked @ c_k, one pass over the F gradients
        coefficients = torch.tensor(c, dtype=grad.dtype, device=grad.device)

        def h(k: int, into: torch.Tensor) -> torch.Tensor:
            """into + H_k, H_k = Σ_f c_fk G_f (on the rows)."""
            if not any(c[f][k] for f in range(len(c))):
                return into
            h_k = torch.mv(stacked, coefficients[:, k]).view(-1, width)
            return into.add_(h_k) if rows is None else into.index_add_(0, rows, h_k)

        b1, b2 = h(len(c[0]) - 1, grad.new_zeros(n, width)), grad.new_zeros(n, width)
        for k in range(len(c[0]) - 2, 0, -1):
            b1, b2 = h(k, b2.addmm_(adj, b1, beta=-1, alpha=-2)), b1  # b_k = H_k − 2Â b_{k+1} − b_{k+2}
        return None, h(0, b2.addmm_(adj, b1, beta=-1, alpha=-1)), None, None  # H_0 − Â b_1 − b_2


def chebyshev_filter(adj: torch.Tensor, x: torch.Tensor, coefficients: torch.Tensor,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k c_fk T_k(L̃) X for each row f of `coefficients` (F x K+1) at the graph rows `rows` (None: all):
    F x len(rows) x D, differentiable in X."""
    return ChebyshevFilter.apply(adj, x, coefficients, rows)


class GraphBands(nn.Module):
    """Maps a node signal X (N x D) to M bands (M x N x D) that sum to X; `forward(x, rows)` returns the bands
    of the given rows only (M x len(rows) x D), which the exact path computes at a fraction of the cost.
    `forward(x, rows, signal)`, with `signal` column blocks of N rows that sum to X (default: X alone), places
    the band borders by the energy of the blocks side by side and cuts X there, so that bands(R + H,
    signal=(R, H)) equals bands([R | H]) with its two halves summed, without building [R | H]."""

    n_bands: int

    def __init__(self, adj: torch.Tensor, n_bands: int):
        super().__init__()
        self.register_buffer("adj", adj, persistent=False)
        self.n_bands = n_bands
        self.n_nodes = adj.shape[0]


# --- the released code's fixed Chebyshev split -------------------------------------------------


def chebyshev_responses(lam: torch.Tensor) -> torch.Tensor:
    """Frequency responses (3 x len(lam)) of the fixed low / mid / high filters at eigenvalues λ of L.

    With t = λ − 1: low = 1 − t/2, mid = 0.8 T_2(t) + 0.3 T_3(t), high = 1 − low − mid.
    """
    t = torch.as_tensor(lam, dtype=torch.float64) - 1
    low = 1 - 0.5 * t
    mid = 0.8 * (2 * t**2 - 1) + 0.3 * (4 * t**3 - 3 * t)
    return torch.stack([low, mid, 1 - low - mid])


class ChebyshevBands(GraphBands):
    """SSR's released split: low = x − 0.5 T_1x, mid = 0.8 T_2x + 0.3 T_3x, high = x − low − mid (M = 3);
    its filters are fixed, so a `signal` changes nothing."""

    def __init__(self, adj: torch.Tensor, n_bands: int = 3):
        if n_bands != 3:
            raise TrainingError(f"bands: chebyshev is the released code's fixed 3-band split; got n_bands={n_bands}")
        super().__init__(adj, n_bands)
        self.filters = torch.tensor([[1.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.8, 0.3]])  # low, mid over T_0..T_3

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None,
                signal: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        lower = chebyshev_filter(self.adj, x, self.filters, rows)
        x = x if rows is None else x[rows]
        return torch.cat([lower, (x - lower.sum(0)).unsqueeze(0)])


# --- the paper's exact equal-energy bands ------------------------------------------------------


def eigh_bytes(n: int) -> int:
    """Rough peak memory of a dense float64 eigh of an n x n matrix (matrix, vectors, LAPACK workspace)."""
    return 4 * 8 * n * n


def check_dense_eigh(n: int, max_nodes: int = 20_000, memory_fraction: float = 0.5) -> None:
    """Refuse (TrainingError naming size and memory) a dense eigendecomposition of an n-node Laplacian that is
    above `max_nodes` or would take more than `memory_fraction` of this machine's RAM."""
    need = eigh_bytes(n)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if n > max_nodes or need > memory_fraction * ram:
        raise TrainingError(
            f"bands: exact needs a dense eigendecomposition of the {n:,} x {n:,} graph Laplacian "
            f"(about {need / 2**30:.1f} GiB, O(N^3) time); the limit is N <= {max_nodes:,} and "
            f"{memory_fraction:.0%} of this machine's {ram / 2**30:.1f} GiB RAM. Use bands: scalable."
        )


def laplacian_eigh(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, float64) and eigenvectors (float32 columns) of L = I − Â, on the CPU, cached per
    graph; computed on the GPU where there is one (the dense O(N³) step, once per graph, whatever the run's device)."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        device = resolve_device("auto")
        lap = torch.eye(adj.shape[0], dtype=torch.float64, device=device) - adj.to(device).to_dense().double()
        evals, evecs = torch.linalg.eigh(lap)
        return evals.cpu(), evecs.float().cpu()

    evals, evecs = cached(f"eigh-{graph_key(adj)}", build)
    return evals, evecs


def energy_borders(cum: torch.Tensor, n_bands: int, total: torch.Tensor | None = None) -> torch.Tensor:
    """Indices j_1 < ... < j_{M−1} where a cumulative energy (ascending) first reaches m/M of `total`
    (default: its last value, the whole spectrum's energy).

    The crossing eigenvector belongs to the lower band; a single eigenvector with more than 1/M
    of the energy leaves a band empty (equal borders), as in the paper's rule.
    """
    total = cum[-1] if total is None else total
    targets = total * torch.arange(1, n_bands, dtype=cum.dtype, device=cum.device) / n_bands
    return torch.searchsorted(cum, targets) + 1


class Projection(torch.autograd.Function):
    """C = BᵀX (B: N x J eigenvectors) given its value, computed without gradient elsewhere; the backward is B G."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, basis: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(basis)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (basis,) = ctx.saved_tensors
        return basis @ grad, None, None


class ExactBands(GraphBands):
    """The paper's equal-energy bands: C = BᵀX over eigenvectors B of L (ascending λ), band m = B_m C_m.

    Borders are recomputed from the current X at every forward, without gradient (they are indices),
    so they follow the signal as the paper's rule says; the projection itself is differentiable.
    The eigenvector ordering inside a degenerate eigenvalue (bipartite graphs have at least
    |N_u − N_i| eigenvalues λ = 1) is arbitrary, so a border falling there splits it arbitrarily.
    A dense eigendecomposition needs O(N²) memory and O(N³) time: refused (`check_dense_eigh`)
    above 20,000 nodes or half the machine's RAM.

    B is orthonormal, so the energy ‖X‖² of all N coefficients is known before any is computed: C is
    built `chunk` eigenvectors at a time, ascending, only until the cumulative energy reaches the last
    border's (M − 1)/M, and the top band is X minus the others (B_M B_Mᵀ X, as the bands sum to X).
    Each forward costs N·J·D multiply-adds for C (N·J times the blocks' width with a `signal`),
    rows·J·D for the bands and N·J·D backward, with J the eigenvectors below the last border (on
    TikTok, whose eigenvalue λ = 1 holds 65% of the N = 16,018, the last of three borders falls inside it).
    """

    chunk = 512  # eigenvectors projected at a time

    def __init__(self, adj: torch.Tensor, n_bands: int):
        super().__init__(adj, n_bands)
        check_dense_eigh(adj.shape[0])
        evals, evecs = laplacian_eigh(adj)
        self.register_buffer("evals", evals, persistent=False)
        # row-major (LAPACK returns columns contiguous): a batch's rows of B are then a fast gather, 10x the
        # strided one on TikTok; the products with B and Bᵀ cost the same in either layout
        self.register_buffer("basis", evecs.contiguous(), persistent=False)
        self.borders = torch.zeros(n_bands - 1)  # λ of the latest forward's band borders (diagnostics)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None,
                signal: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        parts = list(signal) if signal is not None else [x]
        with torch.no_grad():  # the borders' coefficients of all blocks side by side; theirs sum to X's
            wide = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].detach()
            total = wide.double().square().sum()
            last_target = total * (self.n_bands - 1) / self.n_bands
            coefs, energy, reached = [], [], 0.0
            for start in range(0, self.n_nodes, self.chunk):
                coefs.append(self.basis[:, start : start + self.chunk].T @ wide)
                energy.append(coefs[-1].double().square().sum(1))
                reached += energy[-1].sum()
                if reached >= last_target:
                    break
            cuts = energy_borders(torch.cat(energy).cumsum(0), self.n_bands, total).clamp(max=self.n_nodes)
            inner = cuts.clamp(1, self.n_nodes - 1)
            self.borders = ((self.evals[inner - 1] + self.evals[inner]) / 2).float().cpu()
            below = int(cuts[-1])
            value = sum(torch.cat(coefs)[:below].split([p.shape[1] for p in parts], dim=1))
        coef = Projection.apply(x, self.basis[:, :below], value)
        basis = self.basis[:, :below] if rows is None else self.basis[rows, :below]
        bounds = [0, *cuts.tolist()]
        lower = torch.stack([basis[:, a:b] @ coef[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        top = (x if rows is None else x[rows]) - lower.sum(0)
        return torch.cat([lower, top.unsqueeze(0)])


# --- this study's scalable equal-energy bands ---------------------------------------------------


def jackson_damping(order: int) -> torch.Tensor:
    """Jackson kernel g_0..g_K (Weiße et al., Rev. Mod. Phys. 2006): removes Gibbs oscillations, keeps h ≥ 0."""
    n = order + 1
    k = torch.arange(n, dtype=torch.float64)
    q = math.pi / (n + 1)
    return ((n - k + 1) * torch.cos(q * k) + torch.sin(q * k) / math.tan(q)) / (n + 1)


def step_coefficients(t: torch.Tensor, order: int) -> torch.Tensor:
    """Chebyshev coefficients (len(t) x K+1) of the step 1[s ≤ t] on [−1, 1], undamped.

    For s = cos θ: c_0 = (π − θ_t)/π, c_k = −2 sin(k θ_t)/(kπ), θ_t = arccos t. An interval
    indicator 1[a < s ≤ b] has coefficients step(b) − step(a).
    """
    theta = torch.arccos(t.clamp(-1, 1)).unsqueeze(1)
    k = torch.arange(1, order + 1, dtype=t.dtype, device=t.device)
    return torch.cat([(math.pi - theta) / math.pi, -2 * torch.sin(k * theta) / (k * math.pi)], dim=1)


class ScalableBands(GraphBands):
    """Equal-energy bands by Jackson-damped Chebyshev band-pass filters (this study; book/methods.md, "SSR").

    Spectral moments μ_k = Σ_cols xᵀ T_k(L̃) x (no gradient) give the cumulative spectral energy
    E(t) = Σ_k g_k c_k(t) μ_k, with g_k the Jackson damping and c_k(t) the step coefficients;
    border t_m is the first point of a fine grid (uniform in θ = arccos t) where E(t_m) ≥ m/M · μ_0.
    Band m = Σ_k g_k (c_k(t_m) − c_k(t_{m−1})) T_k(L̃) X for m < M, and the last band is X minus
    the others, so bands sum exactly to X. Like the exact path, borders follow X at each forward.
    Cost per forward: ⌈K/2⌉ sparse mms for the moments and K for the bands (plus K backward), each
    linear in edges; memory O(M N D). A polynomial of order K resolves the spectrum to about
    ±6.5/K in λ near λ = 1 (finer towards 0 and 2), so energy within that distance of a border is
    shared by the two bands; a border inside a point mass (λ = 1 on bipartite graphs with
    N_u ≠ N_i) splits it about evenly.
    """

    def __init__(self, adj: torch.Tensor, n_bands: int, order: int = 100, grid: int = 4096):
        super().__init__(adj, n_bands)
        if order < 2:
            raise TrainingError(f"bands: scalable needs a Chebyshev order of at least 2; got {order}")
        self.order = order
        t_grid = torch.cos(torch.linspace(math.pi, 0, grid, dtype=torch.float64))
        g = jackson_damping(order)
        self.register_buffer("t_grid", t_grid, persistent=False)
        self.register_buffer("damping", g, persistent=False)
        self.register_buffer("cumulative", step_coefficients(t_grid, order) * g, persistent=False)
        self.borders = torch.zeros(n_bands - 1)  # λ of the latest forward's band borders (diagnostics)

    def energy_curve(self, moments: torch.Tensor) -> torch.Tensor:
        """Estimated cumulative spectral energy E(t) on the grid, from the moments."""
        return torch.cummax(self.cumulative @ moments, 0).values  # monotone up to float error

    @torch.no_grad()
    def cumulative_energy(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ grid, estimated fraction of X's spectral energy at eigenvalues ≤ λ), for plots and checks."""
        moments = chebyshev_moments(self.adj, x, self.order)
        return self.t_grid + 1, self.energy_curve(moments) / moments[0]

    def band_filters(self, moments: torch.Tensor) -> torch.Tensor:
        """Damped Chebyshev coefficients ((M−1) x (K+1)) of the lower M − 1 bands, borders from the moments."""
        energy = self.energy_curve(moments)
        targets = moments[0] * torch.arange(1, self.n_bands, dtype=moments.dtype, device=moments.device) / self.n_bands
        borders = self.t_grid[torch.searchsorted(energy, targets).clamp(max=len(self.t_grid) - 1)]
        self.borders = (borders + 1).float().cpu()
        steps = step_coefficients(torch.cat([borders.new_full((1,), -1.0), borders]), self.order) * self.damping
        return steps[1:] - steps[:-1]

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None,
                signal: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        with torch.no_grad():  # moments add up over columns, so over the signal's blocks
            filters = self.band_filters(sum(chebyshev_moments(self.adj, block, self.order) for block in signal or [x]))
        lower = chebyshev_filter(self.adj, x, filters, rows)
        x = x if rows is None else x[rows]
        return torch.cat([lower, (x - lower.sum(0)).unsqueeze(0)])


def resolve_band_path(path: str, n_nodes: int) -> str:
    """`auto` as the released code chooses: exact when N ≤ 5000 nodes, Chebyshev above; other paths as named."""
    if path == "auto":
        return "exact" if n_nodes <= AUTO_EXACT_MAX_NODES else "chebyshev"
    return path


def make_graph_bands(path: str, adj: torch.Tensor, n_bands: int, order: int = 100) -> GraphBands:
    """The band decomposition named by a config's `bands` key (`auto` resolved by `resolve_band_path`)."""
    path = resolve_band_path(path, adj.shape[0])
    if path == "chebyshev":
        return ChebyshevBands(adj, n_bands)
    if path == "exact":
        return ExactBands(adj, n_bands)
    if path == "scalable":
        return ScalableBands(adj, n_bands, order)
    raise TrainingError(f"unknown bands path {path!r}; expected one of {', '.join(BAND_PATHS)}")
