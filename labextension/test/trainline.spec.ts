/**
 * "Train this cell" writes the `%%wml train` line equivalent to the dialog's options, where the
 * magic reads exactly those options back (shell-split, after IPython's `$var`/`{expr}` expansion).
 */
import { defaultForm, trainRequest } from '../src/format';
import { TrainDefaults } from '../src/model';
import {
  CellMagicError,
  formFromLine,
  quoteWord,
  splitCell,
  splitWords,
  trainLine,
  withTrainLine
} from '../src/trainline';
import served from './train_defaults.json';

const defaults: TrainDefaults = served;

/** The line the dialog writes for `changes` to the form started for notebook `stem`. */
function lineFor(changes: Record<string, string>, stem = 'train-me', extra: string[] = []): string {
  const { code: _code, ...options } = trainRequest({ ...defaultForm(defaults, stem), ...changes }, 'pass');
  return trainLine(options, defaults, extra);
}

describe('trainLine', () => {
  it("writes only the name when the dialog is left at the magic's defaults", () => {
    expect(lineFor({})).toBe('%%wml train --name train-me');
  });

  it('writes each changed option as its flag, a sweep flag per line, quoting what the shell would split', () => {
    const line = lineFor({
      name: 'my sweep',
      gpus: '1',
      data: 'digits',
      sweep: 'lr=loguniform(1e-4,1e-1)\nhidden=[32,64]',
      runs: '4'
    });
    expect(line).toBe(
      "%%wml train --name 'my sweep' --gpus 1 --data digits " +
        "--sweep 'lr=loguniform(1e-4,1e-1)' --sweep 'hidden=[32,64]' --runs 4"
    );
  });

  it('reads back, split as the magic splits it, to the same options', () => {
    const sweep = ["note=['it''s']", 'p=uniform(0,0.5)'];
    const words = splitWords(lineFor({ sweep: sweep.join('\n'), gpus: '2' })).map(w => w.value);
    expect(words).toEqual(['%%wml', 'train', '--name', 'train-me', '--gpus', '2', '--sweep', sweep[0], '--sweep', sweep[1]]);
  });

  it('doubles $, { and } so that IPython does not expand them as variables', () => {
    expect(quoteWord('cost=[1,$x]')).toBe("'cost=[1,$$x]'");
    expect(quoteWord('d={a}')).toBe("'d={{a}}'");
  });

  it('keeps the flags the dialog has no field for, as written', () => {
    expect(lineFor({}, 'nb', ['--metric', 'val_acc', '--wait'])).toBe('%%wml train --name nb --metric val_acc --wait');
  });
});

describe('splitCell', () => {
  it('takes a plain cell whole: the line goes on top', () => {
    expect(splitCell('import torch\nprint(1)')).toEqual({ line: null, code: 'import torch\nprint(1)' });
    expect(withTrainLine('%%wml train --name a', 'print(1)')).toBe('%%wml train --name a\nprint(1)');
  });

  it('replaces the %%wml train line a cell already has', () => {
    expect(splitCell('%%wml train --gpus 1\nprint(1)')).toEqual({ line: '%%wml train --gpus 1', code: 'print(1)' });
  });

  it('refuses a cell that starts with another cell magic, naming it', () => {
    expect(() => splitCell('%%time\nprint(1)')).toThrow(CellMagicError);
    expect(() => splitCell('%%bash\nls')).toThrow('This cell starts with %%bash');
  });
});

describe('formFromLine', () => {
  const start = defaultForm(defaults, 'nb');

  it("starts the dialog from the cell's line, and keeps the flags it has no field for", () => {
    const line = "%%wml train --name 'old run' --gpus=1 --sweep 'lr=[0.1,0.2]' --sweep seed=3 --metric acc --mode min --wait";
    const { form, extra } = formFromLine(line, start);
    expect(form).toEqual({ ...start, name: 'old run', gpus: '1', sweep: 'lr=[0.1,0.2]\nseed=3', metric: 'acc', mode: 'min' });
    expect(extra).toEqual(['--wait']);
  });

  it('is the defaults for a cell without a line', () => {
    expect(formFromLine(null, start)).toEqual({ form: start, extra: [] });
  });
});
