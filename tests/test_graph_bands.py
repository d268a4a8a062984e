import pytest
import torch

from fitmm.errors import TrainingError
from fitmm.spectral.graph_bands import (
    check_dense_eigh,
    ChebyshevBands,
    ChebyshevFilter,
    ExactBands,
    ScalableBands,
    chebyshev_moments,
    chebyshev_responses,
    energy_borders,
    jackson_damping,
    laplacian_eigh,
    make_graph_bands,
    step_coefficients,
)


def signals(adj: torch.Tensor) -> dict[str, torch.Tensor]:
    x = torch.randn(adj.shape[0], 32, generator=torch.Generator().manual_seed(0))
    ax = torch.sparse.mm(adj, x)
    return {"white": x, "smooth": x + 2 * ax + torch.sparse.mm(adj, ax)}  # (2 − λ)² response: DRAGON-like


def recurrence(adj: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
    """Reference T_0(L̃)X .. T_order(L̃)X by the plain three-term recurrence."""
    terms = [x, -torch.sparse.mm(adj, x)]
    for _ in range(2, order + 1):
        terms.append(-2 * torch.sparse.mm(adj, terms[-1]) - terms[-2])
    return torch.stack(terms[: order + 1])


def energy_fractions(bands: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return bands.square().sum((1, 2)) / x.square().sum()


@pytest.mark.parametrize("path,n_bands", [("chebyshev", 3), ("exact", 2), ("exact", 4), ("scalable", 3), ("scalable", 5)])
def test_bands_sum_to_input(small_graph, path, n_bands):
    x = torch.randn(small_graph.shape[0], 8, generator=torch.Generator().manual_seed(2))
    bands = make_graph_bands(path, small_graph, n_bands, order=20)(x)
    assert bands.shape == (n_bands, *x.shape)
    torch.testing.assert_close(bands.sum(0), x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", ["chebyshev", "exact", "scalable"])
def test_bands_of_rows_are_rows_of_bands(small_graph, path):
    x = torch.randn(small_graph.shape[0], 8, generator=torch.Generator().manual_seed(6))
    rows = torch.tensor([5, 0, 77, 5, 99])
    bands = make_graph_bands(path, small_graph, 3, order=20)
    torch.testing.assert_close(bands(x, rows), bands(x)[:, rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["chebyshev", "exact", "scalable"])
def test_bands_of_a_sum_at_the_borders_of_its_parts(small_graph, path):
    """bands(R + H, signal=(R, H)) is bands([R | H]) with its halves summed, in values and in gradients (SSR's
    band_input: sum), although the equal-energy borders of [R | H] differ from those of R + H."""
    g = torch.Generator().manual_seed(7)
    r = torch.randn(small_graph.shape[0], 6, generator=g, requires_grad=True)
    h = (3 * torch.sparse.mm(small_graph, torch.randn(small_graph.shape[0], 6, generator=g))).requires_grad_()
    weights = torch.randn(3, small_graph.shape[0], 6, generator=g)
    bands = make_graph_bands(path, small_graph, 3, order=20)
    rows = torch.tensor([4, 0, 77, 4])
    for subset in (None, rows):
        halves = bands(torch.cat([r, h], dim=1), subset)
        expected = halves[..., :6] + halves[..., 6:]
        (expected * (weights if subset is None else weights[:, subset])).sum().backward()
        grads = r.grad.clone(), h.grad.clone()
        r.grad = h.grad = None
        summed = bands(r + h, subset, signal=(r, h))
        torch.testing.assert_close(summed, expected, atol=1e-5, rtol=1e-5)
        (summed * (weights if subset is None else weights[:, subset])).sum().backward()
        torch.testing.assert_close((r.grad, h.grad), grads, atol=1e-5, rtol=1e-5)
        r.grad = h.grad = None
    if path != "chebyshev":  # the borders are [R | H]'s, not those R + H alone would get
        bands(r + h, signal=(r, h))
        of_parts = bands.borders.clone()
        bands(r + h)
        assert not torch.allclose(bands.borders, of_parts)


def test_chebyshev_filter_gradient_and_values(small_graph):
    adj = torch.sparse_csr_tensor(small_graph.crow_indices(), small_graph.col_indices(), small_graph.values().double(), small_graph.shape)
    x = torch.randn(small_graph.shape[0], 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 7, dtype=torch.float64)
    for coefficients in (c, c * (torch.rand(2, 7) < 0.5)):  # zero coefficients are skipped
        direct = torch.einsum("fk,knd->fnd", coefficients, recurrence(adj, x, 6))
        for rows in (None, torch.tensor([4, 0, 99, 4, 37])):  # a repeated row gets both rows' gradients
            expected = direct if rows is None else direct[:, rows]
            torch.testing.assert_close(ChebyshevFilter.apply(adj, x, coefficients, rows), expected)
            assert torch.autograd.gradcheck(lambda v: ChebyshevFilter.apply(adj, v, coefficients, rows), (x,),
                                            fast_mode=True)


def test_chebyshev_responses_hand_values():
    h = chebyshev_responses(torch.tensor([0.0, 1.0, 2.0]))
    # t = λ − 1 ∈ {−1, 0, 1}: low = 1 − t/2; mid = 0.8(2t² − 1) + 0.3(4t³ − 3t); high = 1 − low − mid
    expected = torch.tensor([[1.5, 1.0, 0.5], [0.5, -0.8, 1.1], [-1.0, 0.8, -0.6]], dtype=torch.float64)
    torch.testing.assert_close(h, expected)


def test_chebyshev_bands_act_on_eigenvectors_by_their_responses(small_graph):
    evals, evecs = torch.linalg.eigh(torch.eye(small_graph.shape[0], dtype=torch.float64) - small_graph.to_dense().double())
    bands = ChebyshevBands(small_graph)(evecs.float())
    torch.testing.assert_close(bands, (chebyshev_responses(evals)[:, None, :] * evecs).float(), atol=1e-4, rtol=0)


def test_chebyshev_needs_three_bands(small_graph):
    with pytest.raises(TrainingError, match="n_bands=4"):
        ChebyshevBands(small_graph, 4)


def test_moments_match_the_recurrence(small_graph):
    adj = torch.sparse_csr_tensor(small_graph.crow_indices(), small_graph.col_indices(), small_graph.values().double(), small_graph.shape)
    x = torch.randn(small_graph.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for order in (2, 3, 8, 11):
        direct = (recurrence(adj, x, order) * x).sum((1, 2))
        torch.testing.assert_close(chebyshev_moments(adj, x, order), direct)


def test_jackson_damped_steps_stay_in_unit_interval():
    g = jackson_damping(40)
    assert g[0].item() == pytest.approx(1.0) and (g[1:] < g[:-1]).all()
    s = torch.linspace(-1, 1, 501, dtype=torch.float64)
    polys = torch.cos(torch.arange(41, dtype=torch.float64) * torch.arccos(s)[:, None])  # T_k(s)
    for border in (-0.5, 0.0, 0.7):
        h = polys @ (step_coefficients(torch.tensor([border], dtype=torch.float64), 40)[0] * g)
        assert h.min() > -1e-9 and h.max() < 1 + 1e-9
        assert h[s < border - 0.25].min() > 0.99 and h[s > border + 0.25].max() < 0.01


def test_exact_bands_have_equal_energy_and_are_orthogonal(medium_graph):
    x = signals(medium_graph)["white"]
    bands = ExactBands(medium_graph, 3)(x)
    assert torch.allclose(energy_fractions(bands, x), torch.full((3,), 1 / 3), atol=0.01)
    gram = torch.einsum("mnd,knd->mk", bands, bands)
    assert gram.fill_diagonal_(0).abs().max() < 1e-3 * x.square().sum()


@pytest.mark.parametrize("signal", ["white", "smooth"])
def test_exact_bands_project_only_below_the_last_border_with_the_full_projections_values_and_gradients(
        medium_graph, signal):
    """Bands m < M from the eigenvectors below the last border, the top band X minus them: the same values and
    gradients as projecting X on all N eigenvectors, band m = B_m B_mᵀ X (with a `signal` and rows too)."""
    g = torch.Generator().manual_seed(8)
    x = signals(medium_graph)[signal]
    r, h = (x + torch.randn(x.shape, generator=g)).requires_grad_(), x.clone().requires_grad_()
    rows = torch.tensor([3, 0, 1500, 3, 2299])
    weights = torch.randn(3, len(rows), x.shape[1], generator=g)
    exact = ExactBands(medium_graph, 3)
    exact.chunk = 64
    (exact(r + h, rows, signal=(r, h)) * weights).sum().backward()
    grads = r.grad.clone(), h.grad.clone()
    r.grad = h.grad = None

    basis = exact.basis
    coefs = basis.T @ torch.cat([r, h], dim=1).detach()
    cuts = energy_borders(coefs.double().square().sum(1).cumsum(0), 3)
    assert cuts[-1] < medium_graph.shape[0] - exact.chunk  # the forward stopped before the last eigenvectors
    bounds = [0, *cuts.tolist(), medium_graph.shape[0]]
    reference = torch.stack([basis[rows, a:b] @ (basis[:, a:b].T @ (r + h)) for a, b in zip(bounds[:-1], bounds[1:])])
    (reference * weights).sum().backward()
    torch.testing.assert_close(exact(r + h, rows, signal=(r, h)), reference, atol=1e-4, rtol=1e-4)
    for grad, expected in zip(grads, (r.grad, h.grad)):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


def test_a_border_inside_the_bipartite_null_space_splits_it_along_the_solvers_basis(small_graph):
    """L has λ = 1 at least |N_u − N_i| times (20 of these 100 nodes). A white signal's middle border (4 bands) falls
    inside that eigenspace: it is recorded as λ = 1, and which of its directions fall below it depends only on the
    eigenvector basis the solver returned there (book/methods.md, "SSR")."""
    evals, _ = laplacian_eigh(small_graph)
    at_one = ((evals - 1).abs() < 1e-6).nonzero().flatten()
    assert len(at_one) >= 20 and (at_one.diff() == 1).all()
    x = signals(small_graph)["white"]
    bands = ExactBands(small_graph, 4)
    reference = bands(x)
    assert bands.borders[1] == 1.0 and bands.borders[0] < 1 < bands.borders[2]
    rotation, _ = torch.linalg.qr(torch.randn(len(at_one), len(at_one), generator=torch.Generator().manual_seed(3)))
    bands.basis[:, at_one] = bands.basis[:, at_one] @ rotation  # another orthonormal eigenbasis of the same L
    rotated = bands(x)
    torch.testing.assert_close(rotated[[0, 3]], reference[[0, 3]], atol=1e-5, rtol=0)  # the bands off λ = 1 keep
    torch.testing.assert_close(rotated.sum(0), x, atol=1e-5, rtol=0)
    assert (rotated[1] - reference[1]).norm() > 0.1 * reference[1].norm()  # the split at λ = 1 moves


@pytest.mark.parametrize("signal", ["white", "smooth"])
def test_scalable_matches_exact(medium_graph, signal):
    x = signals(medium_graph)[signal]
    exact = ExactBands(medium_graph, 3)
    reference = exact(x)
    errors = {}
    for order in (50, 300):
        scalable = ScalableBands(medium_graph, 3, order)
        bands = scalable(x)
        errors[order] = ((bands - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)).max()
    # order 300: borders within 0.01 of the exact ones, energy fractions within 0.03, bands within 20 % (Frobenius;
    # measured: white 0.002 / 0.004 / 0.08, smooth 0.001 / 0.016 / 0.14), and the error falls with the order
    torch.testing.assert_close(scalable.borders, exact.borders, atol=0.01, rtol=0)
    torch.testing.assert_close(energy_fractions(bands, x), energy_fractions(reference, x), atol=0.03, rtol=0)
    assert errors[300] < 0.2 and errors[300] < 0.8 * errors[50]


def test_estimated_cumulative_energy_matches_the_spectrum(medium_graph):
    evals, evecs = laplacian_eigh(medium_graph)
    lam = torch.tensor([0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.8], dtype=torch.float64)  # away from the mass at λ = 1
    for x in signals(medium_graph).values():
        energy = (evecs.T @ x).double().square().sum(1)
        exact = (energy.cumsum(0) / energy.sum())[torch.searchsorted(evals, lam, right=True) - 1]
        grid, estimate = ScalableBands(medium_graph, 3, 100).cumulative_energy(x)
        torch.testing.assert_close(estimate[torch.searchsorted(grid, lam)], exact, atol=0.005, rtol=0)  # measured ≤ 0.003


def test_scalable_bands_are_differentiable(small_graph):
    x = torch.randn(small_graph.shape[0], 4, generator=torch.Generator().manual_seed(4), requires_grad=True)
    weights = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(5))
    (ScalableBands(small_graph, 3, 20)(x) * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_exact_refuses_large_graphs():
    n = 20_001
    adj = torch.sparse_csr_tensor(torch.zeros(n + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), (n, n))
    with pytest.raises(TrainingError, match=r"20,001 x 20,001.*GiB"):
        ExactBands(adj, 3)
    with pytest.raises(TrainingError, match=r"GiB RAM"):
        check_dense_eigh(n, max_nodes=10**9, memory_fraction=1e-6)
    check_dense_eigh(2_000)  # small graphs pass


def test_unknown_path(small_graph):
    with pytest.raises(TrainingError, match="unknown bands path"):
        make_graph_bands("wavelet", small_graph, 3)

