/**
 * Corpus files must be UTF-8 text. A Latin-1 or UTF-16 file, or a binary one, would otherwise decode to
 * replacement characters and train (and score) on garbage without a word; instead it is one error
 * naming the file and the byte offset of the first problem.
 */

export interface TextProblem {
  /** Byte offset (from the start of the bytes given, plus `offset`) of the first bad byte. */
  offset: number;
  reason: string;
}

/** More C0 control characters than this fraction (tab, newlines, form feed aside) means binary data. */
const MAX_CONTROL_FRACTION = 0.01;

function hex(b: number): string {
  return `0x${b.toString(16).toUpperCase().padStart(2, '0')}`;
}

/**
 * The first reason `bytes` are not UTF-8 text, or undefined. `offset` is added to reported offsets
 * (for a chunk of a larger file); with `final: false` a multi-byte sequence cut off at the end is not a
 * problem (the next chunk completes it).
 */
export function textProblem(bytes: Uint8Array, options: { offset?: number; final?: boolean } = {}): TextProblem | undefined {
  const base = options.offset ?? 0;
  const final = options.final ?? true;
  if (base === 0 && bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))) {
    return { offset: 0, reason: 'starts with a UTF-16 byte order mark: UTF-16 text, not UTF-8' };
  }
  let controls = 0;
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    if (b < 0x80) {
      if (b === 0) return { offset: base + i, reason: 'a NUL byte: binary data, not text' };
      if (b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0c && b !== 0x0d && b !== 0x0b) controls++;
      i++;
      continue;
    }
    // Length and the valid range of the second byte (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF).
    let n: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) n = 2;
    else if (b >= 0xe0 && b <= 0xef) {
      n = 3;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      n = 4;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else {
      return { offset: base + i, reason: `byte ${hex(b)} cannot start a UTF-8 character (is the file Latin-1 or another 8-bit encoding?)` };
    }
    for (let k = 1; k < n; k++) {
      if (i + k >= bytes.length) {
        if (!final) return undefined;
        return { offset: base + i, reason: `the file ends inside the UTF-8 character starting with ${hex(b)}` };
      }
      const c = bytes[i + k];
      if (k === 1 ? c < lo || c > hi : c < 0x80 || c > 0xbf) {
        return { offset: base + i, reason: `byte ${hex(b)} followed by ${hex(c)} is not valid UTF-8 (is the file Latin-1 or another 8-bit encoding?)` };
      }
    }
    i += n;
  }
  if (bytes.length > 0 && controls / bytes.length > MAX_CONTROL_FRACTION) {
    return { offset: base, reason: `${controls} of its ${bytes.length} bytes are control characters: binary data, not text` };
  }
  return undefined;
}

/** The text of a corpus file's bytes (a UTF-8 byte order mark dropped); throws naming `source` and the offset when they are not UTF-8 text. */
export function decodeUtf8Text(bytes: Uint8Array, source: string): string {
  const problem = textProblem(bytes);
  if (problem) throw new Error(`corpus ${source}: not UTF-8 text at byte offset ${problem.offset}: ${problem.reason}; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)`);
  const start = bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, bytes.length - start).toString('utf8');
}
