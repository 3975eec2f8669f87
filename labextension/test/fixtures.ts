/** Wire-model objects for tests, as the server extension would send them. */
import { Experiment, ExperimentState, Run, RunState, Snapshot, Usage } from '../src/model';

/** A run with every field set; `fields` override. */
export function makeRun(fields: Partial<Run> = {}): Run {
  return {
    id: 'abc123-1',
    experiment_id: 'abc123',
    account: 'local',
    name: 'digits-1',
    state: RunState.Processing,
    hparams: { lr: 0.012345, batch: 32 },
    gpus: 1,
    learners: 1,
    gpu_seconds: 12.5,
    gpu_wait_seconds: 0,
    waiting_since: null,
    exit_code: null,
    reason: null,
    preemptions: 0,
    preempted: null,
    log_tail: [],
    metrics: { step: 3, val_acc: 0.91 },
    transitions: [{ state: RunState.Queued, time: '2026-11-26T10:00:00Z', attempt: 1 }],
    results: null,
    queue_position: null,
    queued_reason: null,
    eta_seconds: null,
    attempt: 1,
    created: '2026-11-26T10:00:00Z',
    provenance: {},
    ...fields
  };
}

/** An experiment; `fields` override. */
export function makeExperiment(fields: Partial<Experiment> = {}): Experiment {
  return {
    id: 'abc123',
    account: 'local',
    name: 'digits',
    state: ExperimentState.Running,
    runs: { PROCESSING: 2, QUEUED: 1, COMPLETED: 3 },
    best: { run_id: 'abc123-2', metric: 'val_acc', value: 0.953, step: 27, provisional: false },
    metric: 'val_acc',
    mode: 'max',
    gpu_seconds: 120,
    gpu_seconds_saved: 0,
    eta_seconds: null,
    created: '2026-11-26T10:00:00Z',
    definition: {},
    ...fields
  };
}

/** Account usage; `fields` override. */
export function makeUsage(fields: Partial<Usage> = {}): Usage {
  return {
    account: 'local',
    gpu_quota: 2,
    gpus_in_use: 1,
    queued_gpus: 3,
    gpu_seconds: 500,
    real_gpus: true,
    run_slots: 4,
    runs_in_use: 1,
    queued_runs: 3,
    waiting_for: 'a GPU: 2 of 2 in use',
    experiments: [],
    ...fields
  };
}

/** A snapshot with one experiment and its runs expanded. */
export function makeSnapshot(): Snapshot {
  return {
    backend: 'http://127.0.0.1:8642',
    usage: makeUsage(),
    experiments: { total: 1, offset: 0, items: [makeExperiment()] },
    runs: {
      abc123: {
        total: 1,
        offset: 0,
        items: [makeRun()],
        metric: 'val_acc',
        sparklines: { 'abc123-1': [0.5, 0.8, 0.91] }
      }
    },
    page_size: 50
  };
}
