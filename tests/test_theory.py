import numpy as np
import pytest
import scipy.optimize

from fitmm import theory
from fitmm.spectral.graph_bands import chebyshev_responses


def random_joint(d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((2 * d, 2 * d))
    c = g @ g.T / (2 * d) + 0.3 * np.eye(2 * d)
    return c[:d, :d], c[:d, d:], c[d:, d:]


def logdet(m: np.ndarray) -> float:
    return float(np.linalg.slogdet(m)[1])


# --- closed forms -----------------------------------------------------------------------------


def test_scalar_informations_match_correlation_forms():
    a, var_x, cov, var_y = 1.7, 2.0, 0.9, 1.3
    i_xt, i_ty = theory.gib_informations(np.array([[a]]), np.array([[var_x]]), np.array([[cov]]), np.array([[var_y]]))
    # T = aX + ξ: I(X;T) = ½ log(1 + SNR_T); I(T;Y) = −½ log(1 − ρ²_TY)
    rho2 = (a * cov) ** 2 / ((a * a * var_x + 1) * var_y)
    assert i_xt == pytest.approx(0.5 * np.log(1 + a * a * var_x), rel=1e-12)
    assert i_ty == pytest.approx(-0.5 * np.log(1 - rho2), rel=1e-12)


def test_informations_match_joint_entropy_form():
    cx, cxy, cy = random_joint(4, seed=3)
    a = np.random.default_rng(0).standard_normal((3, 4))  # a non-square encoder
    i_xt, i_ty = theory.gib_informations(a, cx, cxy, cy)
    cov_t = a @ cx @ a.T + np.eye(3)
    joint_ty = np.block([[cov_t, a @ cxy], [(a @ cxy).T, cy]])
    assert i_xt == pytest.approx(0.5 * logdet(cov_t), rel=1e-10)
    assert i_ty == pytest.approx(0.5 * (logdet(cov_t) + logdet(cy) - logdet(joint_ty)), rel=1e-10)
    beta = 3.0
    assert theory.gib_objective(a, cx, cxy, cy, beta) == pytest.approx(i_xt - beta * i_ty, rel=1e-12)


# --- decoupling across bands ------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(4, 3, 3), (2, 2), (1, 5, 2, 3)])
@pytest.mark.parametrize("beta", [1.5, 5.0, 50.0])
def test_additivity_exact_without_coupling(sizes, beta):
    problem = theory.block_diagonal_problem(sizes, eps=0.0, seed=1)
    assert abs(problem.objective(beta)) > 1e-3  # the check is not trivially 0 = 0
    assert abs(problem.objective(beta) - problem.band_objective_sum(beta)) <= 1e-10


def test_problem_is_block_diagonal_in_its_basis_only_without_coupling():
    sizes = (3, 2)
    bands = np.repeat([0, 1], sizes)
    off = bands[:, None] != bands[None, :]
    for eps, expect_zero in [(0.0, True), (0.3, False)]:
        p = theory.block_diagonal_problem(sizes, eps, seed=2)
        rotated = [p.basis.T @ c @ p.basis for c in (p.cov_x, p.cov_xy, p.cov_y)]
        off_norm = max(np.abs(c[off]).max() for c in rotated)
        assert (off_norm < 1e-12) == expect_zero
        np.testing.assert_allclose(rotated[0][:3, :3], p.band_cov_x[0], atol=1e-12)
        np.testing.assert_allclose(p.encoder @ p.basis, np.block(
            [[p.band_encoders[0], np.zeros((3, 2))], [np.zeros((2, 3)), p.band_encoders[1]]]), atol=1e-12)
        assert np.linalg.eigvalsh(p.cov_x).min() > 0
        base = theory.block_diagonal_problem(sizes, 0.0, seed=2)
        for got, want in zip(p.band_cov_xy + p.band_cov_y, base.band_cov_xy + base.band_cov_y):
            np.testing.assert_array_equal(got, want)  # eps only couples different bands


def test_decoupling_error_grows_as_eps_squared():
    eps = np.logspace(-4, -1, 7)
    errors, slope = theory.decoupling_error(eps, block_sizes=(4, 3, 3), beta=5.0, seed=0)
    assert np.all(errors > 1e-12)
    assert np.all(np.diff(errors) > 0)
    assert slope == pytest.approx(2.0, abs=0.01)
    zero, nan_slope = theory.decoupling_error([0.0])
    assert zero[0] <= 1e-10 and np.isnan(nan_slope)


def test_coupling_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="eps"):
        theory.block_diagonal_problem((2, 2), eps=1.0)


def test_loglog_slope():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    assert theory.loglog_slope(x, 3 * x**1.5) == pytest.approx(1.5)


# --- optimal gains ----------------------------------------------------------------------------


def test_gains_switch_on_at_critical_beta():
    cx, cxy, cy = random_joint(4, seed=1)
    lambdas, critical, _ = theory.gib_optimal_gains(cx, cxy, cy, [])
    assert np.all(np.diff(lambdas) >= 0) and np.all((lambdas > 0) & (lambdas < 1))
    np.testing.assert_allclose(critical, 1 / (1 - lambdas))
    below, above = critical * (1 - 1e-6), critical * (1 + 1e-3)
    _, _, g_below = theory.gib_optimal_gains(cx, cxy, cy, below)
    _, _, g_above = theory.gib_optimal_gains(cx, cxy, cy, above)
    # row i is at (just below / above) component i's critical β
    assert np.all(np.diag(g_below) == 0) and np.all(np.diag(g_above) > 0)
    _, _, g = theory.gib_optimal_gains(cx, cxy, cy, np.linspace(1, 1000, 50))
    assert np.all(np.diff(g, axis=0) >= 0)  # gains grow with β
    assert np.all(np.diff(g[-1]) <= 0)  # weaker components (larger λ) get smaller gains


@pytest.mark.parametrize("beta", [3.0, 10.0, 100.0])
def test_optimal_encoder_is_not_beaten(beta):
    d = 4
    cx, cxy, cy = random_joint(d, seed=1)
    a_opt = theory.gib_optimal_encoder(cx, cxy, cy, beta)
    best = theory.gib_objective(a_opt, cx, cxy, cy, beta)
    rng = np.random.default_rng(7)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(50):
            trial = theory.gib_objective(a_opt + scale * rng.standard_normal((d, d)), cx, cxy, cy, beta)
            assert trial >= best - 1e-12
    for _ in range(50):
        assert theory.gib_objective(rng.standard_normal((d, d)) * 3, cx, cxy, cy, beta) >= best
    found = scipy.optimize.minimize(
        lambda a: theory.gib_objective(a.reshape(d, d), cx, cxy, cy, beta), rng.standard_normal(d * d)
    )
    assert found.fun >= best - 1e-8
    assert found.fun == pytest.approx(best, abs=1e-5)  # a local search reaches the same optimum


def test_below_first_critical_beta_nothing_beats_the_zero_encoder():
    cx, cxy, cy = random_joint(3, seed=4)
    _, critical, gains = theory.gib_optimal_gains(cx, cxy, cy, [1.0])
    beta = 0.9 * critical[0]
    assert np.all(gains == 0)
    rng = np.random.default_rng(0)
    assert min(theory.gib_objective(rng.standard_normal((3, 3)), cx, cxy, cy, beta) for _ in range(100)) > 0


# --- Wiener vs GIB on the scalar model ----------------------------------------------------------


def test_scalar_model_lambda_and_critical_beta():
    for snr in (0.2, 1.0, 7.0):
        cx, cs = np.array([[1 + snr]]), np.array([[snr]])
        lambdas, critical, _ = theory.gib_optimal_gains(cx, cs, cs, [])
        assert lambdas[0] == pytest.approx(1 / (1 + snr))
        assert critical[0] == pytest.approx(1 + 1 / snr)
        _, _, at_critical = theory.gib_optimal_gains(cx, cs, cs, [1 + 1 / snr])
        assert at_critical[0, 0] == 0.0  # exactly off at β_c, not a rounding residue


def test_gib_gain_is_wiener_times_shutoff_factor():
    snr = np.logspace(-2, 2, 41)
    for beta in (1.5, 3.0, 20.0):
        wiener, gib = theory.scalar_wiener_vs_gib(snr, beta)
        np.testing.assert_allclose(wiener, snr / (1 + snr))
        expected = wiener * np.maximum(0, 1 - 1 / ((beta - 1) * snr))
        np.testing.assert_allclose(gib, expected, atol=1e-12)
        assert np.all(gib[snr < 1 / (beta - 1)] == 0) and np.all(gib <= wiener)
    wiener, gib = theory.scalar_wiener_vs_gib(snr, 1e7)
    np.testing.assert_allclose(gib, wiener, rtol=1e-4)  # β → ∞: the GIB gain becomes Wiener's
    assert theory.wiener_gain(1.0) == 0.5


# --- band diagnostics -------------------------------------------------------------------------


def test_band_orthogonality_hand_made():
    b = np.array([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert theory.band_orthogonality(b) == pytest.approx(1 / np.sqrt(2))
    assert theory.band_orthogonality(np.array([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, -2.0]]])) == 0.0
    same = np.random.default_rng(0).standard_normal((1, 5, 3))
    assert theory.band_orthogonality(np.concatenate([same, -2 * same])) == pytest.approx(1.0)


def test_svd_bands_are_orthogonal_and_carry_the_energy():
    z = np.random.default_rng(0).standard_normal((50, 6))
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    groups = np.split(np.arange(6), [2, 4])
    bands = np.stack([z @ vt[g].T @ vt[g] for g in groups])
    assert theory.band_orthogonality(bands) < 1e-12
    frac = theory.band_energy_fractions(bands)
    s2 = np.linalg.svd(z, compute_uv=False) ** 2
    np.testing.assert_allclose(frac, [s2[g].sum() / s2.sum() for g in groups])
    assert np.all(np.diff(frac) < 0)


def test_band_energy_fractions_hand_made():
    b = np.array([[[1.0, 0.0]], [[1.0, np.sqrt(2)]]])
    np.testing.assert_allclose(theory.band_energy_fractions(b), [0.25, 0.75])


def test_off_block_share():
    rng = np.random.default_rng(0)
    n = 40
    # orthonormal centred columns: zero sample covariance between the two modality blocks
    m = rng.standard_normal((n, 5))
    cols, _ = np.linalg.qr(m - m.mean(0))  # combinations of centred columns stay centred
    diag = cols * np.array([3.0, 2.0, 1.0, 1.0, 0.5])
    x = rng.standard_normal(n)
    coupled = np.stack([x, 2 * x], axis=1)  # id block = x, image block = 2x: C = var·[[1, 2], [2, 4]]
    share = theory.off_block_energy_share(np.stack([diag, diag + 0.3 * rng.standard_normal((n, 5))]), (2, 3))
    assert share[0] < 1e-24 and share[1] > 0
    shifted = diag + rng.standard_normal(5)  # column means are not covariance
    assert theory.off_block_energy_share(shifted[None], (2, 3))[0] < 1e-24
    assert theory.off_block_energy_share(coupled[None], (1, 1))[0] == pytest.approx(8 / 25)
    with pytest.raises(ValueError, match="block_dims"):
        theory.off_block_energy_share(coupled[None], (1, 2))


def test_rank_correlation():
    rho, p = theory.rank_correlation([0.1, 0.5, 0.4, 0.9], [1, 3, 2, 10])
    assert rho == pytest.approx(1.0) and 0 <= p <= 1
    rho, _ = theory.rank_correlation([3, 2, 1], [1, 2, 3])
    assert rho == pytest.approx(-1.0)


def test_rank_correlation_ceiling_with_tied_optimal_gains():
    """Two noise bands tie at gain 0: no ordering of three distinct weights gets ρ above √3/2 against them."""
    optimal = [0.26, 0.0, 0.0]
    assert theory.rank_correlation_ceiling(optimal) == pytest.approx(np.sqrt(3) / 2)
    assert theory.rank_correlation([0.766, 0.761, 0.760], optimal)[0] == pytest.approx(np.sqrt(3) / 2)
    assert theory.rank_correlation([0.760, 0.761, 0.766], optimal)[0] < 0
    assert theory.rank_correlation_ceiling([0.5, 0.2, 0.1]) == pytest.approx(1.0)


# --- SSR's fixed Chebyshev bands ----------------------------------------------------------------


def test_band_pass_responses_put_all_energy_in_their_third():
    lam = np.linspace(0, 2, 31)

    def ideal(l: np.ndarray) -> np.ndarray:
        third = np.digitize(l, [2 / 3, 4 / 3])
        return np.stack([third == t for t in range(3)]).astype(float)

    shares = theory.chebyshev_band_energy_by_third(ideal, lam, np.random.default_rng(0).standard_normal((31, 4)))
    np.testing.assert_allclose(shares, np.eye(3))


def test_code_chebyshev_bands_by_third():
    # one eigenvalue per third; responses at λ = 0, 1, 2: low (1.5, 1, .5), mid (.5, −.8, 1.1), high (−1, .8, −.6)
    shares = theory.chebyshev_band_energy_by_third(chebyshev_responses, np.array([0.0, 1.0, 2.0]), np.ones(3))
    np.testing.assert_allclose(shares[0], np.array([2.25, 1.0, 0.25]) / 3.5)
    np.testing.assert_allclose(shares[1], np.array([0.25, 0.64, 1.21]) / 2.1)
    np.testing.assert_allclose(shares[2], np.array([1.0, 0.64, 0.36]) / 2.0)
    # boundaries: λ = 2/3 is in the middle third, λ = 2 in the last
    edge = theory.chebyshev_band_energy_by_third(lambda l: np.ones((1, len(l))), np.array([2 / 3, 2.0]), np.ones(2))
    np.testing.assert_allclose(edge, [[0.0, 0.5, 0.5]])
