"""The rules of attention (part of ltray.core.oprules.Labeller): matmul, F.scaled_dot_product_attention and
F.multi_head_attention_forward (nn.MultiheadAttention).

Scores q k^T sum over the features, so q and k share their feature groups and k and v their positions; the heads
of nn.MultiheadAttention move as blocks of head_dim, alike in the q, k and v projections and the output
projection's input (the view of explicit q, k, v into (heads, head_dim) is oprules' reshape rule). Positions
stay where the attention mixes them.
"""
from __future__ import annotations

import torch

from .labels import Labels, NoRule, arg


class AttentionRules(Labels):
    """Rules for products and attention; each returns the output's labels or raises NoRule."""

    def matmul(self, args, kwargs, out):   # (..., n, k) @ (..., k, m): k summed over, batch axes broadcast
        a, b = args[0], args[1]
        if a.ndim < 2 or b.ndim < 2:
            raise NoRule("multiplies by a vector")
        A, B = self.of(a), self.of(b)
        self.unify(A[-1], B[-2])
        return self.broadcast([(A[:-2], a.shape[:-2]), (B[:-2], b.shape[:-2])], out.shape[:-2]) + [A[-2], B[-1]]

    def attention(self, args, kwargs, out):
        """F.scaled_dot_product_attention(q, k, v, attn_mask, ...): softmax(q k^T + mask) v. q and k alike along
        features, k and v alike along positions, the mask like the scores; batch axes (heads) broadcast."""
        (q, k, v), mask = [arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value"))], \
            arg(args, kwargs, 3, "attn_mask")
        if any(s not in (1, n) for t in (k, v) for s, n in zip(t.shape[:-2], q.shape[:-2])):
            raise NoRule("shares keys between heads (grouped-query attention)")
        Q, K, V = self.of(q), self.of(k), self.of(v)
        self.unify(Q[-1], K[-1])
        self.unify(K[-2], V[-2])
        batch = self.broadcast([(Q[:-2], q.shape[:-2]), (K[:-2], k.shape[:-2]), (V[:-2], v.shape[:-2])],
                               out.shape[:-2])
        if arg(args, kwargs, 5, "is_causal", False):   # the mask follows the positions' order
            self.freeze([Q[-2], K[-2]], "masks by position")
        if isinstance(mask, torch.Tensor):
            scores = (*out.shape[:-1], k.shape[-2])
            self.broadcast([(batch + [Q[-2], K[-2]], scores), (self.of(mask), mask.shape)], scores)
        return batch + [Q[-2], V[-1]]

    def multi_head_attention(self, args, kwargs, outs):
        """F.multi_head_attention_forward (nn.MultiheadAttention): the heads move as blocks of head_dim, alike in
        the q, k and v projections and the output projection's input; the projections' inputs follow q, k and
        v's features, the output is a new group. Positions stay."""
        names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
                 "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
                 "k_proj_weight", "v_proj_weight", "static_k", "static_v")
        a = {n: arg(args, kwargs, i, n) for i, n in enumerate(names)}
        if a["static_k"] is not None or a["static_v"] is not None:
            raise NoRule("takes precomputed keys or values")
        Q, K, V = (self.of(a[n]) for n in ("query", "key", "value"))
        self.freeze(Q[:-1] + K[:-1] + V[:-1], "attends across positions")
        h, E = a["num_heads"], a["query"].shape[-1]
        H = [(self.g.new(h, f"P_{self.scope[-1]}.heads"), E // h)]
        mask = a["attn_mask"]
        if isinstance(mask, torch.Tensor) and mask.ndim == 3:   # one mask per (batch, head)
            self.freeze([H], "masks each head on its own")
        if a["use_separate_proj_weight"]:
            for w, X in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), (Q, K, V)):
                self.bind(a[w], [H, X[-1]])
        else:   # one weight projects q, k and v: their features move alike
            for X in (Q, K, V):
                self.bind(a["in_proj_weight"], [H * 3, X[-1]])
        self.bind(a["in_proj_bias"], [H * 3])
        for t in (a["bias_k"], a["bias_v"]):   # (1, 1, E): a key and value appended to each sequence
            if t is not None:
                self.bind(t, [self.fixed(1), self.fixed(1), H])
        w = a["out_proj_weight"]
        y = [(self.g.new(w.shape[0], self.name_for(w)), 1)]
        self.bind(w, [y, H])
        self.bind(a["out_proj_bias"], [y])
        labels = [Q[:-1] + [y]]
        if len(outs) > 1:   # the attention weights: (N, L, S), or (N, heads, L, S) when not averaged over heads
            labels.append([self.fixed(n) for n in outs[1].shape])
            if outs[1].ndim == a["query"].ndim + 1:
                labels[-1][-3] = [(H[0][0], 1)]
        return labels
