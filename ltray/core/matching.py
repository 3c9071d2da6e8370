"""One matching solver for Oracle, GMT and FGMT (paper Eq. 2, 3, 5, 6).

`Matcher` maximises  sum_k <pi source_k, target_k>  over the permutation group by Git Re-Basin coordinate
descent: groups are visited in an order drawn from a seed, each update is one linear assignment problem, and
descent stops when a full sweep no longer improves (or at max_iter). Since ||pi s - t||^2 = ||s||^2 + ||t||^2
- 2 <pi s, t>, this is also min sum_k ||pi source_k - target_k||^2.

Pairs arrive incrementally (`add_pair`). A tensor with one permuted axis contributes a fixed n x n term to its
group's score matrix, so those terms are summed once into `static` (for a one-hidden-layer MLP that is the
whole problem, solved exactly by a single assignment). A tensor with two permuted axes (a hidden-to-hidden
weight) contributes a term that depends on the neighbouring group's current permutation; those tensors are
kept and recombined at each coordinate step. A piece of a segmented axis (a flattened or concatenated feature
axis, see ltray.core.symmetry) counts like an axis: its n blocks of `block` entries are its group's n rows.
"""
from __future__ import annotations

import torch

from ..lap import Assignment, solve_assignment
from .functional import LinearFactors
from .symmetry import Permutation, PermutationSpec, Piece, identity_permutation, permute_axes_except, pieces

Pair = dict[str, torch.Tensor]


def _rows(x: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The piece's entries of its axis brought to the front, one row per block, the rest flattened: (n, -1)."""
    axis, _, start, n, block = piece
    if start or n * block != x.shape[axis]:
        x = x.narrow(axis, start, n * block)
    return x.movedim(axis, 0).reshape(n, -1)


def _score_factors(t, s, piece: Piece) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), float32, with <t_i, s_j> over the piece's rows = (L @ R.T)[i, j].  Factored Linear gradients
    go through a B x B kernel when their batch is smaller than the layer's other dimension:
    rows (axis 0): L = d_t.T (x_t x_s.T), R = d_s.T;  columns (axis 1): L = x_t.T (d_t d_s.T), R = x_s.T."""
    axis, _, start, n, block = piece
    if (isinstance(t, LinearFactors) and isinstance(s, LinearFactors) and (start, block) == (0, 1)
            and n == (t.d if axis == 0 else t.x).shape[1]):   # the piece is a whole axis of the weight
        other = t.x.shape[1] if axis == 0 else t.d.shape[1]
        if s.x.shape[0] < other:
            if axis == 0:
                return (t.d.T @ (t.x @ s.x.T)).float(), s.d.T.float()
            return (t.x.T @ (t.d @ s.d.T)).float(), s.x.T.float()
    t = t.dense() if isinstance(t, LinearFactors) else t
    s = s.dense() if isinstance(s, LinearFactors) else s
    return _rows(t, piece).float(), _rows(s, piece).float()


class Matcher:
    def __init__(self, spec: PermutationSpec, solver: str = "auto", dtype: torch.dtype = torch.float32,
                 warm: dict[str, Assignment] | None = None):
        """`dtype` of the accumulated scores: float32 like the gradients they are products of (one rounding per
        pair added); float64 doubles the memory traffic of every product and solve, and FGMT's transferred
        accuracy on MNIST is the same within seed noise either way (README, Performance).
        `warm`: a dict of each group's last `Assignment`, updated in place by `solve`; share one between
        matchers whose problems follow each other (GMT's per-step matchers) so solvers can warm-start."""
        self.spec, self.solver, self.dtype = spec, solver, dtype
        self.static: dict[str, torch.Tensor] = {}                      # group -> (n, n) accumulated score
        self.coupled: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (key, target, source) multi-axis
        self.num_pairs = 0
        self._warm: dict[str, Assignment] = {} if warm is None else warm

    def add_pair(self, target: Pair, source: Pair, weight: float = 1.0) -> None:
        """Add weight * <pi source, target> to the objective; keys absent from either dict are ignored.
        Values are tensors or `LinearFactors` (factored Linear weight gradients).  A group's terms from all
        tensors are one low-rank product L @ R.T (L, R concatenated over tensors), accumulated in place."""
        factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for key, axes in self.spec.axes.items():
            if key not in target or key not in source:
                continue
            found = pieces(axes, self.spec.sizes)
            t, s = target[key], source[key]
            if len(found) == 1:
                factors.setdefault(found[0][1], []).append(_score_factors(t, s, found[0]))
            elif len(found) > 1:
                t = t.dense() if isinstance(t, LinearFactors) else t
                s = s.dense() if isinstance(s, LinearFactors) else s
                self.coupled.append((key, t.detach() * weight, s.detach()))
        for g, pairs in factors.items():
            L = torch.cat([l for l, _ in pairs], dim=1).to(self.dtype)
            R = torch.cat([r for _, r in pairs], dim=1).to(self.dtype)
            if g not in self.static:
                self.static[g] = L.new_zeros(L.shape[0], R.shape[0])
            self.static[g].addmm_(L, R.T, alpha=weight)
        self.num_pairs += 1

    def score_matrix(self, group: str, perm: Permutation) -> torch.Tensor:
        """The group's n x n score given the other groups' current permutations: score[i, j] = <t_i, s_j>.
        Read-only: without coupled tensors it is the accumulator itself."""
        n = self.spec.sizes[group]
        device = self.static[group].device if group in self.static else (
            self.coupled[0][1].device if self.coupled else torch.device("cpu"))
        coupled = [(key, t, s) for key, t, s in self.coupled if group in self._groups_of(key)]
        if group in self.static and not coupled:
            return self.static[group]   # not copied: solvers only read it
        A = self.static[group].clone() if group in self.static else torch.zeros(n, n, dtype=self.dtype, device=device)
        for key, t, s in coupled:
            for piece in pieces(self.spec.axes[key], self.spec.sizes):
                if piece[1] == group:
                    s_perm = permute_axes_except(self.spec, perm, key, s, piece[0])
                    A += (_rows(t, piece).float() @ _rows(s_perm, piece).float().T).to(self.dtype)
        return A

    def _groups_of(self, key: str) -> set[str]:
        return {piece[1] for piece in pieces(self.spec.axes[key], self.spec.sizes)}

    def objective(self, perm: Permutation) -> float:
        """sum_k <pi source_k, target_k>, up to a constant from tensors no group acts on."""
        total = sum(float(A[torch.arange(len(p), device=A.device), p.to(A.device)].double().sum())
                    for g, A in self.static.items() for p in [perm[g]])
        for key, t, s in self.coupled:
            s_perm = permute_axes_except(self.spec, perm, key, s, skip_axis=-1)
            total += float((t.double() * s_perm.double()).sum())
        return total

    def solve(self, init: Permutation | None = None, seed: int = 0, max_iter: int = 100) -> Permutation:
        """Coordinate descent from `init` (default identity) and, where groups are coupled, from `static_start()`;
        returns the end point with the larger objective (a new permutation dict). The second start costs about
        one more descent; it is what recovers a residual stream coupled to many layers (see static_start)."""
        perm = self._descend({g: p.clone() for g, p in (init or identity_permutation(self.spec)).items()}, seed,
                             max_iter)
        if not self.coupled:   # the groups are independent: one sweep was the exact optimum
            return perm
        other = self._descend(self.static_start(), seed, max_iter)
        return other if self.objective(other) > self.objective(perm) else perm

    def static_start(self) -> Permutation:
        """Each group's optimum for its single-axis tensors alone (`static`), then each group without such
        evidence solved given those. Descent from the identity can stall where a group shared by many layers (a
        residual stream) is scored mostly through tensors that also carry other groups: solved against the
        identity, those groups come out wrong, and their wrong terms then outweigh the stream's own evidence
        (a planted permutation through 8 pre-norm blocks stalls at 63 % of its objective). The stream's static
        score does not depend on the other groups; for a planted permutation its optimum is the planted one."""
        perm = identity_permutation(self.spec)
        informed = {g for g, A in self.static.items() if bool(A.abs().max() > 0)}
        for g in sorted(informed):
            perm[g] = solve_assignment(self.static[g], self.solver).perm.cpu()
        for g in sorted(set(self.spec.groups) - informed):
            perm[g] = solve_assignment(self.score_matrix(g, perm), self.solver).perm.cpu()
        return perm

    def _descend(self, perm: Permutation, seed: int, max_iter: int) -> Permutation:
        """Git Re-Basin coordinate descent: groups in a seeded order, each an assignment problem given the others,
        until a sweep no longer improves (updates `perm` in place and returns it)."""
        groups = sorted(self.spec.groups)
        # Without coupled tensors the groups are independent: one sweep is the exact optimum.
        sweeps = max_iter if self.coupled else 1
        gen = torch.Generator().manual_seed(seed)
        for _ in range(sweeps):
            improved = False
            for i in torch.randperm(len(groups), generator=gen).tolist():
                g = groups[i]
                A = self.score_matrix(g, perm)
                result = solve_assignment(A, self.solver, self._warm.get(g))
                self._warm[g] = result
                rows = torch.arange(A.shape[0], device=A.device)
                old = float(A[rows, perm[g].to(A.device)].double().sum())
                new = float(A[rows, result.perm.to(A.device)].double().sum())
                if new > old + 1e-12 * max(1.0, abs(old)):
                    perm[g] = result.perm.cpu()
                    improved = True
            if not improved:
                break
        return perm


def weight_matching(spec: PermutationSpec, target: Pair, source: Pair, seed: int = 0,
                    solver: str = "auto", max_iter: int = 100) -> Permutation:
    """The pi that makes apply_permutation(spec, pi, source) as close as it can get to `target` (Eq. 2)."""
    matcher = Matcher(spec, solver)
    matcher.add_pair(target, source)
    return matcher.solve(seed=seed, max_iter=max_iter)
