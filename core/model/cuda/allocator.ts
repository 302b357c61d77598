/**
 * The cuda backend's caching allocator: device memory is taken from the driver once and reused.
 * Freed blocks go to a free list per rounded size and come back lowest address first, so a training
 * step that allocates the same sizes in the same order gets the same addresses every step (what a
 * CUDA graph replay needs, and what makes a step's memory traffic repeatable). When the driver is out
 * of memory the free lists are returned to it and the allocation is tried once more.
 *
 * A CUDA graph's scratch must stay reserved for its replays. Free lists per exact size waste much of
 * it (a freed 400 MB block cannot hold two 200 MB ones), so a captured step is planned instead: the
 * eager step before the capture is traced (each block's size and when it was freed), the blocks are
 * laid out in one arena by offset so that blocks alive at the same time never share bytes, and the
 * capture takes its blocks from there in the same order. A request that does not match the plan, or
 * would overlap a block still alive, is served from a private pool as before: a wrong plan costs
 * memory, never correctness.
 *
 * The bookkeeping is independent of the driver (`DeviceMemory`), so it is tested without a GPU.
 */

/** What the allocator asks of the device. */
export interface DeviceMemory {
  /** A new block of at least `bytes`, or null when the device is out of memory. */
  alloc(bytes: number): number | null;
  free(ptr: number): void;
}

export interface AllocatorStats {
  /** Bytes handed out and not yet freed (rounded sizes), plus the free blocks CUDA graphs keep for their replays. */
  inUse: number;
  /** Bytes held from the driver (in use plus cached). */
  reserved: number;
  peakInUse: number;
  peakReserved: number;
  /** Blocks taken from the driver so far. */
  driverAllocs: number;
  /** Times the cache was emptied to satisfy an allocation. */
  flushes: number;
}

/** Out of device memory even after the cache was emptied. */
export class DeviceOutOfMemory extends Error {
  constructor(bytes: number, stats: AllocatorStats) {
    const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
    super(
      `out of GPU memory allocating ${gib(bytes)} (in use ${gib(stats.inUse)}, peak ${gib(stats.peakInUse)}); use a smaller batch or model`,
    );
    this.name = 'DeviceOutOfMemory';
  }
}

const SMALL = 1 << 20;
const SMALL_STEP = 512;
const LARGE_STEP = 1 << 21;

/** The size a request is served with: 512 B steps below 1 MiB, 2 MiB steps above. */
export function roundSize(bytes: number): number {
  const b = Math.max(1, bytes);
  return b < SMALL ? Math.ceil(b / SMALL_STEP) * SMALL_STEP : Math.ceil(b / LARGE_STEP) * LARGE_STEP;
}

/** Free blocks by rounded size, and the blocks handed out from them. */
export interface Pool {
  free: Map<number, number[]>;
  live: Set<number>;
  /** A captured step's planned blocks, in one driver allocation. */
  arena?: Arena;
}

const newPool = (): Pool => ({ free: new Map(), live: new Set() });

/** How far ahead in its plan a capture looks for a request's size. */
const PLAN_LOOKAHEAD = 8;

/** A traced step's blocks laid out in one arena: each block's size and offset, in the order requested. */
export interface AllocationPlan {
  sizes: number[];
  offsets: number[];
  bytes: number;
}

interface Arena {
  base: number;
  plan: AllocationPlan;
  /** The next planned request. */
  next: number;
  /** Live arena blocks: address → size. */
  live: Map<number, number>;
  /** The graph is gone: the arena goes back to the driver when its last block is released. */
  dissolved: boolean;
}

interface Trace {
  blocks: Array<{ size: number; start: number; end: number }>;
  /** Live traced block → its index. */
  live: Map<number, number>;
  time: number;
}

/**
 * Offsets for blocks with lifetimes [start, end) so that blocks alive at once never overlap: largest
 * first, each at the lowest offset clear of the blocks already placed whose lifetimes meet its own.
 */
export function planArena(blocks: ReadonlyArray<{ size: number; start: number; end: number }>): AllocationPlan {
  const order = blocks
    .map((_, i) => i)
    .sort((a, b) => blocks[b].size - blocks[a].size || blocks[a].start - blocks[b].start);
  const offsets = new Array<number>(blocks.length).fill(0);
  const placed: number[] = [];
  let bytes = 0;
  for (const i of order) {
    const b = blocks[i];
    const busy = placed
      .filter((j) => blocks[j].start < b.end && b.start < blocks[j].end)
      .map((j) => [offsets[j], offsets[j] + blocks[j].size] as const)
      .sort((x, y) => x[0] - y[0]);
    let at = 0;
    for (const [from, to] of busy) {
      if (at + b.size <= from) break;
      at = Math.max(at, to);
    }
    offsets[i] = at;
    placed.push(i);
    bytes = Math.max(bytes, at + b.size);
  }
  return { sizes: blocks.map((b) => b.size), offsets, bytes };
}

export class CachingAllocator {
  private readonly general = newPool();
  /** While a CUDA graph is captured, its blocks come from and return to a pool of its own. */
  private capturing: Pool | null = null;
  private readonly sizeOf = new Map<number, number>();
  private readonly poolOf = new Map<number, Pool>();
  private trace: Trace | null = null;
  private readonly s: AllocatorStats = {
    inUse: 0,
    reserved: 0,
    peakInUse: 0,
    peakReserved: 0,
    driverAllocs: 0,
    flushes: 0,
  };

  constructor(private readonly device: DeviceMemory) {}

  /** Whether a block in `pool`'s free list still counts as in use (a graph's scratch does). */
  private keepsInUse(pool: Pool): boolean {
    return pool !== this.general;
  }

  alloc(bytes: number): number {
    const size = roundSize(bytes);
    const pool = this.capturing ?? this.general;
    const planned = pool.arena ? this.fromArena(pool, pool.arena, size) : null;
    if (planned !== null) return planned;
    const list = pool.free.get(size);
    let ptr = list && list.length > 0 ? list.pop()! : null;
    if (ptr !== null && this.keepsInUse(pool)) this.s.inUse -= size;
    if (ptr === null) {
      ptr = this.device.alloc(size);
      if (ptr === null && !this.capturing) {
        this.emptyCache();
        this.s.flushes++;
        ptr = this.device.alloc(size);
      }
      if (ptr === null) throw new DeviceOutOfMemory(size, this.s);
      this.s.driverAllocs++;
      this.s.reserved += size;
      this.s.peakReserved = Math.max(this.s.peakReserved, this.s.reserved);
    }
    this.sizeOf.set(ptr, size);
    this.poolOf.set(ptr, pool);
    pool.live.add(ptr);
    this.s.inUse += size;
    this.s.peakInUse = Math.max(this.s.peakInUse, this.s.inUse);
    if (this.trace) {
      this.trace.live.set(ptr, this.trace.blocks.length);
      this.trace.blocks.push({ size, start: this.trace.time++, end: Number.POSITIVE_INFINITY });
    }
    return ptr;
  }

  /** The next planned block, or null when the request is not the plan's or its bytes are still in use. */
  private fromArena(pool: Pool, arena: Arena, size: number): number | null {
    const { sizes, offsets } = arena.plan;
    // A request the traced step did not make leaves the plan where it is; one it made and the capture
    // does not is skipped (looking a few ahead), so one difference does not push every later block off.
    let i = arena.next;
    while (i < sizes.length && i < arena.next + PLAN_LOOKAHEAD && sizes[i] !== size) i++;
    if (sizes[i] !== size) return null;
    arena.next = i + 1;
    const ptr = arena.base + offsets[i];
    for (const [at, bytes] of arena.live) if (at < ptr + size && ptr < at + bytes) return null;
    arena.live.set(ptr, size);
    this.sizeOf.set(ptr, size);
    this.poolOf.set(ptr, pool);
    return ptr;
  }

  release(ptr: number): void {
    const size = this.sizeOf.get(ptr);
    const pool = this.poolOf.get(ptr);
    if (size === undefined || !pool)
      throw new Error(`cuda allocator: release of an unknown block 0x${ptr.toString(16)}`);
    this.sizeOf.delete(ptr);
    this.poolOf.delete(ptr);
    if (this.trace) {
      const i = this.trace.live.get(ptr);
      if (i !== undefined) this.trace.blocks[i].end = this.trace.time++;
      this.trace.live.delete(ptr);
    }
    const arena = pool.arena;
    if (arena?.live.delete(ptr)) {
      if (arena.dissolved && arena.live.size === 0) this.freeArena(arena);
      return;
    }
    pool.live.delete(ptr);
    if (!this.keepsInUse(pool)) this.s.inUse -= size;
    let list = pool.free.get(size);
    if (!list) pool.free.set(size, (list = []));
    // Descending by address, so pop() hands out the lowest.
    let i = list.length;
    list.push(ptr);
    while (i > 0 && list[i - 1] < ptr) {
      list[i] = list[i - 1];
      i--;
    }
    list[i] = ptr;
  }

  /** Size a live block was served with. */
  blockSize(ptr: number): number | undefined {
    return this.sizeOf.get(ptr);
  }

  /** Records the sizes and lifetimes of the blocks allocated until endTrace. */
  beginTrace(): void {
    this.trace = { blocks: [], live: new Map(), time: 0 };
  }

  /** The traced blocks laid out in one arena (blocks still alive at the end live to the end). */
  endTrace(): AllocationPlan {
    const blocks = this.trace?.blocks ?? [];
    this.trace = null;
    return planArena(blocks);
  }

  /**
   * From now until endCapture, allocations come from (and return to) a new private pool; with a plan
   * (endTrace), first from an arena laid out by it, taken from the driver now.
   */
  beginCapture(plan?: AllocationPlan): Pool {
    if (this.capturing) throw new Error('cuda allocator: a capture is already under way');
    const pool = newPool();
    const base = plan && plan.bytes > 0 ? this.device.alloc(plan.bytes) : null;
    if (plan && base !== null) {
      pool.arena = { base, plan, next: 0, live: new Map(), dissolved: false };
      this.s.driverAllocs++;
      this.s.reserved += plan.bytes;
      this.s.inUse += plan.bytes;
      this.s.peakReserved = Math.max(this.s.peakReserved, this.s.reserved);
      this.s.peakInUse = Math.max(this.s.peakInUse, this.s.inUse);
    }
    this.capturing = pool;
    return pool;
  }

  private freeArena(arena: Arena): void {
    this.device.free(arena.base);
    this.s.reserved -= arena.plan.bytes;
    this.s.inUse -= arena.plan.bytes;
  }

  endCapture(): void {
    this.capturing = null;
  }

  /** Gives a private pool's blocks back to the general pool (its graph is gone). */
  dissolve(pool: Pool): void {
    const arena = pool.arena;
    if (arena && !arena.dissolved) {
      arena.dissolved = true;
      // Blocks still alive (a tensor made in the capture and kept) hold the arena until released.
      if (arena.live.size === 0) this.freeArena(arena);
    }
    for (const ptr of pool.live) this.poolOf.set(ptr, this.general);
    for (const ptr of pool.live) this.general.live.add(ptr);
    for (const [size, list] of pool.free)
      for (const ptr of list) {
        // Counted as in use while the graph held it; release() takes it off.
        this.sizeOf.set(ptr, size);
        this.poolOf.set(ptr, this.general);
        this.general.live.add(ptr);
        this.release(ptr);
      }
    pool.free.clear();
    pool.live.clear();
  }

  /** Returns every cached (free) block of the general pool to the driver. */
  emptyCache(): void {
    for (const [size, list] of this.general.free) {
      for (const p of list) {
        this.device.free(p);
        this.s.reserved -= size;
      }
    }
    this.general.free.clear();
  }

  stats(): AllocatorStats {
    return { ...this.s };
  }

  resetPeaks(): void {
    this.s.peakInUse = this.s.inUse;
    this.s.peakReserved = this.s.reserved;
  }
}
