import {
  formatCounts,
  formatGpuTime,
  formatHparams,
  formatValue,
  FormError,
  quotaBar,
  sparklinePoints,
  stateKind,
  TrainForm,
  trainRequest
} from '../src/format';
import { isTerminal } from '../src/model';
import { makeUsage } from './fixtures';

describe('formatting', () => {
  it('writes GPU time in s, min or h', () => {
    expect(formatGpuTime(0)).toBe('0 s');
    expect(formatGpuTime(42.4)).toBe('42 s');
    expect(formatGpuTime(184)).toBe('3 min 4 s');
    expect(formatGpuTime(9000)).toBe('2.5 h');
  });

  it('writes values with 4 significant digits and hyperparameters as name=value', () => {
    expect(formatValue(0.0123456)).toBe('0.01235');
    expect(formatValue(32)).toBe('32');
    expect(formatHparams({ lr: 0.0123456, batch: 32, opt: 'adam' })).toBe('lr=0.01235, batch=32, opt=adam');
  });

  it('groups run counts by what a user cares about', () => {
    expect(formatCounts({ PENDING: 1, PROCESSING: 2, QUEUED: 3, COMPLETED: 4, HALTED: 1 })).toBe(
      '3 running · 3 queued · 4 completed · 1 halted'
    );
    expect(formatCounts({})).toBe('no runs');
  });

  it('gives each state a badge kind, and knows the terminal states', () => {
    expect(['QUEUED', 'DOWNLOADING', 'COMPLETED', 'FAILED', 'STOPPED'].map(stateKind)).toEqual([
      'queued',
      'active',
      'success',
      'error',
      'halted'
    ]);
    expect(isTerminal('HALTED')).toBe(true);
    expect(isTerminal('STORING')).toBe(false);
  });
});

describe('sparklinePoints', () => {
  it('spans the box, lowest value at the bottom, highest at the top', () => {
    expect(sparklinePoints([1, 3, 2], 60, 16)).toBe('0.0,15.0 30.0,1.0 60.0,8.0');
  });

  it('draws a flat or single-point series without dividing by zero', () => {
    expect(sparklinePoints([5, 5], 10, 10)).toBe('0.0,9.0 10.0,9.0');
    expect(sparklinePoints([5], 10, 10)).toBe('5.0,9.0');
    expect(sparklinePoints([], 10, 10)).toBe('');
  });
});

describe('quotaBar', () => {
  it('scales to the quota while demand fits', () => {
    expect(quotaBar(makeUsage({ gpu_quota: 4, gpus_in_use: 1, queued_gpus: 1 }))).toEqual({
      inUse: 25,
      queued: 25,
      over: false,
      quotaAt: 100
    });
  });

  it('scales to the demand when queued GPUs exceed the quota', () => {
    expect(quotaBar(makeUsage({ gpu_quota: 2, gpus_in_use: 2, queued_gpus: 2 }))).toEqual({
      inUse: 50,
      queued: 50,
      over: true,
      quotaAt: 50
    });
    expect(quotaBar(makeUsage({ gpu_quota: 0, gpus_in_use: 0, queued_gpus: 0 })).inUse).toBe(0);
  });
});

describe('trainRequest', () => {
  const form: TrainForm = {
    name: ' mnist ',
    gpus: '2',
    framework: 'pytorch',
    data: ' digits ',
    sweep: 'lr=loguniform(1e-4,1e-1)\n\n  batch=[32,64]  \n',
    runs: ''
  };

  it('reads the form into the request the server extension takes', () => {
    expect(trainRequest(form, 'print(1)')).toEqual({
      code: 'print(1)',
      name: 'mnist',
      gpus: 2,
      framework: 'pytorch',
      data: 'digits',
      sweep: ['lr=loguniform(1e-4,1e-1)', 'batch=[32,64]'],
      runs: null
    });
    expect(trainRequest({ ...form, data: '', runs: '8' }, '').runs).toBe(8);
  });

  it.each([
    [{ name: 'a/b' }, 'name'],
    [{ gpus: '-1' }, 'gpus'],
    [{ gpus: '1.5' }, 'gpus'],
    [{ gpus: '' }, 'gpus'],
    [{ runs: '0' }, 'runs'],
    [{ framework: 'cobol' }, 'framework']
  ])('rejects %j naming the field', (change, field) => {
    const error = (() => {
      try {
        trainRequest({ ...form, ...change }, '');
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(FormError);
    expect((error as FormError).field).toBe(field);
  });
});
