/** Parsers of numeric command-line options: each names the option and the value it refuses. */
import { InvalidArgumentError } from 'commander';

export function positiveInt(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer, got ${JSON.stringify(value)}`);
    return n;
  };
}

export function nonNegativeInt(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
    return n;
  };
}

export function positiveNumber(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive number, got ${JSON.stringify(value)}`);
    return n;
  };
}

export function probability(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !(n >= 0 && n <= 1))
      throw new InvalidArgumentError(`${name} must be a probability in [0, 1], got ${JSON.stringify(value)}`);
    return n;
  };
}
