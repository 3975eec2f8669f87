/**
 * "Train this cell" writes what it does into the cell: the `%%wml train …` line equivalent to the
 * dialog's options, so that the cell, run as usual, submits the experiment and shows its live
 * display, and the notebook keeps how it was trained. Pure functions: no DOM, no JupyterLab.
 *
 * Where the line goes: at the top of the cell. A cell that already starts with `%%wml train`
 * has that line replaced (the dialog starts from its values, and flags the dialog has no field
 * for are kept as written). A cell that starts with another cell magic (`%%time`, `%%bash`…) is
 * not plain Python, so it cannot become `train.py`: it is refused with a message (`CellMagicError`)
 * rather than rewritten.
 */
import { TrainForm } from './format';
import { TrainDefaults, TrainRequest } from './model';

/** The cell magic and subcommand a training cell starts with. */
export const TRAIN_MAGIC = '%%wml train';

/** A cell that starts with another cell magic: it cannot be trained as it is. */
export class CellMagicError extends Error {
  /** Create the error for a cell starting with `magic`. */
  constructor(readonly magic: string) {
    super(
      `This cell starts with ${magic}: only plain Python can become train.py. ` +
        `Move its code to a cell of its own to train it.`
    );
    this.name = 'CellMagicError';
  }
}

/** One word of a magic line: its text as written and its value once unquoted. */
export interface Word {
  raw: string;
  value: string;
}

/** Split a magic line into words as Python's `shlex.split` does (quotes, backslashes). */
export function splitWords(line: string): Word[] {
  const words: Word[] = [];
  let i = 0;
  while (i < line.length) {
    while (i < line.length && /\s/.test(line[i])) {
      i++;
    }
    if (i >= line.length) {
      break;
    }
    const start = i;
    let value = '';
    while (i < line.length && !/\s/.test(line[i])) {
      const c = line[i];
      if (c === "'") {
        const end = line.indexOf("'", i + 1);
        const stop = end < 0 ? line.length : end;
        value += line.slice(i + 1, stop);
        i = stop + 1;
      } else if (c === '"') {
        i++;
        while (i < line.length && line[i] !== '"') {
          if (line[i] === '\\' && '"\\$`'.includes(line[i + 1] ?? '')) {
            i++;
          }
          value += line[i++];
        }
        i++;
      } else if (c === '\\') {
        value += line[i + 1] ?? '';
        i += 2;
      } else {
        value += c;
        i++;
      }
    }
    words.push({ raw: line.slice(start, Math.min(i, line.length)), value });
  }
  return words;
}

/** Characters a word may hold unquoted (anything else is single-quoted). */
const PLAIN = /^[A-Za-z0-9_.,:/=+@%-]+$/;

/**
 * A value as one word of a magic line: single-quoted where the shell split would change it, and
 * with `$`, `{` and `}` doubled, since IPython expands `$var` and `{expr}` in every magic's line.
 */
export function quoteWord(value: string): string {
  const escaped = value.replace(/\$/g, '$$$$').replace(/\{/g, '{{').replace(/\}/g, '}}');
  return value && PLAIN.test(escaped) ? escaped : `'${escaped.replace(/'/g, `'"'"'`)}'`;
}

/** The flag of a request field: `max_retries` → `--max-retries`. */
function flagOf(field: string): string {
  return `--${field.replace(/_/g, '-')}`;
}

function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The `%%wml train …` line that submits a cell with `request`'s options: each option that differs
 * from the magic's default (`defaults`, from `GET /wml/train`), the name always; then `extra`
 * words (flags kept from a line the cell had) as written.
 */
export function trainLine(
  request: Omit<TrainRequest, 'code'>,
  defaults: TrainDefaults,
  extra: readonly string[] = []
): string {
  const words = [TRAIN_MAGIC];
  for (const [field, value] of Object.entries(request)) {
    const given = value !== null && value !== '' && !(Array.isArray(value) && value.length === 0);
    if (field === 'code' || !given || (field !== 'name' && sameValue(value, (defaults as unknown as Record<string, unknown>)[field]))) {
      continue;
    }
    for (const item of Array.isArray(value) ? value : [value]) {
      words.push(flagOf(field), quoteWord(String(item)));
    }
  }
  return [...words, ...extra].join(' ');
}

/** A training cell's parts: its `%%wml train` line (null if none) and the code below it. */
export interface TrainCell {
  line: string | null;
  code: string;
}

/** Split a cell into its `%%wml train` line and its code; `CellMagicError` for another cell magic. */
export function splitCell(source: string): TrainCell {
  const newline = source.indexOf('\n');
  const first = newline < 0 ? source : source.slice(0, newline);
  const words = splitWords(first);
  if (words[0]?.value === '%%wml' && words[1]?.value === 'train') {
    return { line: first, code: newline < 0 ? '' : source.slice(newline + 1) };
  }
  if (first.trimStart().startsWith('%%')) {
    throw new CellMagicError(words[0]?.value ?? '%%');
  }
  return { line: null, code: source };
}

/**
 * The dialog's starting values from a cell's `%%wml train` line over `start` (a flag fills the
 * form field of the same name; `--sweep`, repeated, one line each), and the words of the flags
 * the dialog has no field for (kept as written).
 */
export function formFromLine(line: string | null, start: TrainForm): { form: TrainForm; extra: string[] } {
  const form = { ...start };
  const extra: string[] = [];
  const words = line === null ? [] : splitWords(line).slice(2);
  const sweeps: string[] = [];
  const fields = new Map(Object.keys(start).map(field => [flagOf(field), field as keyof TrainForm]));
  for (let i = 0; i < words.length; i++) {
    const [flag, inline] = words[i].value.split(/=(.*)/s, 2);
    const field = fields.get(flag);
    if (!field || (inline === undefined && i + 1 >= words.length)) {
      extra.push(words[i].raw);
      continue;
    }
    const value = inline ?? words[++i].value;
    if (field === 'sweep') {
      sweeps.push(value);
    } else {
      form[field] = value;
    }
  }
  if (sweeps.length) {
    form.sweep = sweeps.join('\n');
  }
  return { form, extra };
}

/** The cell's new source: `line` on top of `code`. */
export function withTrainLine(line: string, code: string): string {
  return `${line}\n${code}`;
}
