/**
 * Binary token files: the token store's shards (store.ts) and standalone id files.
 *
 * Layout (little-endian), a 128-byte header then the ids:
 *
 *   offset  size  field
 *        0     8  magic "OFSHTOKS"
 *        8     4  format version (1)
 *       12     4  bytes per token: 2 (uint16, vocab <= 65536) or 4 (uint32)
 *       16     8  token count (uint64)
 *       24     4  vocab size of the tokenizer
 *       28     4  document count
 *       32    32  tokenizer hash (sha256 of the tokenizer's canonical JSON)
 *       64    32  content hash of what was tokenised (a shard: its part's key, sources.ts; zeros when unknown)
 *       96    32  payload hash (sha256 of the id bytes)
 *      128     -  ids
 *
 * The token stream of a corpus is each document's ids followed by the tokenizer's end-of-text id (when
 * it has one). Files are written atomically (temp file, fsync, rename): whole (writeTokenFile) or
 * streamed (TokenFileWriter). readTokenFile validates everything; readTokenFileHeader only the header
 * and the size, which is what the store checks each time it opens a shard.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fsyncDir, writeFileAtomic } from '../atomic.js';
import { type Tokenizer, tokenizerHash } from './tokenizer.js';

export const TOKEN_FILE_MAGIC = 'OFSHTOKS';
export const TOKEN_FILE_VERSION = 1;
export const TOKEN_FILE_HEADER_BYTES = 128;

export type TokenArray = Uint16Array | Uint32Array;

export interface TokenFileHeader {
  version: number;
  bytesPerToken: 2 | 4;
  count: number;
  vocabSize: number;
  documents: number;
  tokenizerHash: string;
  corpusHash: string;
  payloadHash: string;
}

export interface TokenFile extends TokenFileHeader {
  path: string;
  tokens: TokenArray;
}

export interface WriteTokenFileOptions {
  vocabSize: number;
  tokenizerHash: string;
  corpusHash?: string;
  documents?: number;
}

/** uint16 when every id fits (vocab <= 65536), else uint32. */
export function tokenDtypeFor(vocabSize: number): 'uint16' | 'uint32' {
  return vocabSize <= 65536 ? 'uint16' : 'uint32';
}

function hexToBytes(hex: string, field: string): Uint8Array {
  if (!/^[0-9a-f]{64}$/.test(hex))
    throw new Error(`${field} must be 64 lowercase hex digits, got ${JSON.stringify(hex)}`);
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

function checkIds(ids: ArrayLike<number>, vocabSize: number, where: string): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < vocabSize) || !Number.isInteger(id)) {
      throw new Error(`${where}: token id ${id} at position ${i} is outside the vocabulary (size ${vocabSize})`);
    }
  }
}

/** Writes ids to a token file atomically. Ids must lie in [0, vocabSize). */
export async function writeTokenFile(
  file: string,
  ids: ArrayLike<number>,
  options: WriteTokenFileOptions,
): Promise<TokenFileHeader> {
  const { vocabSize } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize >= 2 ** 32)
    throw new Error(`vocabSize ${vocabSize} is invalid`);
  checkIds(ids, vocabSize, file);
  const bytesPerToken = tokenDtypeFor(vocabSize) === 'uint16' ? 2 : 4;
  const payload = bytesPerToken === 2 ? Uint16Array.from(ids) : Uint32Array.from(ids);
  const payloadBytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  if (!littleEndian()) throw new Error('token files need a little-endian host');
  const payloadHash = createHash('sha256').update(payloadBytes).digest('hex');
  const header: TokenFileHeader = {
    version: TOKEN_FILE_VERSION,
    bytesPerToken,
    count: ids.length,
    vocabSize,
    documents: options.documents ?? 0,
    tokenizerHash: options.tokenizerHash,
    corpusHash: options.corpusHash ?? '0'.repeat(64),
    payloadHash,
  };
  await writeFileAtomic(file, [encodeHeader(header), payloadBytes]);
  return header;
}

function littleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

function encodeHeader(h: TokenFileHeader): Uint8Array {
  const buf = new Uint8Array(TOKEN_FILE_HEADER_BYTES);
  const dv = new DataView(buf.buffer);
  buf.set(Buffer.from(TOKEN_FILE_MAGIC, 'ascii'), 0);
  dv.setUint32(8, h.version, true);
  dv.setUint32(12, h.bytesPerToken, true);
  dv.setBigUint64(16, BigInt(h.count), true);
  dv.setUint32(24, h.vocabSize, true);
  dv.setUint32(28, h.documents, true);
  buf.set(hexToBytes(h.tokenizerHash, 'tokenizerHash'), 32);
  buf.set(hexToBytes(h.corpusHash, 'corpusHash'), 64);
  buf.set(hexToBytes(h.payloadHash, 'payloadHash'), 96);
  return buf;
}

function decodeHeader(file: string, buf: Uint8Array): TokenFileHeader {
  const magic = Buffer.from(buf.subarray(0, 8)).toString('latin1');
  if (magic !== TOKEN_FILE_MAGIC) throw new Error(`${file}: not a token file (bad magic ${JSON.stringify(magic)})`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== TOKEN_FILE_VERSION)
    throw new Error(`${file}: unsupported token file version ${version} (expected ${TOKEN_FILE_VERSION})`);
  const bpt = dv.getUint32(12, true);
  if (bpt !== 2 && bpt !== 4) throw new Error(`${file}: corrupt header (bytes per token ${bpt})`);
  const count = dv.getBigUint64(16, true);
  if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${file}: corrupt header (token count ${count})`);
  const vocabSize = dv.getUint32(24, true);
  if (vocabSize === 0) throw new Error(`${file}: corrupt header (vocab size 0)`);
  const hex = (o: number): string => Buffer.from(buf.subarray(o, o + 32)).toString('hex');
  return {
    version,
    bytesPerToken: bpt,
    count: Number(count),
    vocabSize,
    documents: dv.getUint32(28, true),
    tokenizerHash: hex(32),
    corpusHash: hex(64),
    payloadHash: hex(96),
  };
}

/** Reads only the header of a token file (validating magic, version and size). */
export async function readTokenFileHeader(file: string): Promise<TokenFileHeader> {
  const fh = await openForRead(file);
  try {
    const size = (await fh.stat()).size;
    const header = await readHeader(fh, file, size);
    checkSize(file, header, size);
    return header;
  } finally {
    await fh.close();
  }
}

async function openForRead(file: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(file, 'r');
  } catch (err) {
    throw new Error(
      `${file}: cannot open token file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
}

async function readHeader(fh: fsp.FileHandle, file: string, size: number): Promise<TokenFileHeader> {
  if (size < TOKEN_FILE_HEADER_BYTES) {
    const head = new Uint8Array(Math.min(size, 8));
    await fh.read(head, 0, head.length, 0);
    if (Buffer.from(head).toString('latin1') !== TOKEN_FILE_MAGIC.slice(0, head.length) || size < 8) {
      throw new Error(`${file}: not a token file (bad magic)`);
    }
    throw new Error(`${file}: truncated token file (${size} bytes, header alone is ${TOKEN_FILE_HEADER_BYTES})`);
  }
  const buf = new Uint8Array(TOKEN_FILE_HEADER_BYTES);
  await readFully(fh, buf, 0);
  return decodeHeader(file, buf);
}

function checkSize(file: string, h: TokenFileHeader, size: number): void {
  const expected = TOKEN_FILE_HEADER_BYTES + h.count * h.bytesPerToken;
  if (size < expected)
    throw new Error(`${file}: truncated token file (${size} bytes, expected ${expected} for ${h.count} tokens)`);
  if (size > expected)
    throw new Error(`${file}: corrupt token file (${size} bytes, expected ${expected}: trailing data)`);
}

async function readFully(fh: fsp.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, off, buf.byteLength - off, position + off);
    if (bytesRead === 0) throw new Error('unexpected end of file');
    off += bytesRead;
  }
}

export interface ReadTokenFileOptions {
  /** When given, the file must have been written with this tokenizer (hash and vocab size). */
  tokenizer?: Tokenizer;
  /** Check the payload hash (default true). */
  verify?: boolean;
}

/** Reads and validates a token file: magic, version, size, payload hash, id range, tokenizer match. */
export async function readTokenFile(file: string, options: ReadTokenFileOptions = {}): Promise<TokenFile> {
  const fh = await openForRead(file);
  let header: TokenFileHeader;
  let tokens: TokenArray;
  try {
    const size = (await fh.stat()).size;
    header = await readHeader(fh, file, size);
    checkSize(file, header, size);
    tokens = header.bytesPerToken === 2 ? new Uint16Array(header.count) : new Uint32Array(header.count);
    await readFully(fh, new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength), TOKEN_FILE_HEADER_BYTES);
  } finally {
    await fh.close();
  }
  if (!littleEndian()) throw new Error('token files need a little-endian host');
  if (options.verify !== false) {
    const h = createHash('sha256')
      .update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength))
      .digest('hex');
    if (h !== header.payloadHash) throw new Error(`${file}: corrupt token file (payload hash mismatch)`);
  }
  checkIds(tokens, header.vocabSize, file);
  const tok = options.tokenizer;
  if (tok !== undefined) {
    const th = tokenizerHash(tok);
    if (th !== header.tokenizerHash) {
      throw new Error(
        `${file}: written with another tokenizer (hash ${header.tokenizerHash.slice(0, 12)}, ${tok.name} is ${th.slice(0, 12)})`,
      );
    }
    if (header.vocabSize > tok.vocabSize) {
      throw new Error(`${file}: vocab size ${header.vocabSize} exceeds the tokenizer's ${tok.vocabSize}`);
    }
  }
  return { ...header, path: file, tokens };
}

// ---------------------------------------------------------------------------------------------------

/**
 * Writes a token file as its ids arrive: a temporary file beside the target gets the ids (checked
 * against the vocabulary) and, at finish, the header with the count and payload hash; then fsync and
 * rename. Until finish nothing exists under the target name; abort removes the temporary file.
 */
export class TokenFileWriter {
  readonly file: string;
  readonly tmp: string;
  count = 0;
  private readonly hash = createHash('sha256');
  private readonly bytesPerToken: 2 | 4;
  private buffer: Uint16Array | Uint32Array;
  private used = 0;
  private position = TOKEN_FILE_HEADER_BYTES;

  private constructor(
    private readonly fh: fsp.FileHandle,
    file: string,
    tmp: string,
    private readonly options: WriteTokenFileOptions,
  ) {
    this.file = file;
    this.tmp = tmp;
    this.bytesPerToken = tokenDtypeFor(options.vocabSize) === 'uint16' ? 2 : 4;
    this.buffer = this.bytesPerToken === 2 ? new Uint16Array(1 << 20) : new Uint32Array(1 << 20);
  }

  /** Starts `file`; the temporary file's name begins with `.${basename}.` so a cleaner can find it. */
  static async create(file: string, options: WriteTokenFileOptions): Promise<TokenFileWriter> {
    const { vocabSize } = options;
    if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize >= 2 ** 32)
      throw new Error(`vocabSize ${vocabSize} is invalid`);
    if (!littleEndian()) throw new Error('token files need a little-endian host');
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const tmp = path.join(
      path.dirname(file),
      `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
    );
    return new TokenFileWriter(await fsp.open(tmp, 'wx'), file, tmp, options);
  }

  /** Appends ids; an id outside [0, vocabSize) is an error naming its position in the file. */
  async append(ids: ArrayLike<number>): Promise<void> {
    const v = this.options.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(id >= 0 && id < v))
        throw new Error(
          `${this.file}: token id ${id} at position ${this.count + i} is outside the vocabulary (size ${v})`,
        );
      this.buffer[this.used++] = id;
      if (this.used === this.buffer.length) await this.flush();
    }
    this.count += ids.length;
  }

  private async flush(): Promise<void> {
    if (this.used === 0) return;
    const bytes = new Uint8Array(this.buffer.buffer, 0, this.used * this.bytesPerToken);
    this.hash.update(bytes);
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, off, bytes.length - off, this.position + off);
      off += bytesWritten;
    }
    this.position += bytes.length;
    this.used = 0;
  }

  /** Writes the header, fsyncs and renames the file into place. */
  async finish(documents: number): Promise<TokenFileHeader> {
    await this.flush();
    const header: TokenFileHeader = {
      version: TOKEN_FILE_VERSION,
      bytesPerToken: this.bytesPerToken,
      count: this.count,
      vocabSize: this.options.vocabSize,
      documents,
      tokenizerHash: this.options.tokenizerHash,
      corpusHash: this.options.corpusHash ?? '0'.repeat(64),
      payloadHash: this.hash.digest('hex'),
    };
    await this.fh.write(encodeHeader(header), 0, TOKEN_FILE_HEADER_BYTES, 0);
    await this.fh.sync();
    await this.fh.close();
    await fsp.rename(this.tmp, this.file);
    await fsyncDir(path.dirname(this.file));
    return header;
  }

  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true });
  }
}

/** sha256 of a token file's ids, read in chunks (the check of a shard the store adopts). */
export async function tokenFilePayloadHash(file: string, header: TokenFileHeader): Promise<string> {
  const fh = await openForRead(file);
  try {
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(4 << 20);
    const end = TOKEN_FILE_HEADER_BYTES + header.count * header.bytesPerToken;
    for (let pos = TOKEN_FILE_HEADER_BYTES; pos < end; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
      if (bytesRead === 0) throw new Error(`${file}: truncated token file`);
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/** Tokenises documents in memory into one stream: each document's ids, then the end-of-text id if any. */
export function tokenizeDocuments(documents: readonly string[], tokenizer: Tokenizer): TokenArray {
  const ids: number[] = [];
  const eot = tokenizer.endOfTextId;
  for (const d of documents) {
    for (const id of tokenizer.encode(d)) ids.push(id);
    if (eot !== null) ids.push(eot);
  }
  checkIds(ids, tokenizer.vocabSize, `tokenizer ${tokenizer.name}`);
  return tokenDtypeFor(tokenizer.vocabSize) === 'uint16' ? Uint16Array.from(ids) : Uint32Array.from(ids);
}
