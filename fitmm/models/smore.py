"""SMORE (Ong & Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional Network
for Multimodal Recommendation", WSDM 2025), following its released code, for any number of modalities.

Spectrum fusion. With x̃^m = W_m x^m + b_m (raw features x^m trainable, as in the code), F the
orthonormal real FFT along the 64 embedding dimensions and learnable complex filters K_m, K_f:

    c^m = F⁻¹(K_m ⊙ F x̃^m),   c^f = F⁻¹(K_f ⊙ Π_m F x̃^m)        (uni-modal denoising, fusion)
    z_i^m = q_i ⊙ σ(G_m c_i^m),   z_i^f = q_i ⊙ σ(G_f c_i^f)       (gated modal item embeddings)

Item-item views: S_m the sym-normalised cosine kNN graph of modality m (weighted by the
similarities; k by the slot the modality takes in SMORE's code: `image_knn_k` for the modality called
image, `text_knn_k` for every other one, e.g. TikTok's audio), S_f their element-wise max; item view v^m = S_m^{L_i} z^m,
user view R v^m (R the user-item block of Â); likewise v^f on S_f.
Behaviour view: LightGCN mean E = 1/(L+1) Σ_l Â^l [P; Q].
Modality-aware preference: a^m = softmax(Q_m(v^f)) ⊙ v^m (softmax over dimensions),
π^m = dropout(σ(U_m E)), π^f = dropout(σ(U_f E));

    side = mean(π^m ⊙ a^m over m, π^f ⊙ v^f),   e = E + side
    L = BPR(e) + λ_reg · ½(‖e_u‖² + ‖e_i+‖² + ‖e_i−‖²)/B + λ_cl · (InfoNCE_τ(side_i+, E_i+) + InfoNCE_τ(side_u, E_u))

B is the configured batch size (as in the code). With one modality Π_m F x̃^m = F x̃^m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fitmm.cache import cached, fingerprint
from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.graphs import knn_adjacency, scipy_to_torch_csr, spmm, transpose_csr, user_item_adjacency
from fitmm.models.base import Recommender, bpr_loss, propagate_mean, require_modalities


def weighted_knn_graph(data: Interactions, modality: str, k: int) -> torch.Tensor:
    """D^{-1/2} A D^{-1/2} (row degrees) of the kNN graph weighted by cosine similarity (MMRec's LATTICE utility), cached."""

    def build() -> torch.Tensor:
        binary = knn_adjacency(data.features[modality], k).tocoo()
        feats = F.normalize(torch.from_numpy(data.features[modality]), dim=1)
        rows, cols = torch.from_numpy(binary.row).long(), torch.from_numpy(binary.col).long()
        sims = (feats[rows] * feats[cols]).sum(1)
        degree = torch.zeros(data.n_items).index_add_(0, rows, sims)
        inv_sqrt = degree.pow(-0.5)
        values = inv_sqrt[rows] * sims * inv_sqrt[cols]
        n = data.n_items
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce().to_sparse_csr()

    return cached(f"wknn-{data.name}-{fingerprint(data)}-{modality}-k{k}", build)


KNN_SLOTS = ("image_knn_k", "text_knn_k")


def knn_slot(modality: str) -> str:
    """The config key of a modality's k: SMORE's image slot for the modality called image, its text slot for the
    others."""
    return "image_knn_k" if modality == "image" else "text_knn_k"


def knn_k(config: SMOREConfig, modality: str) -> int:
    """k of a modality's kNN graph (`knn_slot`)."""
    return getattr(config, knn_slot(modality))


def max_pool(graphs: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise max over the union of the graphs' edges (an edge absent from a graph does not count)."""
    coo = [g.to_sparse_coo().coalesce() for g in graphs]
    index, inverse = torch.unique(torch.cat([g.indices() for g in coo], dim=1), dim=1, return_inverse=True)
    values = torch.full((index.shape[1],), float("-inf")).scatter_reduce(
        0, inverse, torch.cat([g.values() for g in coo]), reduce="amax")
    return torch.sparse_coo_tensor(index, values, graphs[0].shape).coalesce().to_sparse_csr()


def gate(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


class _InBatchInfoNCE(torch.autograd.Function):
    """mean_i −log softmax_j(a_i·b_j)[i] for rows a, b (n, d), with the gradient written out from the kept
    probabilities P (one n × n buffer; no log-softmax, one-hot or copied logits): with Y = I,
    ∂/∂a = (P − Y) b / n = (P b − b) / n and ∂/∂b = (P − Y)ᵀ a / n = (Pᵀ a − a) / n."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = a @ b.T
        positive = p.diagonal().clone()
        top = p.amax(dim=1, keepdim=True)
        total = p.sub_(top).exp_().sum(dim=1, keepdim=True)
        ctx.save_for_backward(a, b, p.div_(total))
        return (top[:, 0] + total[:, 0].log() - positive).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, p = ctx.saved_tensors
        scale = grad / len(a)
        return (p @ b).sub_(b).mul_(scale), (p.T @ a).sub_(a).mul_(scale)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """−mean log softmax of the matching pair among all in-batch pairs (cosine similarities / τ; τ divides the
    n × d view, not the n × n logits)."""
    return _InBatchInfoNCE.apply(F.normalize(view1, dim=1) / temperature, F.normalize(view2, dim=1))


@dataclass(frozen=True)
class SMOREConfig(Config):
    n_ui_layers: int = option("layers L on the user-item graph", ge=0)
    n_item_layers: int = option("layers L_i on each item-item graph", ge=0)
    image_knn_k: int = option("neighbours per item in the kNN graph of the modality called image", ge=1)
    text_knn_k: int = option("neighbours per item in the kNN graph of every other modality (SMORE's text slot)", ge=1)
    cl_weight: float = option("weight λ_cl of the two InfoNCE terms", ge=0)
    temperature: float = option("InfoNCE temperature τ", gt=0)
    reg_weight: float = option("weight λ_reg of the L2 term on the batch embeddings", ge=0)
    dropout: float = option("dropout on the preference gates π", ge=0, le=1)


class SMORE(Recommender):
    config_class = SMOREConfig
    item_id_table = "item_emb"
    batch_distinct_ids = True
    version = 2  # 2: the released lr schedule (0.96 every 50 epochs); kNN k by SMORE's image/text slot

    @classmethod
    def check_data(cls, config: SMOREConfig, data: Interactions) -> None:
        require_modalities("SMORE", data)

    @classmethod
    def inert_keys(cls, config: SMOREConfig, data: Interactions) -> frozenset[str]:
        """The k of a slot no modality of `data` takes (`knn_slot`): the image slot on Baby's text alone."""
        return frozenset(KNN_SLOTS) - {knn_slot(m) for m in data.modalities}

    def __init__(self, data: Interactions, config: SMOREConfig):
        super().__init__(data, config)
        mods = data.modalities
        dim = config.embedding_dim
        n_freq = dim // 2 + 1
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, dim)))
        self.features = nn.ParameterDict({m: nn.Parameter(torch.from_numpy(data.features[m].copy())) for m in mods})
        self.proj = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], dim) for m in mods})
        # complex filters stored as (real, imaginary) pairs
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.randn(n_freq, 2)) for m in mods})
        self.fusion_filter = nn.Parameter(torch.randn(n_freq, 2))
        self.gates = nn.ModuleDict({m: gate(dim) for m in mods})
        self.fusion_gate = gate(dim)
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim, bias=False))
                                      for m in mods})
        self.prefers = nn.ModuleDict({m: gate(dim) for m in mods})
        self.fusion_prefer = gate(dim)
        self.dropout = nn.Dropout(config.dropout)
        self.n_ui_layers = config.n_ui_layers
        self.n_item_layers = config.n_item_layers
        self.reg_weight = config.reg_weight
        self.cl_weight = config.cl_weight
        self.temperature = config.temperature
        self.batch_size = config.batch_size

        adj = user_item_adjacency(data.train, data.n_users, data.n_items)
        r = adj[: data.n_users, data.n_users :]
        self.register_buffer("adj", scipy_to_torch_csr(adj), persistent=False)
        self.register_buffer("r", scipy_to_torch_csr(r), persistent=False)
        self.register_buffer("r_t", scipy_to_torch_csr(r.T), persistent=False)
        graphs = {m: weighted_knn_graph(data, m, knn_k(config, m)) for m in mods}
        graphs["fusion"] = max_pool(list(graphs.values()))
        for name, g in graphs.items():
            self.register_buffer(f"item_adj_{name}", g, persistent=False)
            self.register_buffer(f"item_adj_t_{name}", transpose_csr(g), persistent=False)

    def spectrum(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Filtered modal features c^m and the fused spectrum c^f, each n_items x d."""
        x = {m: self.proj[m](self.features[m]) for m in self.features}
        dim = self.item_emb.shape[1]
        freq = {m: torch.fft.rfft(v, dim=1, norm="ortho") for m, v in x.items()}
        conv = {m: torch.fft.irfft(f * torch.view_as_complex(self.filters[m]), n=dim, dim=1, norm="ortho")
                for m, f in freq.items()}
        # Π_m as a chain of products: Tensor.prod's backward reads a zero count on the host (a GPU wait) and
        # divides the product by each factor; the chain's backward multiplies the other factors, exactly
        fused = math.prod(freq.values()) * torch.view_as_complex(self.fusion_filter)
        return conv, torch.fft.irfft(fused, n=dim, dim=1, norm="ortho")

    def item_view(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """[R v; v] with v = S^{L_i} z on the item graph `name`."""
        adj, adj_t = getattr(self, f"item_adj_{name}"), getattr(self, f"item_adj_t_{name}")
        for _ in range(self.n_item_layers):
            z = spmm(adj, z, adj_t)
        return torch.cat([spmm(self.r, z, self.r_t), z])

    def forward(self, nodes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviour view E and side view, on the rows `nodes` of the N_u + N_i nodes (default all).

        Propagation needs every node; the preference module after it is row-wise, so a
        batch computes it for its own nodes only.
        """
        conv, fused = self.spectrum()
        (behaviour,) = propagate_mean(self.adj, self.n_ui_layers, torch.cat([self.user_emb, self.item_emb]))
        fusion = self.item_view("fusion", self.item_emb * self.fusion_gate(fused))
        views = {m: self.item_view(m, self.item_emb * self.gates[m](c)) for m, c in conv.items()}
        if nodes is not None:
            behaviour, fusion, views = behaviour[nodes], fusion[nodes], {m: v[nodes] for m, v in views.items()}
        parts = [self.dropout(self.prefers[m](behaviour)) * torch.softmax(self.queries[m](fusion), dim=-1) * v
                 for m, v in views.items()]
        parts.append(self.dropout(self.fusion_prefer(behaviour)) * fusion)
        return behaviour, torch.stack(parts).mean(0)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        behaviour, side = self.forward()
        out = behaviour + side
        return out[: self.n_users], out[self.n_users :]

    def loss_terms(self, batch):
        # each distinct node of the batch once: users first, then items (offset by n_users), as graph node ids
        users, items = batch.distinct_users, batch.distinct_items
        behaviour, side = self.forward(torch.cat([users.ids, items.ids + self.n_users]))
        out = behaviour + side
        users, (pos, neg) = users.index, (items.index + len(users.ids)).split(len(batch.pos_items))
        u, p, n = out[users], out[pos], out[neg]
        cl = info_nce(side[pos], behaviour[pos], self.temperature) + info_nce(side[users], behaviour[users], self.temperature)
        return {
            "bpr": bpr_loss((u * p).sum(1), (u * n).sum(1)),
            "reg": self.reg_weight * 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / self.batch_size,
            "cl": self.cl_weight * cl,
        }

    def diagnostics(self) -> dict:
        """Magnitude of each learned spectral filter per frequency bin (1 = pass-through)."""
        filters = {**self.filters, "fusion": self.fusion_filter}
        return {f"filter_gain_{name}": torch.view_as_complex(w.detach()).abs().cpu().tolist() for name, w in filters.items()}
