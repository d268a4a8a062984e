"""Numerical checks of the spectral claims of FITMM and SSR (FITMM, arXiv 2601.22498;
SSR, arXiv 2512.01372; book/methods.md, "FITMM", "Theory claim", and "SSR").

Gaussian Information Bottleneck (GIB; Chechik, Globerson, Tishby, Weiss, JMLR 2005):
for jointly Gaussian (X, Y) and a linear encoder T = A X + ξ, ξ ~ N(0, I),

    I(X;T) = ½ log det(A Σ_x Aᵀ + I)
    I(T;Y) = ½ log det(A Σ_x Aᵀ + I) − ½ log det(A Σ_{x|y} Aᵀ + I),  Σ_{x|y} = Σ_x − Σ_xy Σ_y⁻¹ Σ_yx
    L(A)   = I(X;T) − β I(T;Y).

FITMM claims that when an orthogonal change of basis block-diagonalises the covariances
into bands, L splits into a sum of per-band objectives, and that the optimum applies a
Wiener-like gain to each band and switches it off below a critical β. The functions here
check those claims, and measure the corresponding properties of trained bands.
All inputs are numpy arrays; everything is computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import scipy.stats

ResponseFn = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------
# Gaussian IB objective


def conditional_cov(cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray) -> np.ndarray:
    """Σ_{x|y} = Σ_x − Σ_xy Σ_y⁻¹ Σ_yx (the Gaussian conditional covariance), symmetrised."""
    c = cov_x - cov_xy @ np.linalg.solve(cov_y, cov_xy.T)
    return (c + c.T) / 2


def _half_logdet_plus_identity(a: np.ndarray, cov: np.ndarray) -> float:
    """½ log det(A Σ Aᵀ + I)."""
    sign, logdet = np.linalg.slogdet(a @ cov @ a.T + np.eye(a.shape[0]))
    if sign <= 0:
        raise ValueError("A Σ Aᵀ + I is not positive definite: is the covariance PSD?")
    return 0.5 * logdet


def gib_informations(a: np.ndarray, cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in nats for T = A X + ξ, ξ ~ N(0, I), by the closed forms above."""
    a = np.asarray(a, dtype=np.float64)
    i_xt = _half_logdet_plus_identity(a, cov_x)
    i_ty = i_xt - _half_logdet_plus_identity(a, conditional_cov(cov_x, cov_xy, cov_y))
    return i_xt, i_ty


def gib_objective(a: np.ndarray, cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray, beta: float) -> float:
    """GIB Lagrangian L = I(X;T) − β I(T;Y) of the encoder T = A X + ξ (to be minimised)."""
    i_xt, i_ty = gib_informations(a, cov_x, cov_xy, cov_y)
    return i_xt - beta * i_ty


# ---------------------------------------------------------------------------
# Decoupling across bands


@dataclass(frozen=True)
class BandProblem:
    """A GIB problem that is block-diagonal in the basis Q, up to an off-block coupling eps.

    X = Q X_b and Y = Q Y_b, where (X_b, Y_b) has joint covariance C0 + eps·S: C0 is
    block-diagonal over bands (band k couples only its own X_b and Y_b coordinates) and S
    only couples different bands. The encoder A = A_b Qᵀ is block-diagonal in the band
    basis, so T = A_b X_b.
    """

    cov_x: np.ndarray
    cov_xy: np.ndarray
    cov_y: np.ndarray
    encoder: np.ndarray
    basis: np.ndarray
    block_sizes: tuple[int, ...]
    band_encoders: tuple[np.ndarray, ...]
    band_cov_x: tuple[np.ndarray, ...]
    band_cov_xy: tuple[np.ndarray, ...]
    band_cov_y: tuple[np.ndarray, ...]

    def objective(self, beta: float) -> float:
        """L of the whole problem, computed in the original (rotated) basis."""
        return gib_objective(self.encoder, self.cov_x, self.cov_xy, self.cov_y, beta)

    def band_objective_sum(self, beta: float) -> float:
        """Σ_k L_k, each band's objective from its own diagonal blocks and encoder block."""
        parts = zip(self.band_encoders, self.band_cov_x, self.band_cov_xy, self.band_cov_y)
        return sum(gib_objective(a, cx, cxy, cy, beta) for a, cx, cxy, cy in parts)


def block_diagonal_problem(block_sizes: Sequence[int], eps: float, seed: int = 0) -> BandProblem:
    """Random GIB problem with bands of the given sizes and off-block coupling eps ∈ [0, 1).

    Per band k of size n_k, a random joint covariance C_k of (x_k, y_k) (2n_k square,
    eigenvalues ≥ 0.5); C0 = blockdiag(C_k). The coupling S is a random symmetric matrix,
    zero on every band's diagonal block, scaled so that ‖S‖₂ = λ_min(C0): C0 + eps·S is
    positive definite for every eps < 1, and the diagonal blocks do not depend on eps.
    Q is a Haar-random orthogonal d × d matrix (d = Σ n_k), applied to both X and Y; the
    band encoders A_k are random n_k × n_k. The same seed gives the same C0, S, Q and A_k
    for every eps, so eps is the only thing that varies.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    sizes = tuple(int(n) for n in block_sizes)
    d = sum(sizes)
    rng = np.random.default_rng(seed)
    # Joint coordinates ordered band by band: (x_1, y_1, x_2, y_2, ...).
    joint_blocks = []
    for n in sizes:
        g = rng.standard_normal((2 * n, 2 * n))
        joint_blocks.append(g @ g.T / (2 * n) + 0.5 * np.eye(2 * n))
    c0 = scipy.linalg.block_diag(*joint_blocks)
    band_of = np.repeat(np.arange(len(sizes)), [2 * n for n in sizes])
    s = rng.standard_normal((2 * d, 2 * d))
    s = (s + s.T) * (band_of[:, None] != band_of[None, :])
    s *= np.linalg.eigvalsh(c0)[0] / np.linalg.norm(s, 2)
    joint = c0 + eps * s

    # Band-basis index sets of x and y inside the joint ordering.
    starts = np.concatenate([[0], np.cumsum([2 * n for n in sizes])[:-1]])
    x_idx = np.concatenate([st + np.arange(n) for st, n in zip(starts, sizes)])
    y_idx = np.concatenate([st + n + np.arange(n) for st, n in zip(starts, sizes)])
    q = scipy.stats.ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    band_encoders = tuple(rng.standard_normal((n, n)) for n in sizes)
    a_band = scipy.linalg.block_diag(*band_encoders)

    offsets = np.cumsum((0,) + sizes[:-1])  # band k's coordinates in X_b (and Y_b)

    def blocks(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(joint[np.ix_(rows[o:o + n], cols[o:o + n])] for o, n in zip(offsets, sizes))

    return BandProblem(
        cov_x=q @ joint[np.ix_(x_idx, x_idx)] @ q.T,
        cov_xy=q @ joint[np.ix_(x_idx, y_idx)] @ q.T,
        cov_y=q @ joint[np.ix_(y_idx, y_idx)] @ q.T,
        encoder=a_band @ q.T,
        basis=q,
        block_sizes=sizes,
        band_encoders=band_encoders,
        band_cov_x=blocks(x_idx, x_idx),
        band_cov_xy=blocks(x_idx, y_idx),
        band_cov_y=blocks(y_idx, y_idx),
    )


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x over the points with x > 0 and y > 0 (NaN if < 2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (x > 0) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def decoupling_error(
    eps_values: Sequence[float],
    block_sizes: Sequence[int] = (4, 3, 3),
    beta: float = 5.0,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """|L − Σ_k L_k| for each coupling eps (see `block_diagonal_problem`), and its log-log slope.

    Claim: at eps = 0 the objective is exactly additive over bands (error at machine
    precision, since A Σ Aᵀ is block-diagonal and log det adds over blocks). For eps > 0
    the first-order term of log det(I + D + eps·F) is eps·tr((I + D)⁻¹F) = 0 for off-block F,
    and the band-wise Σ_{x_k|y_k} differs from the diagonal block of Σ_{x|y} only at
    O(eps²), so the error's leading term is c·eps² and the fitted slope is ≈ 2.
    """
    eps = np.asarray(eps_values, dtype=np.float64)
    errors = np.empty_like(eps)
    for i, e in enumerate(eps):
        problem = block_diagonal_problem(block_sizes, float(e), seed)
        errors[i] = abs(problem.objective(beta) - problem.band_objective_sum(beta))
    return errors, loglog_slope(eps, errors)


# ---------------------------------------------------------------------------
# Optimal GIB encoder (Chechik et al. 2005, Theorem 3.1)


def _gib_eigen(cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending eigenvalues λ_i of Σ_{x|y}Σ_x⁻¹ and left eigenvectors v_i (columns), vᵢᵀΣ_x vᵢ = 1.

    vᵀ Σ_{x|y}Σ_x⁻¹ = λ vᵀ  ⇔  Σ_{x|y} v = λ Σ_x v, a symmetric-definite generalised
    eigenproblem; `eigh` normalises vᵀΣ_x v = 1, so r_i = 1 below.
    """
    cov_x = np.asarray(cov_x, dtype=np.float64)
    return scipy.linalg.eigh(conditional_cov(cov_x, cov_xy, cov_y), cov_x)


def _gains(lambdas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """α_i(β) = sqrt((β(1 − λ_i) − 1)/(λ_i r_i)) where positive, else 0 (r_i = 1).

    The numerator is set to 0 within rounding of β(1 − λ) (a few ulps): α grows like
    sqrt(β − β_i), so rounding at β = β_i would otherwise show as gains of ~1e-8.
    """
    scale = betas[:, None] * (1.0 - lambdas[None, :])
    num = scale - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha2 = np.where(num > 8 * np.finfo(np.float64).eps * scale, num / lambdas[None, :], 0.0)
    return np.sqrt(alpha2)


def gib_optimal_gains(
    cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray, betas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues λ_i (ascending), critical β_i = 1/(1 − λ_i), and optimal gains α_i(β), (len(betas), d).

    Chechik et al. (JMLR 2005): the GIB optimum is A = diag(α_1, …, α_d) Vᵀ with v_i the left
    eigenvectors of Σ_{x|y}Σ_x⁻¹. Component i is switched on only for β > β_i, where its
    gain is α_i = sqrt((β(1 − λ_i) − 1)/(λ_i r_i)), r_i = vᵢᵀΣ_x vᵢ. Eigenvectors are
    normalised to r_i = 1, so α_i² is the SNR of T's component i (its signal variance over
    the unit noise). λ_i = 1 (no information about Y) gives β_i = ∞.
    """
    lambdas, _ = _gib_eigen(cov_x, cov_xy, cov_y)
    with np.errstate(divide="ignore"):
        critical = 1.0 / (1.0 - lambdas)
    critical[lambdas >= 1.0] = np.inf
    return lambdas, critical, _gains(lambdas, np.asarray(betas, dtype=np.float64))


def gib_optimal_encoder(cov_x: np.ndarray, cov_xy: np.ndarray, cov_y: np.ndarray, beta: float) -> np.ndarray:
    """The optimal encoder A = diag(α(β)) Vᵀ (d × d; rows of switched-off components are zero)."""
    lambdas, v = _gib_eigen(cov_x, cov_xy, cov_y)
    return _gains(lambdas, np.array([beta], dtype=np.float64))[0][:, None] * v.T


def wiener_gain(snr: np.ndarray | float) -> np.ndarray:
    """Wiener (MMSE) gain snr/(1 + snr) of the estimate of s from x = s + n."""
    snr = np.asarray(snr, dtype=np.float64)
    return snr / (1.0 + snr)


def scalar_wiener_vs_gib(snr: Sequence[float], beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Wiener gain and the GIB optimum's effective gain on the scalar model x = s + n, y = s.

    With var_n = 1, var_s = SNR: Σ_x = 1 + SNR, Σ_xy = Σ_y = SNR, Σ_{x|y} = 1, so
    λ = 1/(1 + SNR) and β_c = 1 + 1/SNR. The effective gain is the coefficient of x in the
    MMSE read-out E[s | T] of the optimal encoder T = a x + ξ, i.e. a²·var_s/(a²·Σ_x + 1),
    computed here from `gib_optimal_encoder`. Algebra gives the closed form
    wiener(SNR)·max(0, 1 − 1/((β − 1)·SNR)): Wiener's shrinkage times a factor that cuts
    the band off below β_c and tends to 1 as β → ∞.
    """
    snr = np.asarray(snr, dtype=np.float64)
    gib = np.empty_like(snr)
    for i, s in enumerate(snr):
        cov_x, cov_s = np.array([[1.0 + s]]), np.array([[s]])
        a = gib_optimal_encoder(cov_x, cov_s, cov_s, beta)[0, 0]
        gib[i] = a * a * s / (a * a * (1.0 + s) + 1.0)
    return wiener_gain(snr), gib


# ---------------------------------------------------------------------------
# Diagnostics of trained bands (FITMM, book/methods.md: bands (M, N, D) of one side's embeddings)


def band_orthogonality(bands: np.ndarray) -> float:
    """max_{j≠k} |⟨B_j, B_k⟩_F| / (‖B_j‖_F ‖B_k‖_F) over the M bands of an (M, N, D) stack.

    0 for mutually orthogonal bands (FITMM's SVD bands are, by construction); a band of
    zero norm counts as orthogonal to every other.
    """
    flat = np.asarray(bands, dtype=np.float64).reshape(len(bands), -1)
    if len(flat) < 2:
        raise ValueError("need at least two bands")
    norms = np.linalg.norm(flat, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cos = np.abs(flat @ flat.T) / np.outer(safe, safe)
    np.fill_diagonal(cos, 0.0)
    return float(cos.max())


def band_energy_fractions(bands: np.ndarray) -> np.ndarray:
    """(M,) share ‖B_k‖_F² / Σ_j ‖B_j‖_F² of each band in the total band energy."""
    energy = np.square(np.asarray(bands, dtype=np.float64)).sum(axis=(1, 2))
    return energy / energy.sum()


def off_block_energy_share(bands: np.ndarray, block_dims: Sequence[int]) -> np.ndarray:
    """(M,) share of each band's covariance energy lying off the modality-block diagonal.

    The D columns of a band are split into contiguous modality blocks of sizes block_dims
    (e.g. id, image, text: 64, 64, 64). With C = B̄ᵀB̄/N the column covariance of the band
    (B̄ = B with column means removed), the share is Σ_{m≠m'} ‖C_{mm'}‖_F² / ‖C‖_F²: 0 when
    the modalities are uncorrelated within the band, 1 when all covariance is cross-modal.
    NaN for a band with zero covariance.
    """
    b = np.asarray(bands, dtype=np.float64)
    dims = np.asarray(block_dims)
    if dims.sum() != b.shape[2]:
        raise ValueError(f"block_dims sum to {dims.sum()}, bands have D = {b.shape[2]}")
    centred = b - b.mean(axis=1, keepdims=True)
    cov = np.einsum("mnd,mne->mde", centred, centred) / b.shape[1]
    block = np.repeat(np.arange(len(dims)), dims)
    off = block[:, None] != block[None, :]
    total = np.square(cov).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.square(cov * off).sum(axis=(1, 2)) / total


def rank_correlation(learned: Sequence[float], optimal: Sequence[float]) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value between learned band weights and optimal gains."""
    result = scipy.stats.spearmanr(np.asarray(learned, dtype=np.float64), np.asarray(optimal, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def rank_correlation_ceiling(optimal: Sequence[float]) -> float:
    """The largest Spearman ρ that weights without ties can reach against `optimal`: below 1 when optimal gains
    tie (two bands of pure noise both call for gain 0), whichever way the learned weights order the tied bands."""
    optimal = np.asarray(optimal, dtype=np.float64)
    return rank_correlation(np.argsort(np.argsort(optimal, kind="stable")), optimal)[0]


# ---------------------------------------------------------------------------
# SSR's fixed Chebyshev bands (the released code's path, book/methods.md "SSR")


def chebyshev_band_energy_by_third(
    responses_fn: ResponseFn, eigenvalues: np.ndarray, coeffs: np.ndarray
) -> np.ndarray:
    """(M, 3) share of each band's energy in the spectrum thirds [0, 2/3), [2/3, 4/3), [4/3, 2].

    responses_fn maps Laplacian eigenvalues λ (n,) to band responses h_m(λ) (M, n); coeffs
    are the signal's spectral coefficients C = Uᵀx, (n,) or (n, D). Band m's energy at
    eigenvalue i is h_m(λ_i)²·‖C_i‖², and row m is its split over the thirds (rows sum to
    1). A band-pass band puts ≈ all its energy in one third; SSR's fixed code bands do not.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    c = np.asarray(coeffs, dtype=np.float64).reshape(len(lam), -1)
    energy = np.square(np.asarray(responses_fn(lam), dtype=np.float64)) * np.square(c).sum(axis=1)
    third = np.digitize(lam, [2.0 / 3.0, 4.0 / 3.0])  # λ = 2 belongs to the last third
    by_third = np.stack([energy[:, third == t].sum(axis=1) for t in range(3)], axis=1)
    return by_third / by_third.sum(axis=1, keepdims=True)
