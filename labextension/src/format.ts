/**
 * Pure helpers: how the sidebar writes numbers, states and hyperparameters, draws sparklines
 * and the quota bar, and reads the "Train this cell" form. No DOM, no JupyterLab.
 */
import { Experiment, FRAMEWORKS, RunState, TrainRequest, Usage } from './model';

/** States counted as "running" in an experiment's summary. */
const ACTIVE: readonly RunState[] = ['PENDING', 'DOWNLOADING', 'PROCESSING', 'STORING'];

/** Summary groups of an experiment's runs, in the order they are shown. */
const GROUPS: readonly [string, readonly RunState[]][] = [
  ['running', ACTIVE],
  ['queued', ['QUEUED']],
  ['completed', ['COMPLETED']],
  ['failed', ['FAILED']],
  ['halted', ['HALTED']],
  ['stopped', ['STOPPED']]
];

/** GPU time for people: `0 s`, `42 s`, `3 min 4 s`, `2.5 h`. */
export function formatGpuTime(seconds: number): string {
  if (seconds < 60) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 3600) {
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
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

/** An experiment's run counts as `2 running · 3 queued · 5 completed` (empty groups left out). */
export function formatCounts(runs: Experiment['runs']): string {
  const parts: string[] = [];
  for (const [label, states] of GROUPS) {
    const count = states.reduce((sum, state) => sum + (runs[state] ?? 0), 0);
    if (count) {
      parts.push(`${count} ${label}`);
    }
  }
  return parts.join(' · ') || 'no runs';
}

/** The CSS modifier of a state's badge: queued, active, success, error or halted. */
export function stateKind(state: string): string {
  if (state === 'QUEUED') {
    return 'queued';
  }
  if (state === 'COMPLETED') {
    return 'success';
  }
  if (state === 'FAILED') {
    return 'error';
  }
  if (state === 'HALTED' || state === 'STOPPED') {
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
}

/** How to draw the account's quota: in use and queued, scaled to the quota or the total demand. */
export function quotaBar(usage: Usage): QuotaBar {
  const demand = usage.gpus_in_use + usage.queued_gpus;
  const scale = Math.max(usage.gpu_quota, demand, 1);
  return {
    inUse: (100 * usage.gpus_in_use) / scale,
    queued: (100 * usage.queued_gpus) / scale,
    over: demand > usage.gpu_quota,
    quotaAt: (100 * usage.gpu_quota) / scale
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

/** The request to submit `code` with the form's options; `FormError` if a field is wrong. */
export function trainRequest(form: TrainForm, code: string): TrainRequest {
  const name = form.name.trim();
  if (!/^[A-Za-z0-9 ._-]{1,100}$/.test(name)) {
    throw new FormError('name', 'Name: letters, digits, space, dot, dash or underscore.');
  }
  if (!FRAMEWORKS.includes(form.framework)) {
    throw new FormError('framework', `Framework: one of ${FRAMEWORKS.join(', ')}.`);
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
    runs: form.runs.trim() ? wholeNumber(form.runs, 'runs', 1) : null
  };
}

function wholeNumber(text: string, field: keyof TrainForm, min: number): number {
  const value = Number(text.trim());
  if (!text.trim() || !Number.isInteger(value) || value < min) {
    throw new FormError(field, `${field === 'gpus' ? 'GPUs' : 'Runs'}: a whole number ≥ ${min}.`);
  }
  return value;
}
