"""Vocabulary transfer: SALT (S. Lee et al., Findings of ACL 2025, arXiv 2505.10945; SIBLINGS.md 2) and baselines.

The LLM's vocabulary V_s is replaced by a small target-language PLM's V_t. Each new token's input embedding is made
from what the two models and some auxiliary vectors know:

    shared token (in both vocabularies)   the LLM's own row, E_s[shared[v]]
    other token v with an auxiliary vector
        neighbours K: sparsemax over cos(aux[v], aux[u]) for the shared tokens u; K = the u with non-zero weight
        salt     E_t[v] · X_v,  X_v = pinv(E_t[K]) · E_s[K]   (per-token least squares, h_t × h_s)
        focus    Σ_k w_k E_s[K_k]   (FOCUS: the sparsemax weights average the neighbours' LLM rows)
    token with no auxiliary vector          a draw from a normal with E_s's per-dimension mean and std (the paper's
                                            rule for SALT; used for focus too)
    baselines for every non-shared token    mean: the mean row of E_s; multivariate: a draw from a normal fitted
                                            to E_s (mean and full covariance)

Shared tokens are copied by every method (assumed for mean and multivariate, whose papers initialise the new
vocabulary as a whole). `ridge` adds λ·I to the least squares (off by default: the paper mentions no
regularisation); with nearly collinear neighbours the plain pseudo-inverse can give large coefficients.
Computation is in float64; the result has E_s's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch

from clo_lib.common.errors import InputError

# transfer.method's ways to initialise the new embeddings (none: keep the vocabulary); distinct from the training
# methods of train.method (clo_lib.method.pairs.METHOD_STAGES)
EmbeddingInit = Literal["salt", "focus", "mean", "multivariate"]
EMBEDDING_INITS = ("salt", "focus", "mean", "multivariate")


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dimension (Martins & Astudillo 2016), as FOCUS uses it, from the entmax package."""
    from entmax import sparsemax as _sparsemax

    return _sparsemax(scores, dim=-1)


def neighbour_weights(aux: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the cosine similarities of `aux` rows (n × d) to `candidates` rows (c × d): n × c weights,
    most of them zero; a token's neighbours are the candidates it gives a non-zero weight."""
    a = torch.nn.functional.normalize(aux, dim=-1)
    c = torch.nn.functional.normalize(candidates, dim=-1)
    return sparsemax(a @ c.T)


def _normal_rows(source: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Rows drawn from a normal with the per-dimension mean and standard deviation of `source`."""
    mean, std = source.mean(0), source.std(0)
    return mean + std * torch.randn(count, source.shape[1], dtype=source.dtype, generator=generator)


def init_embeddings(method: EmbeddingInit, source_embeddings: torch.Tensor, donor_embeddings: torch.Tensor | None,
                    aux_embeddings: torch.Tensor | None, shared: dict[int, int], ridge: float = 0.0,
                    generator: torch.Generator | None = None, size: int | None = None) -> torch.Tensor:
    """The new vocabulary's input embeddings (V_t × h_s) by `method` (see the module docstring).

    source_embeddings: E_s (V_s × h_s), the LLM's. donor_embeddings: E_t (V_t × h_t), the PLM's, by new id (salt).
    aux_embeddings: V_t × d auxiliary vectors by new id, a row of NaN where a token has none (salt, focus).
    shared: new id -> LLM id for the tokens both vocabularies hold. size: the number of new tokens V_t; by default
    the rows of donor_embeddings, else of aux_embeddings (mean and multivariate need neither).
    """
    if method not in EMBEDDING_INITS:
        raise InputError(f"vocabulary init method = {method!r}; expected one of {', '.join(EMBEDDING_INITS)}")
    sizes = [size] if size is not None else [t.shape[0] for t in (donor_embeddings, aux_embeddings) if t is not None]
    if not sizes:
        raise InputError("init_embeddings needs size, donor_embeddings or aux_embeddings to know the new "
                         "vocabulary's size")
    if method == "salt" and (donor_embeddings is None or aux_embeddings is None):
        raise InputError("salt needs both the donor PLM's embeddings and auxiliary vectors")
    if method == "focus" and aux_embeddings is None:
        raise InputError("focus needs auxiliary vectors")
    source = source_embeddings.detach().to(torch.float64)
    size, width = sizes[0], source.shape[1]
    out = torch.empty(size, width, dtype=torch.float64)
    done = torch.zeros(size, dtype=torch.bool)
    for new_id, llm_id in shared.items():
        out[new_id] = source[llm_id]
        done[new_id] = True
    todo = (~done).nonzero().flatten()
    if method == "mean":
        out[todo] = source.mean(0)
    elif method == "multivariate":
        distribution = torch.distributions.MultivariateNormal(
            source.mean(0), covariance_matrix=torch.cov(source.T) + 1e-8 * torch.eye(width, dtype=torch.float64))
        if generator is not None:  # MultivariateNormal.sample takes no generator: draw the normal ourselves
            z = torch.randn(len(todo), width, dtype=torch.float64, generator=generator)
            out[todo] = distribution.loc + z @ distribution.scale_tril.T
        else:
            out[todo] = distribution.sample((len(todo),))
    else:
        out[todo] = _transfer(method, source, donor_embeddings, aux_embeddings, shared, todo, ridge, generator)
    return out.to(source_embeddings.dtype)


def neighbours(aux: torch.Tensor, shared: dict[int, int], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates and each token's sparsemax weights over them: anchors, the new ids of the shared tokens that
    have an auxiliary vector; weights, len(tokens) × len(anchors), non-zero for a token's neighbours K."""
    aux = aux.detach().to(torch.float64)
    has_aux = ~torch.isnan(aux).any(dim=1)
    anchors = torch.tensor([new for new in sorted(shared) if has_aux[new]], dtype=torch.long)
    if len(anchors) == 0:
        raise InputError("no shared token has an auxiliary vector, so no token has neighbours to start from")
    if len(tokens) == 0:
        return anchors, aux.new_zeros(0, len(anchors))
    return anchors, neighbour_weights(aux[tokens], aux[anchors])


def _transfer(method: str, source: torch.Tensor, donor: torch.Tensor | None, aux: torch.Tensor,
              shared: dict[int, int], todo: torch.Tensor, ridge: float,
              generator: torch.Generator | None) -> torch.Tensor:
    aux = aux.detach().to(torch.float64)
    has_aux = ~torch.isnan(aux).any(dim=1)
    rows = torch.empty(len(todo), source.shape[1], dtype=torch.float64)
    with_aux = has_aux[todo]
    missing = (~with_aux).nonzero().flatten()
    rows[missing] = _normal_rows(source, len(missing), generator)
    chosen = with_aux.nonzero().flatten()
    anchors, weights = neighbours(aux, shared, todo[chosen])
    if len(chosen) == 0:
        return rows
    anchor_rows = source[torch.tensor([shared[int(new)] for new in anchors])]
    if method == "focus":
        rows[chosen] = weights @ anchor_rows
        return rows
    donor = donor.detach().to(torch.float64)
    for row, token, w in zip(chosen.tolist(), todo[chosen].tolist(), weights):
        k = w.nonzero().flatten()
        rows[row] = donor[token] @ salt_map(donor[anchors[k]], anchor_rows[k], ridge)
    return rows


def salt_diagnostics(donor_embeddings: torch.Tensor, aux_embeddings: torch.Tensor, shared: dict[int, int],
                     tokens: torch.Tensor, top: int = 10) -> dict[str, float | int | None]:
    """How well posed SALT's per-token least squares are for `tokens` (new ids to be made): the distribution of the
    neighbour count k, the share of tokens with k at least the donor's width h_t (the fit is then square or
    underdetermined and its coefficients can grow without bound), the median condition number of the neighbours'
    donor rows E_t[K], and how flat the similarities are (the median top and `top`-th cosine of a token to the
    anchors: when they are close, sparsemax keeps many neighbours). With 32-dimensional fastText trained on 208
    lines the top cosines run 0.999 to 0.978 and k reaches the donor's width: SALT's claim cannot be tested there."""
    aux = aux_embeddings.detach().to(torch.float64)
    has_aux = ~torch.isnan(aux).any(dim=1)
    tokens = torch.tensor([t for t in tokens.tolist() if has_aux[t]], dtype=torch.long)
    if len(tokens) == 0:
        return {"tokens": 0}
    anchors, weights = neighbours(aux, shared, tokens)
    ks = (weights > 0).sum(dim=1)
    width = donor_embeddings.shape[1]
    donor = donor_embeddings.detach().to(torch.float64)
    conditions = torch.stack([torch.linalg.cond(donor[anchors[(w > 0).nonzero().flatten()]]) for w in weights])
    cosines = torch.nn.functional.normalize(aux[tokens], dim=-1) @ torch.nn.functional.normalize(aux[anchors],
                                                                                                  dim=-1).T
    ranked = cosines.sort(dim=1, descending=True).values
    kth = ranked[:, min(top, ranked.shape[1]) - 1]
    quantile = lambda values, q: float(torch.quantile(values.to(torch.float64), q))  # noqa: E731
    return {"tokens": len(tokens), "donor_width": width, "k_min": int(ks.min()), "k_median": quantile(ks, 0.5),
            "k_p90": quantile(ks, 0.9), "k_max": int(ks.max()),
            "share_k_at_least_width": round(float((ks >= width).double().mean()), 4),
            "condition_median": quantile(conditions, 0.5), "top_cosine_median": quantile(ranked[:, 0], 0.5),
            f"cosine_{min(top, ranked.shape[1])}th_median": quantile(kth, 0.5)}


def salt_warning(diagnostics: dict) -> str | None:
    """A line to print when most tokens' neighbour count approaches the donor's width (assumed: the median k at
    0.8 of it), where SALT's fits are ill-posed and its made rows can explode."""
    if diagnostics.get("tokens") and diagnostics["k_median"] >= 0.8 * diagnostics["donor_width"]:
        d = diagnostics
        return (f"SALT: the median token has {d['k_median']:.0f} neighbours for a donor {d['donor_width']} wide "
                f"({d['share_k_at_least_width']:.0%} at or past it; median condition number "
                f"{d['condition_median']:.3g}): the auxiliary vectors are too flat (top cosines around "
                f"{d['top_cosine_median']:.3f}) for its least squares to be well posed; better vectors "
                "(published fastText, more text) or transfer.ridge")
    return None


def salt_map(donor_rows: torch.Tensor, source_rows: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """X (h_t × h_s) with donor_rows · X ≈ source_rows in least squares: pinv(E_t[K]) · E_s[K], or with `ridge` > 0
    (E_t[K]ᵀ E_t[K] + λI)⁻¹ E_t[K]ᵀ E_s[K]."""
    if ridge <= 0:
        return torch.linalg.pinv(donor_rows) @ source_rows
    gram = donor_rows.T @ donor_rows + ridge * torch.eye(donor_rows.shape[1], dtype=donor_rows.dtype)
    return torch.linalg.solve(gram, donor_rows.T @ source_rows)


def salt_embeddings(source_embeddings: torch.Tensor, donor_embeddings: torch.Tensor, aux_embeddings: torch.Tensor,
                    shared: dict[int, int], ridge: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """SALT's initialisation of the new vocabulary's input embeddings (V_t × h_s); DESIGN.md's public name for
    `init_embeddings("salt", ...)`."""
    return init_embeddings("salt", source_embeddings, donor_embeddings, aux_embeddings, shared, ridge, generator)
