/**
 * The sidebar's state: the latest snapshot or error, and which pages are shown.
 *
 * It knows nothing of widgets or polling: `refresh()` fetches one snapshot (rejecting on
 * failure, so a poll can back off) and `changed` tells the view to draw again.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { SnapshotQuery, WmlApi, WmlApiError } from './api';
import { ExperimentState, Snapshot } from './model';

/** The calls the sidebar state needs from the request layer. */
export type SidebarApi = Pick<WmlApi, 'snapshot'>;

/** What the user should read when a refresh failed, and what to do about it. */
export interface ErrorView {
  /** One line saying what went wrong. */
  message: string;
  /** What to try, if anything is known. */
  hint: string;
}

/** Experiment summary states while some of its runs live. */
const LIVE_EXPERIMENT_STATES = new Set<string>([ExperimentState.Queued, ExperimentState.Running]);

/** Hints for the error codes a user can act on. */
const HINTS: Record<string, string> = {
  unavailable: 'Is the WML backend running? Check `wml backend status` or the backend URL in `wml config show`.',
  unauthorized: 'The backend rejected the token: set the right one with `wml config set token …`.',
  network: 'The Jupyter server did not answer: is it still running?',
  forbidden: 'Reload the page and log in to Jupyter again.'
};

/** The message and hint to show for a failed refresh. */
export function errorView(error: unknown): ErrorView {
  if (error instanceof WmlApiError) {
    return { message: error.message, hint: HINTS[error.code] ?? '' };
  }
  return { message: String(error), hint: '' };
}

/** Sidebar state: snapshot, error, page offsets and expanded experiments. */
export class SidebarModel {
  /** Create the state for `api`. */
  constructor(private readonly api: SidebarApi) {}

  /** The latest snapshot (kept while a later refresh fails, so the panel never goes blank). */
  get snapshot(): Snapshot | null {
    return this._snapshot;
  }

  /** The last refresh's error, until one succeeds. */
  get error(): ErrorView | null {
    return this._error;
  }

  /** Emitted whenever anything shown changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The pages to ask for. */
  get query(): SnapshotQuery {
    return { offset: this._offset, expanded: Object.fromEntries(this._expanded) };
  }

  /** Whether anything may change soon: runs queued or running (then the panel refreshes often). */
  get isLive(): boolean {
    const snapshot = this._snapshot;
    if (!snapshot) {
      return true;
    }
    const { usage, experiments } = snapshot;
    return (
      usage.gpus_in_use + usage.queued_gpus > 0 ||
      experiments.items.some(e => LIVE_EXPERIMENT_STATES.has(e.state))
    );
  }

  /** Whether an experiment's runs are shown. */
  isExpanded(experimentId: string): boolean {
    return this._expanded.has(experimentId);
  }

  /** Show or hide an experiment's runs (from their first page). */
  toggle(experimentId: string): void {
    if (!this._expanded.delete(experimentId)) {
      this._expanded.set(experimentId, 0);
    }
    this._changed.emit();
  }

  /** Show the experiments from `offset`. */
  setOffset(offset: number): void {
    this._offset = Math.max(0, offset);
    this._changed.emit();
  }

  /** Show an expanded experiment's runs from `offset`. */
  setRunsOffset(experimentId: string, offset: number): void {
    this._expanded.set(experimentId, Math.max(0, offset));
    this._changed.emit();
  }

  /** Fetch a snapshot for the current pages; rejects (after recording the error) on failure. */
  async refresh(): Promise<void> {
    const ticket = ++this._requested;
    try {
      const snapshot = await this.api.snapshot(this.query);
      if (ticket >= this._applied) {
        this._applied = ticket;
        this._snapshot = snapshot;
        this._error = null;
        this._changed.emit();
      }
    } catch (error) {
      if (ticket >= this._applied) {
        this._applied = ticket;
        this._error = errorView(error);
        this._changed.emit();
      }
      throw error;
    }
  }

  private _snapshot: Snapshot | null = null;
  private _error: ErrorView | null = null;
  private _offset = 0;
  private _expanded = new Map<string, number>();
  private _requested = 0;
  private _applied = 0;
  private _changed = new Signal<this, void>(this);
}
