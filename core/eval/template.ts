/**
 * The pieces of Python that lm-evaluation-harness task files lean on: Jinja templates (rendered as
 * lm-eval renders them: undefined names are errors, a trailing newline is kept), `ast.literal_eval`
 * of a rendered list, and Python's notion of whitespace and string length.
 *
 * Templates run on @huggingface/jinja, a JavaScript Jinja that implements Python's string methods
 * (strip, split, replace, ...). What it lacks (for example `list.index`, or lm-eval's `regex_replace`
 * filter) fails with the template named.
 */
import * as jinja from '@huggingface/jinja';

// The package's type declarations import their siblings without file extensions, which NodeNext
// resolution cannot follow; these are the parts used here, as its runtime.d.ts declares them.
interface JinjaEnvironment {
  variables: Map<string, unknown>;
  set(name: string, value: unknown): unknown;
  lookupVariable(name: string): unknown;
}
type JinjaProgram = object;
const Environment = jinja.Environment as new () => JinjaEnvironment;
const Interpreter = jinja.Interpreter as new (
  env: JinjaEnvironment,
) => { run(program: JinjaProgram): { value: unknown } };
const parse = jinja.parse as (tokens: unknown) => JinjaProgram;
const tokenize = jinja.tokenize as (source: string) => unknown;

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateError';
  }
}

/** An Environment whose top level refuses names it does not hold, like Jinja's StrictUndefined. */
class StrictEnvironment extends Environment {
  override lookupVariable(name: string): unknown {
    if (!this.variables.has(name)) throw new TemplateError(`"${name}" is undefined`);
    return super.lookupVariable(name);
  }
}

const GLOBALS: Record<string, unknown> = { true: true, false: false, none: null, True: true, False: false, None: null };

/** A parsed template, rendered once per document. */
export class Template {
  private readonly program: JinjaProgram;

  constructor(readonly source: string) {
    try {
      // The tokenizer drops one trailing newline (Jinja's default); lm-eval keeps it
      // (keep_trailing_newline), so give it one to drop.
      this.program = parse(tokenize(`${source}\n`));
    } catch (err) {
      throw new TemplateError(`template ${JSON.stringify(source)}: ${(err as Error).message}`);
    }
  }

  render(doc: Record<string, unknown>): string {
    const env = new StrictEnvironment();
    for (const [k, v] of Object.entries(GLOBALS)) env.set(k, v);
    for (const [k, v] of Object.entries(doc)) env.set(k, v);
    try {
      return new Interpreter(env).run(this.program).value as string;
    } catch (err) {
      throw new TemplateError(`template ${JSON.stringify(this.source)}: ${(err as Error).message}`);
    }
  }
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: Python's str.isspace() counts the separators U+001C-U+001F.
const PYTHON_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

/** Python's str.isspace() for one character. */
export function isPythonSpace(ch: string): boolean {
  return ch.length > 0 && PYTHON_SPACE.test(ch);
}

/** Python's len(text): code points, not UTF-16 units. */
export function pythonLength(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** Python's len(text) - len(text.rstrip()): trailing whitespace characters (all in the BMP). */
export function trailingSpaces(text: string): number {
  let n = 0;
  while (n < text.length && isPythonSpace(text[text.length - 1 - n])) n++;
  return n;
}

/** Python's str.isdigit() as far as ast.literal_eval can read the result: ASCII digits only. */
export function isDigits(text: string): boolean {
  return /^[0-9]+$/.test(text);
}

/**
 * ast.literal_eval for what task templates render: strings (either quote, Python escapes),
 * numbers, True/False/None and lists or tuples of them. @huggingface/jinja prints lists in JSON's
 * spelling (double quotes), Python in its repr (single quotes); both parse to the same values.
 */
export function literalEval(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    throw new TemplateError(`cannot read ${JSON.stringify(text)} as a Python literal: ${what} at offset ${i}`);
  };
  const skip = (): void => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const value = (): unknown => {
    skip();
    const ch = text[i];
    if (ch === '[' || ch === '(') {
      const close = ch === '[' ? ']' : ')';
      i++;
      const items: unknown[] = [];
      skip();
      while (text[i] !== close) {
        items.push(value());
        skip();
        if (text[i] === ',') {
          i++;
          skip();
        } else if (text[i] !== close) fail(`expected "," or "${close}"`);
      }
      i++;
      return items;
    }
    if (ch === '"' || ch === "'") return string();
    const word = /^(True|False|None|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)/.exec(text.slice(i));
    if (!word) return fail('unexpected character');
    i += word[0].length;
    if (word[0] === 'True') return true;
    if (word[0] === 'False') return false;
    if (word[0] === 'None') return null;
    return Number(word[0]);
  };
  const string = (): string => {
    const quote = text[i++];
    let out = '';
    while (i < text.length && text[i] !== quote) {
      const ch = text[i++];
      if (ch !== '\\') {
        out += ch;
        continue;
      }
      const e = text[i++];
      const simple: Record<string, string> = {
        n: '\n',
        t: '\t',
        r: '\r',
        '\\': '\\',
        "'": "'",
        '"': '"',
        '/': '/',
        b: '\b',
        f: '\f',
        v: '\v',
        a: '\x07',
        '0': '\0',
        '\n': '',
      };
      if (e in simple) out += simple[e];
      else if (e === 'x' || e === 'u' || e === 'U') {
        const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const hex = text.slice(i, i + n);
        if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== n) fail(`bad \\${e} escape`);
        out += String.fromCodePoint(parseInt(hex, 16));
        i += n;
      } else out += `\\${e}`;
    }
    if (text[i] !== quote) fail('unterminated string');
    i++;
    return out;
  };
  const result = value();
  skip();
  if (i !== text.length) fail('trailing characters');
  return result;
}
