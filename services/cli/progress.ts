/**
 * A progress line for long work: a redrawn bar with rate and ETA on a terminal, or a plain line every
 * few seconds when stderr is a pipe or a log file.
 */
import { formatDuration } from '../progress/format.js';

export { formatDuration };

export class ProgressBar {
  private readonly started = performance.now();
  private lastPlain = 0;
  private readonly tty: boolean;

  constructor(
    private readonly total: number,
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    /** Seconds between plain lines when not on a terminal. */
    private readonly plainEvery = 5,
    /** Value the work started from (a resumed run), so the ETA uses only this run's rate. */
    private readonly startValue = 0,
  ) {
    this.tty = Boolean(stream.isTTY);
  }

  update(done: number, info: string): void {
    const elapsed = (performance.now() - this.started) / 1000;
    const rate = (done - this.startValue) / Math.max(elapsed, 1e-6);
    const eta = rate > 0 ? (this.total - done) / rate : NaN;
    const pct = Math.min(100, (100 * done) / this.total);
    if (this.tty) {
      const width = 24;
      const filled = Math.round((width * pct) / 100);
      const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
      this.stream.write(
        `\r\x1b[K${this.label} ${bar} ${pct.toFixed(0).padStart(3)}% ${done}/${this.total} ${info} ETA ${formatDuration(eta)}`,
      );
    } else if (elapsed - this.lastPlain >= this.plainEvery || done >= this.total) {
      this.lastPlain = elapsed;
      this.stream.write(
        `${this.label} ${done}/${this.total} (${pct.toFixed(0)}%) ${info} ETA ${formatDuration(eta)}\n`,
      );
    }
  }

  /** Ends the bar's line (on a terminal) so later output starts on a fresh line. */
  done(): void {
    if (this.tty) this.stream.write('\n');
  }
}
