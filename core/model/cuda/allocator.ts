/**
 * The cuda backend's caching allocator: device memory is taken from the driver once and reused.
 * Freed blocks go to a free list per rounded size and come back lowest address first, so a training
 * step that allocates the same sizes in the same order gets the same addresses every step (what a
 * CUDA graph replay needs, and what makes a step's memory traffic repeatable). When the driver is out
 * of memory the free lists are returned to it and the allocation is tried once more.
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
}

const newPool = (): Pool => ({ free: new Map(), live: new Set() });

export class CachingAllocator {
  private readonly general = newPool();
  /** While a CUDA graph is captured, its blocks come from and return to a pool of its own. */
  private capturing: Pool | null = null;
  private readonly sizeOf = new Map<number, number>();
  private readonly poolOf = new Map<number, Pool>();
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
    return ptr;
  }

  release(ptr: number): void {
    const size = this.sizeOf.get(ptr);
    const pool = this.poolOf.get(ptr);
    if (size === undefined || !pool)
      throw new Error(`cuda allocator: release of an unknown block 0x${ptr.toString(16)}`);
    this.sizeOf.delete(ptr);
    this.poolOf.delete(ptr);
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

  /** From now until endCapture, allocations come from (and return to) a new private pool. */
  beginCapture(): Pool {
    if (this.capturing) throw new Error('cuda allocator: a capture is already under way');
    this.capturing = newPool();
    return this.capturing;
  }

  endCapture(): void {
    this.capturing = null;
  }

  /** Gives a private pool's blocks back to the general pool (its graph is gone). */
  dissolve(pool: Pool): void {
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
