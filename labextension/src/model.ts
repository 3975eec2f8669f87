/**
 * The wire model, mirrored field by field from Python.
 *
 * `Run`, `Experiment`, `Usage`, `MetricPoint`, `LogChunk` and their parts mirror
 * `backend/core/wml_core/models.py`; `ExperimentPage` and `RunPage` mirror `wml_core/pages.py` (the
 * backend's `GET /v1/summary`); `Snapshot` (that summary, with the backend and page size),
 * `TrainDefaults` and `TrainRequest` mirror `wml_jupyter/serverext/wire.py`. A field is added in
 * Python first.
 * Times are ISO 8601 strings (UTC), as pydantic writes them.
 */

/** A run's lifecycle state, in order (FfDL's): `wml_core.states.RunState`. */
export enum RunState {
  /** Accepted, waiting for quota or capacity. */
  Queued = 'QUEUED',
  /** GPUs assigned, runner starting. */
  Pending = 'PENDING',
  /** Code and data to the run. */
  Downloading = 'DOWNLOADING',
  /** The training command runs. */
  Processing = 'PROCESSING',
  /** Results to object storage. */
  Storing = 'STORING',
  Completed = 'COMPLETED',
  Failed = 'FAILED',
  /** Cancelled by the user. */
  Halted = 'HALTED',
  /** Stopped early by the search. */
  Stopped = 'STOPPED'
}

/** One word for an experiment: `wml_core.states.ExperimentState`. */
export enum ExperimentState {
  /** Every live run waits. */
  Queued = 'QUEUED',
  /** Some run lives. */
  Running = 'RUNNING',
  Completed = 'COMPLETED',
  Failed = 'FAILED',
  Halted = 'HALTED'
}

/** Every run state, in lifecycle order. */
export const RUN_STATES: readonly RunState[] = Object.values(RunState);

/** States a run never leaves. */
export const TERMINAL_STATES: ReadonlySet<string> = new Set<string>([
  RunState.Completed,
  RunState.Failed,
  RunState.Halted,
  RunState.Stopped
]);

/** A run entered `state` at `time` (models.Transition). */
export interface Transition {
  /** The state entered. */
  state: RunState;
  /** When (ISO 8601, UTC). */
  time: string;
  /** Which attempt of the run (retries count up from 1). */
  attempt: number;
}

/** One training run: one hyperparameter assignment of an experiment (models.Run). */
export interface Run {
  /** Run id, `<experiment id>-<n>`. */
  id: string;
  /** The experiment it belongs to. */
  experiment_id: string;
  /** The account that owns it. */
  account: string;
  /** Display name. */
  name: string;
  /** Current state. */
  state: RunState;
  /** This run's hyperparameter assignment. */
  hparams: Record<string, unknown>;
  /** GPUs per learner. */
  gpus: number;
  /** Cooperating learners (processes or pods). */
  learners: number;
  /** GPU time billed so far (gpus × seconds from PENDING to leaving STORING, less gpu_wait_seconds). */
  gpu_seconds: number;
  /** Seconds its attempts waited for the cluster to bind their GPUs (Kueue, a busy cluster): not billed. */
  gpu_wait_seconds: number;
  /** Since when (ISO 8601) the current attempt waits for the cluster to bind its GPUs, if it does. */
  waiting_since: string | null;
  /** Exit code of the training command, once it ended. */
  exit_code: number | null;
  /** Why it failed or was stopped. */
  reason: string | null;
  /** Attempts that a disruption ended (a node drain, Kueue preemption...): not retries. */
  preemptions: number;
  /** Why its last disrupted attempt ended and where it resumed (`preempted: ...; resumed at step N`). */
  preempted: string | null;
  /** The last lines of the training log, kept when a run fails. */
  log_tail: string[];
  /** Latest value of each metric the run logged (plus `step`, and `total_steps` when its code declared one). */
  metrics: Record<string, number>;
  /** Every state change with its time. */
  transitions: Transition[];
  /** Where its outputs are: `bucket/training-<id>/`. */
  results: string | null;
  /** 1-based place in its account's queue while QUEUED. */
  queue_position: number | null;
  /** What it waits for while QUEUED (`a GPU: 1 of 1 in use`, `a run slot: 2 of 2 busy`), or while
   * started but not yet placed by its cluster (`Kueue admission`). */
  queued_reason: string | null;
  /** While QUEUED: seconds until it should start (null while unknown). */
  eta_seconds: number | null;
  /** Current attempt (1 unless retried). */
  attempt: number;
  /** When it was created (ISO 8601, UTC). */
  created: string;
  /** What reproduces the run (filled when one run is shown): code hash, data checksums, framework, seed. */
  provenance: Record<string, unknown>;
}

/** The experiment's best run by its metric and mode (models.BestRun, judged by `wml_core.ranking`). */
export interface BestRun {
  /** The best run's id. */
  run_id: string;
  /** The metric compared. */
  metric: string;
  /** Its latest value in that run. */
  value: number;
  /** The run's latest step when the value was read, if it logs steps. */
  step: number | null;
  /** No run has completed yet: this is the leader among live runs, and its value may change. */
  provisional: boolean;
}

/** A definition plus a hyperparameter search: N runs (models.Experiment). */
export interface Experiment {
  /** Experiment id. */
  id: string;
  /** The account that owns it. */
  account: string;
  /** The manifest's name. */
  name: string;
  /** A summary: QUEUED, RUNNING, COMPLETED, FAILED (some failed) or HALTED. */
  state: ExperimentState;
  /** Number of runs in each state. */
  runs: Partial<Record<RunState, number>>;
  /** The best completed run by the metric (provisional: the leading live run until one completes); null without a metric. */
  best: BestRun | null;
  /** The metric the search optimises, if any. */
  metric: string | null;
  /** `max` or `min`. */
  mode: string;
  /** GPU time of all its runs. */
  gpu_seconds: number;
  /** GPU time the early-stopped runs did not use, estimated from the completed runs' step times. */
  gpu_seconds_saved: number;
  /** Seconds until its last run should end (null while unknown, and once it has ended). */
  eta_seconds: number | null;
  /** When it was submitted (ISO 8601, UTC). */
  created: string;
  /** The validated definition, credentials redacted. */
  definition: Record<string, unknown>;
}

/** One `run.log()` call (models.MetricPoint). */
export interface MetricPoint {
  /** Sequence number in the run. */
  seq: number;
  /** Unix time. */
  time: number;
  /** The step it was logged at, if given. */
  step: number | null;
  /** Metric name → value. */
  values: Record<string, number>;
}

/** Part of a run's training log from byte `offset` (models.LogChunk). */
export interface LogChunk {
  /** Where this chunk starts. */
  offset: number;
  /** Where to ask next. */
  next_offset: number;
  /** The text. */
  data: string;
  /** Which learner's log. */
  learner: number;
  /** True once the run has ended and the log is whole. */
  complete: boolean;
}

/** GPU time of one experiment (models.ExperimentUsage). */
export interface ExperimentUsage {
  /** Experiment id. */
  id: string;
  /** Experiment name. */
  name: string;
  /** Its GPU time. */
  gpu_seconds: number;
}

/** An account's quota, what it holds now and the GPU time it used (models.Usage). */
export interface Usage {
  /** Account name. */
  account: string;
  /** GPUs its runs may hold at once. */
  gpu_quota: number;
  /** GPUs its runs hold now. */
  gpus_in_use: number;
  /** GPUs its queued runs wait for. */
  queued_gpus: number;
  /** GPU time used, all experiments. */
  gpu_seconds: number;
  /** False when the GPUs are counted slots on a machine without GPUs (shown as "GPU slots"). */
  real_gpus: boolean;
  /** Most runs it may run at once, as admission counts them. */
  run_slots: number | null;
  /** Runs it runs now. */
  runs_in_use: number;
  /** Runs it has queued. */
  queued_runs: number;
  /** What the first of its queued runs waits for; null with none queued. */
  waiting_for: string | null;
  /** GPU time per experiment. */
  experiments: ExperimentUsage[];
}

/** One page of the account's experiments, newest first (pages.ExperimentPage). */
export interface ExperimentPage {
  /** How many experiments there are. */
  total: number;
  /** Index of the first item. */
  offset: number;
  /** This page's experiments. */
  items: Experiment[];
}

/** One page of an experiment's runs with sparklines, computed by the backend (pages.RunPage). */
export interface RunPage {
  /** How many runs the experiment has. */
  total: number;
  /** Index of the first item. */
  offset: number;
  /** This page's runs. */
  items: Run[];
  /** The metric shown as "latest metric" and sparkline. */
  metric: string | null;
  /** Run id → the metric's values over time (downsampled), oldest first. */
  sparklines: Record<string, number[]>;
}

/** Everything the sidebar shows at once (wire.Snapshot). */
export interface Snapshot {
  /** The backend URL the server extension talks to. */
  backend: string;
  /** The account's quota and use. */
  usage: Usage;
  /** A page of experiments. */
  experiments: ExperimentPage;
  /** Expanded experiment id → a page of its runs. */
  runs: Record<string, RunPage>;
  /** Items per page. */
  page_size: number;
}

/**
 * The "Train this cell" dialog's options with `%%wml train`'s defaults (wire.TrainDefaults, from
 * `wml_core.train_options`): what `GET /wml/train` answers, so the dialog has no defaults of its own.
 */
export interface TrainDefaults {
  /** Experiment name. */
  name: string;
  /** GPUs per learner. */
  gpus: number;
  /** The manifest's `framework.name`. */
  framework: string;
  /** Training data bucket in the configured store, if any. */
  data: string | null;
  /** Hyperparameter flags, e.g. `lr=loguniform(1e-4,1e-1)`. */
  sweep: string[];
  /** Number of runs of the search, if set. */
  runs: number | null;
  /** The metric the search compares runs by, if any. */
  metric: string | null;
  /** Whether a larger (`max`) or smaller (`min`) metric is better. */
  mode: string;
}

/** A notebook cell to submit as `%%wml train` would, with the dialog's options (wire.TrainRequest). */
export interface TrainRequest extends TrainDefaults {
  /** The cell's code: becomes `train.py`. */
  code: string;
}

/** Frameworks the "Train this cell" dialog offers: the manifest's `framework.name` values in DESIGN.md. */
export const FRAMEWORKS: readonly string[] = [
  'pytorch',
  'tensorflow',
  'keras',
  'horovod',
  'caffe',
  'caffe2',
  'h2o3',
  'custom'
];

/** The `--mode` choices of `%%wml train` (`wml_core.train_options`). */
export const MODES: readonly string[] = ['max', 'min'];

/** Whether a run has ended for good. */
export function isTerminal(state: string): boolean {
  return TERMINAL_STATES.has(state);
}
