"""Split search: pure functions from an affinity matrix to a task grouping (numpy only).

``Z[i, j]`` is the affinity of source task i onto target task j.

MAS objective (to maximise): the mean over tasks of a task's score, where a task
in a group of two or more scores the mean of Z[p, t] over the other members p,
and a task alone scores the mean of all its affinities to and from every other
task. The objective is a sum over groups, so the optimum over partitions into at
most (or exactly) k groups is found exactly by a dynamic programme over subsets
in O(k·3^n / 2) time, vectorised by popcount (exact up to 16 tasks in about a second). Beyond
``EXACT_LIMIT`` tasks :func:`heuristic_partition` runs restarted local search.

TAG's selection (Fifty et al., 2021) picks k possibly overlapping groups; every
task is served by its best group; a task only in singletons scores −∞.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

EXACT_LIMIT = 16
NEG = -np.inf


@dataclass(frozen=True)
class Grouping:
    groups: list[list[int]]
    score: float
    exact: bool


def fill_missing(z: np.ndarray) -> np.ndarray:
    """The rule for pairs that no client measured (partial labels: no client held both tasks' labels),
    before any split search: a missing Z(i→j) takes the smallest off-diagonal value that was measured,
    so grouping two tasks is never justified by a pair nobody could observe (and 0 if nothing was
    measured). A missing diagonal entry is 0 (the objectives ignore the diagonal)."""
    z = np.array(z, dtype=np.float64)
    miss = np.isnan(z)
    if not miss.any():
        return z
    off = ~np.eye(len(z), dtype=bool)
    seen = z[off & ~miss]
    z[miss & off] = float(seen.min()) if seen.size else 0.0
    z[miss & ~off] = 0.0
    return z


def validate_affinity(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != z.shape[1] or z.shape[0] == 0:
        raise ValueError(f"affinity must be a square n×n matrix, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("affinity contains NaN or infinite values")
    return z


def task_scores(z: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Each task's score under ``groups`` (MAS objective; tasks not in any group get NaN)."""
    n = len(z)
    off = z - np.diag(np.diag(z))
    alone = (off.sum(0) + off.sum(1)) / (2 * (n - 1)) if n > 1 else np.zeros(n)
    s = np.full(n, np.nan)
    for g in groups:
        if len(g) == 1:
            s[g[0]] = alone[g[0]]
        else:
            idx = np.asarray(g)
            sub = off[np.ix_(idx, idx)]
            s[idx] = sub.sum(0) / (len(g) - 1)
    return s


def mas_objective(z: np.ndarray, groups: list[list[int]]) -> float:
    return float(np.mean(task_scores(validate_affinity(z), groups)))


def _bits(n: int) -> np.ndarray:
    return ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.int8)


def group_values(z: np.ndarray) -> np.ndarray:
    """val[G] = Σ_{t∈G} score_t(G) for every non-empty subset G (bitmask index); val[0] = 0."""
    n = len(z)
    off = z - np.diag(np.diag(z))
    bits = _bits(n).astype(np.float64)
    pair = np.zeros(1 << n)
    sym = off + off.T
    for i in range(n):
        lo = 1 << i
        pair[lo:2 * lo] = pair[:lo] + bits[:lo, :i] @ sym[i, :i] if i else 0.0
    size = bits.sum(1)
    val = np.where(size >= 2, pair / np.maximum(size - 1, 1), 0.0)
    alone = (off.sum(0) + off.sum(1)) / (2 * (n - 1)) if n > 1 else np.zeros(n)
    val[1 << np.arange(n)] = alone
    return val


def _layer(val: np.ndarray, prev: np.ndarray, n: int, masks_only: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """new[M] = max over G ⊆ M with G ∋ lowest bit of M of val[G] + prev[M \\ G], and the argmax G."""
    full = 1 << n
    new = np.full(full, NEG)
    arg = np.zeros(full, np.int64)
    pop = _bits(n).sum(1)
    masks_all = np.arange(full) if masks_only is None else masks_only
    for p in range(1, n + 1):
        masks = masks_all[pop[masks_all] == p]
        if len(masks) == 0:
            continue
        pos = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
        where = np.nonzero(pos)[1].reshape(len(masks), p)  # set bit positions, ascending
        low = 1 << where[:, 0]
        rest = (1 << where[:, 1:]).astype(np.int64)  # (C, p-1)
        sel = _bits(p - 1).astype(np.int64) if p > 1 else np.zeros((1, 0), np.int64)  # (2^(p-1), p-1)
        g = sel @ rest.T + low[None, :]  # (2^(p-1), C)
        cand = val[g] + prev[masks[None, :] - g]
        best = cand.argmax(0)
        new[masks] = cand[best, np.arange(len(masks))]
        arg[masks] = g[best, np.arange(len(masks))]
    return new, arg


def exact_partition(z: np.ndarray, k: int, exactly: bool = False) -> Grouping:
    """The optimal partition of the tasks into at most ``k`` groups (exactly ``k`` if ``exactly``)."""
    z = validate_affinity(z)
    g = partition_by_values(group_values(z), len(z), k, exactly)
    return Grouping(g.groups, g.score / len(z), True)


def partition_by_values(val: np.ndarray, n: int, k: int, exactly: bool = False) -> Grouping:
    """Maximise Σ_groups val[G] over partitions of n items into ≤ k (or exactly k) groups.

    ``val`` is indexed by subset bitmask. The returned score is the sum (not the mean).
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of tasks ({n}), got {k}")
    if n > EXACT_LIMIT:
        raise ValueError(f"exact search supports at most {EXACT_LIMIT} tasks, got {n}; use the heuristic")
    full = (1 << n) - 1
    prev = np.full(1 << n, NEG)
    prev[0] = 0.0
    layers, args = [prev], []
    for layer in range(1, k + 1):
        only = np.array([full]) if layer == k else None
        new, arg = _layer(val, layers[-1], n, only)
        if not exactly:
            keep = layers[-1] >= new
            new = np.where(keep, layers[-1], new)
            arg = np.where(keep, -1, arg)  # -1: fewer groups suffice
        layers.append(new)
        args.append(arg)
    groups: list[list[int]] = []
    mask, layer = full, k
    while mask:
        g = int(args[layer - 1][mask])
        if g == -1:
            layer -= 1
            continue
        groups.append([i for i in range(n) if g >> i & 1])
        mask ^= g
        layer -= 1
    return Grouping(groups, float(layers[k][full]), True)


def heuristic_partition(z: np.ndarray, k: int, restarts: int = 20, seed: int = 0,
                        exactly: bool = False) -> Grouping:
    """Restarted best-improvement local search (move one task / swap two) over labelings."""
    z = validate_affinity(z)
    n = len(z)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of tasks ({n}), got {k}")
    rng = np.random.default_rng(seed)
    best_lab, best_val = None, NEG
    for _ in range(restarts):
        lab = rng.integers(0, k, n) if not exactly else rng.permutation(np.arange(n) % k)
        cur = _labels_value(z, lab, k)
        improved = True
        while improved:
            improved = False
            for cand in _neighbours(lab, k, rng, exactly):
                v = _labels_value(z, cand, k)
                if v > cur + 1e-12:
                    lab, cur, improved = cand, v, True
                    break
        if cur > best_val:
            best_lab, best_val = lab, cur
    groups = [list(map(int, np.flatnonzero(best_lab == g))) for g in range(k) if (best_lab == g).any()]
    return Grouping(groups, float(best_val), False)


def _neighbours(lab: np.ndarray, k: int, rng: np.random.Generator, exactly: bool):
    n = len(lab)
    moves = [(i, g) for i in range(n) for g in range(k) if g != lab[i]]
    swaps = [(i, j) for i in range(n) for j in range(i + 1, n) if lab[i] != lab[j]]
    order = rng.permutation(len(moves) + len(swaps))
    counts = np.bincount(lab, minlength=k)
    for o in order:
        new = lab.copy()
        if o < len(moves):
            i, g = moves[o]
            if exactly and counts[lab[i]] == 1:
                continue
            new[i] = g
        else:
            i, j = swaps[o - len(moves)]
            new[i], new[j] = lab[j], lab[i]
        yield new


def _labels_value(z: np.ndarray, lab: np.ndarray, k: int) -> float:
    return float(np.mean(task_scores(z, [list(np.flatnonzero(lab == g)) for g in range(k) if (lab == g).any()])))


def best_partition(z: np.ndarray, k: int, exactly: bool = False, seed: int = 0) -> Grouping:
    """Exact when the task count allows it, otherwise the heuristic."""
    if len(z) <= EXACT_LIMIT:
        return exact_partition(z, k, exactly)
    return heuristic_partition(z, k, seed=seed, exactly=exactly)


def brute_force_partition(z: np.ndarray, k: int, exactly: bool = False) -> Grouping:
    """Exhaustive enumeration of set partitions (the reference's approach); for tests and benchmarks."""
    z = validate_affinity(z)
    n = len(z)
    best, best_val = None, NEG
    for labels in _restricted_growth(n, k):
        if exactly and max(labels) + 1 != k:
            continue
        groups = [[i for i in range(n) if labels[i] == g] for g in range(max(labels) + 1)]
        v = float(np.mean(task_scores(z, groups)))
        if v > best_val:
            best, best_val = groups, v
    return Grouping(best or [], best_val, True)


def _restricted_growth(n: int, k: int):
    labels = [0] * n

    def rec(i: int, m: int):
        if i == n:
            yield labels
            return
        for g in range(min(m + 1, k)):
            labels[i] = g
            yield from rec(i + 1, max(m, g + 1))

    yield from rec(0, 0)


def tag_selection(z: np.ndarray, k: int, max_combinations: int = 3_000_000) -> Grouping:
    """TAG's overlapping group selection: k groups maximising the summed best score per task.

    Exhaustive over combinations of candidate groups (size ≥ 2) when that is at
    most ``max_combinations``, else greedy with local improvement. The returned
    ``groups`` may overlap; ``score`` is the mean best score over tasks.
    """
    z = validate_affinity(z)
    n = len(z)
    if n < 2:
        raise ValueError("TAG's selection needs at least two tasks")
    off = z - np.diag(np.diag(z))
    cands = [list(c) for r in range(2, n + 1) for c in itertools.combinations(range(n), r)]
    score = np.full((len(cands), n), NEG)
    for gi, g in enumerate(cands):
        idx = np.asarray(g)
        score[gi, idx] = off[np.ix_(idx, idx)].sum(0) / (len(g) - 1)
    k = min(k, len(cands))
    total = math.comb(len(cands), k)
    if total <= max_combinations:
        best_val, best = NEG, None
        for chunk in _chunks(itertools.combinations(range(len(cands)), k), 200_000):
            combo = np.asarray(chunk)
            vals = score[combo].max(1).sum(1)
            i = int(vals.argmax())
            if vals[i] > best_val:
                best_val, best = float(vals[i]), combo[i]
        chosen = list(best)  # type: ignore[arg-type]
    else:
        chosen = _tag_greedy(score, k)
        best_val = float(score[chosen].max(0).sum())
    return Grouping([cands[i] for i in chosen], best_val / n, total <= max_combinations)


def _tag_greedy(score: np.ndarray, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        cur = score[chosen].max(0) if chosen else np.full(score.shape[1], NEG)
        gains = np.maximum(score, cur).sum(1)
        gains = np.where(np.isfinite(gains), gains, -1e300 + np.isfinite(np.maximum(score, cur)).sum(1))
        chosen.append(int(np.argmax(gains)))
    improved = True
    while improved:
        improved = False
        base = score[chosen].max(0).sum()
        for pos in range(k):
            for c in range(len(score)):
                trial = chosen[:pos] + [c] + chosen[pos + 1:]
                v = score[trial].max(0).sum()
                if v > base + 1e-12:
                    chosen, base, improved = trial, v, True
    return chosen


def tag_assignment(z: np.ndarray, groups: list[list[int]]) -> dict[int, int]:
    """For TAG's overlapping groups: task → index of the group that serves it best."""
    off = z - np.diag(np.diag(z))
    out = {}
    for t in range(len(z)):
        best, best_v = -1, NEG
        for gi, g in enumerate(groups):
            if t in g and len(g) > 1:
                v = sum(off[p, t] for p in g if p != t) / (len(g) - 1)
                if v > best_v:
                    best, best_v = gi, v
        out[t] = best
    return out


def _chunks(it, size: int):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two flattened affinity matrices (off-diagonal entries)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    mask = ~np.eye(len(a), dtype=bool)
    ra = np.argsort(np.argsort(a[mask])).astype(float)
    rb = np.argsort(np.argsort(b[mask])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def partitions_up_to(z: np.ndarray, k_max: int, seed: int = 0) -> list[Grouping]:
    """The best partition into exactly k groups, for k = 1 … min(k_max, tasks): the candidates of
    ``splits: auto`` and of "at most k"."""
    return [best_partition(z, k, exactly=True, seed=seed) for k in range(1, min(len(z), k_max) + 1)]


def smallest_within(cands: list[dict], epsilon: float) -> dict:
    """``splits: auto``: of candidates ``{"k", "score", ...}``, the one with the fewest groups whose
    objective lies within ``epsilon`` × |best| of the best."""
    best = max(c["score"] for c in cands)
    return min((c for c in cands if c["score"] >= best - epsilon * abs(best)), key=lambda c: c["k"])


Reply = tuple[np.ndarray, list[int], float]  # one client's n_c×n_c matrix, its tasks' indices, its sample count


def pooled_matrix(replies: list[Reply], n: int) -> np.ndarray:
    """Each pair's sample-weighted mean over the replies that measured it; NaN where none did."""
    total, weight = np.zeros((n, n)), np.zeros((n, n))
    for m, idx, samples in replies:
        ix = np.asarray(idx)
        total[np.ix_(ix, ix)] += np.asarray(m, dtype=np.float64) * samples
        weight[np.ix_(ix, ix)] += samples
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def _key(groups: list[list[int]]) -> frozenset[frozenset[int]]:
    return frozenset(frozenset(g) for g in groups)


def split_confidence(replies: list[Reply], n: int, chosen: list[list[int]],
                     choose: Callable[[np.ndarray], list[list[int]]], draws: int = 200, seed: int = 0
                     ) -> dict[str, Any]:
    """How sure a split is: the share of ``draws`` bootstrap resamples of the client ``replies`` it was
    measured on (drawn with replacement, as many as there are) in which ``choose`` — the split's own rule,
    from the resample's pooled matrix (:func:`pooled_matrix`, :func:`fill_missing`) — picks ``chosen`` again;
    and the partition that wins most often otherwise, with its share."""
    if not replies:
        raise ValueError("no replies to resample")
    rng = np.random.default_rng(seed)
    counts: dict[frozenset[frozenset[int]], int] = {}
    for _ in range(draws):
        pick = rng.integers(0, len(replies), len(replies))
        z = fill_missing(pooled_matrix([replies[i] for i in pick], n))
        key = _key(choose(z))
        counts[key] = counts.get(key, 0) + 1
    mine = _key(chosen)
    others = sorted(((c, sorted(sorted(g) for g in k)) for k, c in counts.items() if k != mine), reverse=True)
    return {"confidence": counts.get(mine, 0) / draws, "draws": draws, "replies": len(replies),
            "runner_up": others[0][1] if others else None,
            "runner_up_share": others[0][0] / draws if others else 0.0}
