/** Multi-objective helpers (all objectives minimised): dominance, NSGA-II fronts and crowding distance. */

/** True when `a` is no worse than `b` in every objective and strictly better in at least one. */
export function dominates(a: readonly number[], b: readonly number[]): boolean {
  let better = false;
  for (let i = 0; i < a.length; i++) {
    if (a[i] > b[i]) return false;
    if (a[i] < b[i]) better = true;
  }
  return better;
}

/**
 * Fast non-dominated sorting (Deb et al., NSGA-II): the indices of `points`, grouped into fronts, the
 * first front non-dominated. Within a front indices are ascending, so the result is deterministic.
 */
export function nonDominatedSort(points: readonly (readonly number[])[]): number[][] {
  const n = points.length;
  const dominatedBy: number[][] = Array.from({ length: n }, () => []);
  const count = new Array<number>(n).fill(0);
  for (let p = 0; p < n; p++) {
    for (let q = p + 1; q < n; q++) {
      if (dominates(points[p], points[q])) {
        dominatedBy[p].push(q);
        count[q]++;
      } else if (dominates(points[q], points[p])) {
        dominatedBy[q].push(p);
        count[p]++;
      }
    }
  }
  const fronts: number[][] = [];
  let current: number[] = [];
  for (let p = 0; p < n; p++) if (count[p] === 0) current.push(p);
  while (current.length > 0) {
    fronts.push(current);
    const next: number[] = [];
    for (const p of current) {
      for (const q of dominatedBy[p]) {
        if (--count[q] === 0) next.push(q);
      }
    }
    next.sort((a, b) => a - b);
    current = next;
  }
  return fronts;
}

/**
 * Crowding distance of each member of `front` (indices into `points`), in the order of `front`.
 * Boundary points of every objective get Infinity; each objective's span normalises its contribution.
 */
export function crowdingDistance(points: readonly (readonly number[])[], front: readonly number[]): number[] {
  const m = front.length;
  const distance = new Array<number>(m).fill(0);
  if (m === 0) return distance;
  const objectives = points[front[0]].length;
  for (let k = 0; k < objectives; k++) {
    const order = front
      .map((_, i) => i)
      .sort((a, b) => points[front[a]][k] - points[front[b]][k] || front[a] - front[b]);
    const lo = points[front[order[0]]][k];
    const hi = points[front[order[m - 1]]][k];
    distance[order[0]] = Infinity;
    distance[order[m - 1]] = Infinity;
    const span = hi - lo;
    if (span <= 0) continue;
    for (let j = 1; j < m - 1; j++) {
      distance[order[j]] += (points[front[order[j + 1]]][k] - points[front[order[j - 1]]][k]) / span;
    }
  }
  return distance;
}

/** Indices of the non-dominated points (the first front), ascending. */
export function paretoIndices(points: readonly (readonly number[])[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < points.length; i++) {
    let dominated = false;
    for (let j = 0; j < points.length && !dominated; j++) {
      if (j !== i && dominates(points[j], points[i])) dominated = true;
    }
    if (!dominated) out.push(i);
  }
  return out;
}

/** NSGA-II rank (0 = first front) and crowding distance of every point. */
export function rankAndCrowding(points: readonly (readonly number[])[]): { rank: number[]; crowding: number[] } {
  const rank = new Array<number>(points.length).fill(0);
  const crowding = new Array<number>(points.length).fill(0);
  nonDominatedSort(points).forEach((front, r) => {
    const d = crowdingDistance(points, front);
    front.forEach((idx, i) => {
      rank[idx] = r;
      crowding[idx] = d[i];
    });
  });
  return { rank, crowding };
}
