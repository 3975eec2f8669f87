/**
 * The "Train this cell" dialog offers `%%wml train`'s defaults. `train_defaults.json` is what
 * `GET /wml/train` answers; tests/test_serverext.py checks it against `wml_core.train_options`.
 */
import { defaultForm, trainRequest } from '../src/format';
import { TrainDefaults } from '../src/model';
import served from './train_defaults.json';

const defaults: TrainDefaults = served;

describe('defaultForm', () => {
  it("starts from the magic's defaults, so an untouched form submits exactly them", () => {
    const form = defaultForm(defaults);
    expect(form.gpus).toBe(String(defaults.gpus));
    expect(trainRequest(form, 'print(1)')).toEqual({ ...defaults, code: 'print(1)' });
  });

  it("asks for no GPU unless told, as %%wml train does", () => {
    expect(defaultForm(defaults).gpus).toBe('0');
  });

  it("is named after the notebook, else the magic's default name", () => {
    expect(defaultForm(defaults, 'digits').name).toBe('digits');
    expect(defaultForm(defaults, '').name).toBe(defaults.name);
  });

  it('shows sweep flags one per line and runs as text', () => {
    const form = defaultForm({ ...defaults, sweep: ['lr=[0.1,0.2]', 'seed=3'], runs: 4, data: 'digits' });
    expect([form.sweep, form.runs, form.data]).toEqual(['lr=[0.1,0.2]\nseed=3', '4', 'digits']);
  });
});
