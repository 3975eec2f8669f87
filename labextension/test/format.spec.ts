import {
  allFailed,
  bestText,
  countGroups,
  formatCounts,
  formatGpuTime,
  formatHparams,
  formatValue,
  preemptedText,
  FormError,
  etaText,
  progressText,
  quotaBar,
  quotaWords,
  runElapsed,
  runWhy,
  waitingText,
  sparklinePoints,
  stateKind,
  TrainForm,
  trainRequest
} from '../src/format';
import { isTerminal, RunState } from '../src/model';
import { makeRun, makeUsage } from './fixtures';

describe('formatting', () => {
  it('writes GPU time in s, min or h, as wml_core.billing.format_gpu_time does', () => {
    // the cases of tests/test_wording.py::test_one_gpu_time_format
    const cases: [number, string][] = [
      [0, '0 s'],
      [4.24, '4.2 s'],
      [42.4, '42 s'],
      [59.6, '1 min 0 s'],
      [156, '2 min 36 s'],
      [3599.4, '59 min 59 s'],
      [3599.6, '1.0 h'],
      [9000, '2.5 h'],
      [360000, '100 h']
    ];
    for (const [seconds, text] of cases) {
      expect(formatGpuTime(seconds)).toBe(text);
    }
  });

  it('counts runs by state instead of one word, each group with its badge kind', () => {
    expect(formatCounts({ COMPLETED: 3, FAILED: 2 })).toBe('3 completed · 2 failed');
    expect(countGroups({ COMPLETED: 3, FAILED: 2 }).map(g => g.kind)).toEqual(['success', 'error']);
    expect(allFailed({ FAILED: 2 })).toBe(true);
    expect(allFailed({ FAILED: 2, COMPLETED: 1 })).toBe(false);
    expect(allFailed({})).toBe(false);
  });

  it('names the best run only for a chosen metric, provisionally until a run completes', () => {
    const best = { run_id: 'e-03', metric: 'acc', value: 0.91, step: 27, provisional: false };
    expect(bestText(best, 'acc')).toBe('best e-03 acc=0.91');
    expect(bestText({ ...best, provisional: true, step: 7 }, 'acc')).toBe(
      'leader e-03 acc=0.91 at step 7 (provisional)'
    );
    expect(bestText(null, 'acc')).toBe('no acc yet');
    expect(bestText(null, null)).toBe('no metric chosen');
  });

  it('says why a run ended: the error line of a failed command, and its reason', () => {
    const failed = makeRun({
      state: RunState.Failed,
      reason: 'the command exited with code 1',
      log_tail: ['Traceback (most recent call last):', 'RuntimeError: loss is NaN', '']
    });
    expect(runWhy(failed)).toBe('RuntimeError: loss is NaN (the command exited with code 1)');
    expect(runWhy(makeRun({ state: RunState.Stopped, reason: 'stopped by ASHA at step 1' }))).toBe(
      'stopped by ASHA at step 1'
    );
    expect(runWhy(makeRun({ state: RunState.Completed, reason: 'requeued after a restart' }))).toBe('');
    expect(runWhy(makeRun())).toBe('');
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
    expect(
      [RunState.Queued, RunState.Downloading, RunState.Completed, RunState.Failed, RunState.Stopped].map(stateKind)
    ).toEqual([
      'queued',
      'active',
      'success',
      'error',
      'halted'
    ]);
    expect(isTerminal(RunState.Halted)).toBe(true);
    expect(isTerminal(RunState.Storing)).toBe(false);
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
      quotaAt: 100,
      unit: 'GPUs'
    });
  });

  it('scales to the demand when queued GPUs exceed the quota', () => {
    expect(quotaBar(makeUsage({ gpu_quota: 2, gpus_in_use: 2, queued_gpus: 2 }))).toEqual({
      inUse: 50,
      queued: 50,
      over: true,
      quotaAt: 50,
      unit: 'GPUs'
    });
    expect(quotaBar(makeUsage({ gpu_quota: 0, gpus_in_use: 0, queued_gpus: 0, runs_in_use: 0, queued_runs: 0 })).inUse).toBe(0);
  });
});

describe('queue truth and progress', () => {
  it('counts run slots when the runs ask for no GPU, and says "GPU slots" without GPUs', () => {
    const slots = makeUsage({ gpus_in_use: 0, queued_gpus: 0, run_slots: 2, runs_in_use: 2, queued_runs: 2 });
    expect(quotaBar(slots)).toEqual({ inUse: 50, queued: 50, over: true, quotaAt: 50, unit: 'run slots' });
    expect(quotaBar(makeUsage({ real_gpus: false })).unit).toBe('GPU slots');
    const words = quotaWords(makeUsage({ real_gpus: false, gpu_quota: 1, gpus_in_use: 1, run_slots: 2 }));
    expect(words).toEqual({
      gpus: 'GPU slots 1 / 1 in use',
      slots: 'run slots 1 / 2',
      queued: '3 queued (waiting for a GPU: 2 of 2 in use)'
    });
  });

  it('says what a queued run waits for, its place and when it should start', () => {
    const queued = makeRun({
      state: RunState.Queued,
      queue_position: 2,
      queued_reason: 'a GPU: 1 of 1 in use',
      eta_seconds: 170
    });
    expect(waitingText(queued)).toBe('#2 in the queue · waits for a GPU: 1 of 1 in use · starts in ~3 min');
    expect(waitingText(makeRun({ state: RunState.Pending, queued_reason: 'Kueue admission' }))).toBe(
      'waits for Kueue admission'
    );
    expect(waitingText(makeRun())).toBe('');
  });

  it("shows the backend's preemption text as it is, with the attempt the run is on", () => {
    // the cases of tests/test_preempted_display.py::test_the_preemption_is_worded_once_with_the_attempt
    const preempted = 'preempted: the backend was stopped with --drain; resumed at step 7';
    expect(preemptedText(makeRun({ state: RunState.Queued, preempted, preemptions: 1, attempt: 2 }))).toBe(
      'preempted: the backend was stopped with --drain; resumed at step 7 · attempt 2'
    );
    expect(preemptedText(makeRun({ attempt: 2 }))).toBe('');
  });

  it('writes estimates, progress and elapsed time as describe.py does', () => {
    expect([null, 2, 42, 170, 5400].map(etaText)).toEqual(['', '~5 s', '~40 s', '~3 min', '~1.5 h']);
    expect(progressText({ step: 7, total_steps: 27, loss: 0.1 })).toBe('7 / 27');
    expect(progressText({ step: 7 })).toBe('7');
    expect(progressText({ loss: 0.1 })).toBe('');
    const run = makeRun({
      transitions: [
        { state: RunState.Queued, time: '2026-11-26T10:00:00Z', attempt: 1 },
        { state: RunState.Pending, time: '2026-11-26T10:01:00Z', attempt: 1 }
      ]
    });
    expect(runElapsed(run, Date.parse('2026-11-26T10:03:30Z'))).toBe(150);
    expect(runElapsed(makeRun(), Date.now())).toBeNull();
  });
});

describe('trainRequest', () => {
  const form: TrainForm = {
    name: ' mnist ',
    gpus: '2',
    framework: 'pytorch',
    data: ' digits ',
    sweep: 'lr=loguniform(1e-4,1e-1)\n\n  batch=[32,64]  \n',
    runs: '',
    metric: ' val_acc ',
    mode: 'max'
  };

  it('reads the form into the request the server extension takes', () => {
    expect(trainRequest(form, 'print(1)')).toEqual({
      code: 'print(1)',
      name: 'mnist',
      gpus: 2,
      framework: 'pytorch',
      data: 'digits',
      sweep: ['lr=loguniform(1e-4,1e-1)', 'batch=[32,64]'],
      runs: null,
      metric: 'val_acc',
      mode: 'max'
    });
    expect(trainRequest({ ...form, data: '', runs: '8' }, '').runs).toBe(8);
    expect(trainRequest({ ...form, metric: '  ' }, '').metric).toBeNull(); // no metric: no best run
  });

  it.each([
    [{ name: 'a/b' }, 'name'],
    [{ gpus: '-1' }, 'gpus'],
    [{ gpus: '1.5' }, 'gpus'],
    [{ gpus: '' }, 'gpus'],
    [{ runs: '0' }, 'runs'],
    [{ framework: 'cobol' }, 'framework'],
    [{ mode: 'best' }, 'mode']
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
