/**
 * Pure helpers: how the sidebar writes numbers, states and hyperparameters, draws sparklines
 * and the quota bar, and reads the "Train this cell" form. No DOM, no JupyterLab.
 */
import {
  BestRun,
  Experiment,
  FRAMEWORKS,
  MODES,
  Run,
  RunState,
  TERMINAL_STATES,
  TrainDefaults,
  TrainRequest,
  Usage
} from './model';

/** States counted as "running" in an experiment's summary. */
const ACTIVE: readonly RunState[] = [
  RunState.Pending,
  RunState.Downloading,
  RunState.Processing,
  RunState.Storing
];

/** Summary groups of an experiment's runs, in the order they are shown. */
const GROUPS: readonly [string, readonly RunState[]][] = [
  ['running', ACTIVE],
  ['queued', [RunState.Queued]],
  ['completed', [RunState.Completed]],
  ['failed', [RunState.Failed]],
  ['halted', [RunState.Halted]],
  ['stopped', [RunState.Stopped]]
];

/**
 * GPU time (or any duration) for people: `0 s`, `4.2 s`, `42 s`, `3 min 4 s`, `2.5 h` (hours from
 * one hour up, so large totals read as GPU-hours). Mirrors `wml_core.billing.format_gpu_time`.
 */
export function formatGpuTime(seconds: number): string {
  if (seconds < 0.05) {
    return '0 s';
  }
  if (seconds < 9.95) {
    return `${seconds.toFixed(1)} s`;
  }
  const whole = Math.round(seconds);
  if (whole < 3600) {
    const minutes = Math.floor(whole / 60);
    const rest = whole - minutes * 60;
    return minutes ? `${minutes} min ${rest} s` : `${rest} s`;
  }
  const hours = seconds / 3600;
  return `${hours.toFixed(hours < 99.95 ? 1 : 0)} h`;
}

/** An estimate for people: `~40 s`, `~3 min`, `~1.5 h`; empty when unknown. Mirrors `describe.eta_text`. */
export function etaText(seconds: number | null): string {
  if (seconds === null) {
    return '';
  }
  if (seconds < 60) {
    return `~${Math.max(5, Math.round(seconds / 5) * 5)} s`;
  }
  if (seconds < 3600) {
    return `~${Math.round(seconds / 60)} min`;
  }
  return `~${(seconds / 3600).toFixed(1)} h`;
}

/** A run's progress: `3 / 10` when its code declared a total, `3` with a step alone, else empty
 * (`describe.progress_text`). */
export function progressText(metrics: Record<string, number>): string {
  const step = metrics['step'];
  if (step === undefined) {
    return '';
  }
  const total = metrics['total_steps'];
  return total ? `${step} / ${total}` : `${step}`;
}

/** What a waiting run waits for and when it should start: `#2 in the queue · waits for a GPU: 1 of
 * 1 in use · starts in ~3 min`; empty for a run that does not wait (`describe.waiting_text`). */
export function waitingText(run: Run): string {
  if (run.state !== RunState.Queued && !run.queued_reason) {
    return '';
  }
  const parts = run.queue_position ? [`#${run.queue_position} in the queue`] : [];
  if (run.queued_reason) {
    parts.push(`waits for ${run.queued_reason}`);
  }
  if (run.eta_seconds !== null && run.eta_seconds !== undefined) {
    parts.push(`starts in ${etaText(run.eta_seconds)}`);
  }
  return parts.join(' · ');
}

/**
 * Why a disruption (a node drain, Kueue preemption, `backend stop --drain`) ended the run's last
 * disrupted attempt and where it resumes, in the backend's words (`run.preempted`), with the attempt
 * it is on: `preempted: ...; resumed at step 12 · attempt 2`; empty if never preempted. Mirrors
 * `describe.preempted_text`.
 */
export function preemptedText(run: Run): string {
  return run.preempted ? `${run.preempted} · attempt ${run.attempt}` : '';
}

/** Seconds since the run got its GPUs (its latest PENDING), to now or to its end; null before. */
export function runElapsed(run: Run, now: number): number | null {
  const started = [...run.transitions].reverse().find(t => t.state === RunState.Pending);
  if (!started) {
    return null;
  }
  const last = run.transitions[run.transitions.length - 1];
  const end = TERMINAL_STATES.has(run.state) ? Date.parse(last.time) : now;
  return Math.max(0, (end - Date.parse(started.time)) / 1000);
}

/** The quota's words, as admission counts: `GPUs 1 / 2 in use`, `run slots 2 / 4`, `3 queued`
 * (GPUs are "GPU slots" on a machine without GPUs). Mirrors `describe.quota_text`. */
export function quotaWords(usage: Usage): { gpus: string; slots: string; queued: string } {
  const kind = usage.real_gpus === false ? 'GPU slots' : 'GPUs';
  const slots = usage.run_slots ? `run slots ${usage.runs_in_use} / ${usage.run_slots}` : '';
  const queued = `${usage.queued_runs ?? 0} queued`;
  return {
    gpus: `${kind} ${usage.gpus_in_use} / ${usage.gpu_quota} in use`,
    slots,
    queued: usage.waiting_for ? `${queued} (waiting for ${usage.waiting_for})` : queued
  };
}

/** A metric or hyperparameter value with at most 4 significant digits. */
export function formatValue(value: unknown): string {
  if (typeof value === 'number' && !Number.isInteger(value)) {
    return String(Number(value.toPrecision(4)));
  }
  return String(value);
}

/** Hyperparameters as `lr=0.01, batch=32`. */
export function formatHparams(hparams: Record<string, unknown>): string {
  return Object.entries(hparams)
    .map(([key, value]) => `${key}=${formatValue(value)}`)
    .join(', ');
}

/** One group of an experiment's runs: how many, its label and the badge kind of its states. */
export interface CountGroup {
  /** `running`, `queued`, `completed`, `failed`, `halted` or `stopped`. */
  label: string;
  /** Runs in the group's states. */
  count: number;
  /** The CSS modifier of its states' badge (`stateKind`). */
  kind: string;
}

/** An experiment's non-empty run groups, in the order shown. */
export function countGroups(runs: Experiment['runs']): CountGroup[] {
  return GROUPS.map(([label, states]) => ({
    label,
    count: states.reduce((sum, state) => sum + (runs[state] ?? 0), 0),
    kind: stateKind(states[0])
  })).filter(group => group.count > 0);
}

/**
 * An experiment's run counts as `2 running · 3 completed · 2 failed` (empty groups left out):
 * mirrors `wml_jupyter.describe.counts_text`.
 */
export function formatCounts(runs: Experiment['runs']): string {
  return (
    countGroups(runs)
      .map(group => `${group.count} ${group.label}`)
      .join(' · ') || 'no runs'
  );
}

/** Whether there are runs and every one of them failed (`describe.all_failed`). */
export function allFailed(runs: Experiment['runs']): boolean {
  const total = Object.values(runs).reduce((sum, count) => sum + (count ?? 0), 0);
  return total > 0 && (runs[RunState.Failed] ?? 0) === total;
}

/**
 * `best abc-3 acc=0.91`; `leader abc-2 acc=0.8 at step 7 (provisional)` while no run has
 * completed; `no acc yet`; or `no metric chosen` (no metric, no best): `describe.best_text`.
 */
export function bestText(best: BestRun | null, metric: string | null): string {
  if (!metric) {
    return 'no metric chosen';
  }
  if (!best) {
    return `no ${metric} yet`;
  }
  const value = `${best.run_id} ${best.metric}=${formatValue(best.value)}`;
  if (!best.provisional) {
    return `best ${value}`;
  }
  const step = best.step === null ? '' : ` at step ${best.step}`;
  return `leader ${value}${step} (provisional)`;
}

/** Ended states whose reason a user needs (a completed run needs none). */
const EXPLAINED: readonly RunState[] = [RunState.Failed, RunState.Halted, RunState.Stopped];

/** The last non-blank line of a log tail: a traceback's last line is the error itself. */
export function lastErrorLine(lines: readonly string[]): string {
  for (let i = lines.length - 1; i >= 0; i--) {
    if (lines[i].trim()) {
      return lines[i].trim();
    }
  }
  return '';
}

/**
 * Why a run ended (empty while it lives, or when it completed): its reason and, for a failed
 * command, the last line of its traceback or error output. Mirrors `describe.why`.
 */
export function runWhy(run: Run): string {
  if (!EXPLAINED.includes(run.state)) {
    return '';
  }
  const reason = run.reason ?? '';
  const error = run.state === RunState.Failed ? lastErrorLine(run.log_tail) : '';
  if (error && !reason.includes(error)) {
    return reason ? `${error} (${reason})` : error;
  }
  return reason;
}

/** The CSS modifier of a state's badge: queued, active, success, error or halted. */
export function stateKind(state: string): string {
  if (state === RunState.Queued) {
    return 'queued';
  }
  if (state === RunState.Completed) {
    return 'success';
  }
  if (state === RunState.Failed) {
    return 'error';
  }
  if (state === RunState.Halted || state === RunState.Stopped) {
    return 'halted';
  }
  return 'active';
}

/** The `points` of an SVG polyline drawing `values` in a `width` × `height` box. */
export function sparklinePoints(values: number[], width: number, height: number): string {
  if (values.length === 0) {
    return '';
  }
  const low = Math.min(...values);
  const span = Math.max(...values) - low || 1;
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((value, i) => {
      const x = values.length > 1 ? i * step : width / 2;
      const y = height - 1 - ((value - low) / span) * (height - 2);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
}

/** Widths (percent of the bar) of GPUs in use and of queued demand, and the bar's scale. */
export interface QuotaBar {
  /** Share of the bar the GPUs in use fill. */
  inUse: number;
  /** Share the queued GPU demand fills, after the in-use part. */
  queued: number;
  /** True when in use + queued is more than the quota (the bar is scaled to the total). */
  over: boolean;
  /** Where the quota falls on the bar (100 unless `over`). */
  quotaAt: number;
  /** What the bar counts: `GPUs`, `GPU slots` (no GPU on the machine) or `run slots`. */
  unit: string;
}

/**
 * How to draw the account's quota: in use and queued, scaled to the limit or the total demand. It
 * counts GPUs, as admission does, unless the account's runs ask for none while run slots bound them:
 * then it counts runs against the run slots (a 0-GPU sweep waits for slots, not GPUs).
 */
export function quotaBar(usage: Usage): QuotaBar {
  const bySlots = usage.gpus_in_use + usage.queued_gpus === 0 && !!usage.run_slots && usage.queued_runs + usage.runs_in_use > 0;
  const [used, queued, limit] = bySlots
    ? [usage.runs_in_use, usage.queued_runs, usage.run_slots as number]
    : [usage.gpus_in_use, usage.queued_gpus, usage.gpu_quota];
  const demand = used + queued;
  const scale = Math.max(limit, demand, 1);
  return {
    inUse: (100 * used) / scale,
    queued: (100 * queued) / scale,
    over: demand > limit,
    quotaAt: (100 * limit) / scale,
    unit: bySlots ? 'run slots' : usage.real_gpus === false ? 'GPU slots' : 'GPUs'
  };
}

/** What the "Train this cell" form holds, as text (what the inputs give). */
export interface TrainForm {
  /** Experiment name. */
  name: string;
  /** GPUs per run. */
  gpus: string;
  /** Framework name. */
  framework: string;
  /** Data bucket (may be empty). */
  data: string;
  /** Sweep flags, one per line. */
  sweep: string;
  /** Number of runs (may be empty). */
  runs: string;
  /** Metric that ranks the runs (may be empty: no best run). */
  metric: string;
  /** `max` or `min`. */
  mode: string;
}

/** A problem with the form, naming the field to fix. */
export class FormError extends Error {
  /** Create a form error for `field`. */
  constructor(
    readonly field: keyof TrainForm,
    message: string
  ) {
    super(message);
    this.name = 'FormError';
  }
}

/**
 * The form's starting values: `%%wml train`'s defaults (served by `GET /wml/train`), named after
 * the notebook `name` when there is one.
 */
export function defaultForm(defaults: TrainDefaults, name = ''): TrainForm {
  return {
    name: name || defaults.name,
    gpus: String(defaults.gpus),
    framework: defaults.framework,
    data: defaults.data ?? '',
    sweep: defaults.sweep.join('\n'),
    runs: defaults.runs === null ? '' : String(defaults.runs),
    metric: defaults.metric ?? '',
    mode: defaults.mode
  };
}

/** The request to submit `code` with the form's options; `FormError` if a field is wrong. */
export function trainRequest(form: TrainForm, code: string): TrainRequest {
  const name = form.name.trim();
  if (!/^[A-Za-z0-9 ._-]{1,100}$/.test(name)) {
    throw new FormError('name', 'Name: letters, digits, space, dot, dash or underscore.');
  }
  if (!FRAMEWORKS.includes(form.framework)) {
    throw new FormError('framework', `Framework: one of ${FRAMEWORKS.join(', ')}.`);
  }
  if (!MODES.includes(form.mode)) {
    throw new FormError('mode', `Mode: ${MODES.join(' or ')}.`);
  }
  return {
    code,
    name,
    gpus: wholeNumber(form.gpus, 'gpus', 0),
    framework: form.framework,
    data: form.data.trim() || null,
    sweep: form.sweep
      .split('\n')
      .map(line => line.trim())
      .filter(Boolean),
    runs: form.runs.trim() ? wholeNumber(form.runs, 'runs', 1) : null,
    metric: form.metric.trim() || null,
    mode: form.mode
  };
}

function wholeNumber(text: string, field: keyof TrainForm, min: number): number {
  const value = Number(text.trim());
  if (!text.trim() || !Number.isInteger(value) || value < min) {
    throw new FormError(field, `${field === 'gpus' ? 'GPUs' : 'Runs'}: a whole number ≥ ${min}.`);
  }
  return value;
}
