/**
 * The sidebar view: account and GPU quota, experiments, and the runs of expanded experiments.
 *
 * `SidebarWidget` refreshes when the event stream (`EventFeed`) says something changed, polls
 * the server extension only while the stream is down (backing off on errors, standing by while
 * the panel is hidden), and draws `SidebarModel` with the React components below.
 */
import {
  caretDownIcon,
  caretRightIcon,
  copyIcon,
  downloadIcon,
  LabIcon,
  listIcon,
  addBelowIcon,
  ReactWidget,
  refreshIcon,
  stopIcon
} from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import {
  allFailed,
  bestText,
  countGroups,
  formatCounts,
  formatGpuTime,
  formatHparams,
  formatValue,
  etaText,
  preemptedText,
  progressText,
  quotaBar,
  quotaWords,
  runElapsed,
  runWhy,
  waitingText,
  sparklinePoints,
  stateKind
} from './format';
import { EventFeed } from './events';
import { FreshPoll } from './freshpoll';
import { wmlIcon } from './icons';
import { Experiment, isTerminal, Run, RunPage, Snapshot, Usage } from './model';
import { SidebarModel } from './state';

/** What the user can do from the sidebar (commands of the extension, run by the plugin). */
export interface SidebarActions {
  /** Cancel a run, after confirming. */
  cancelRun(run: Run): void;
  /** Cancel an experiment's live runs, after confirming. */
  cancelExperiment(experiment: Experiment): void;
  /** Open a run's log in a main-area tab. */
  openLogs(run: Run): void;
  /** Download a run's results as a zip. */
  download(run: Run): void;
  /** Copy a run id to the clipboard. */
  copyId(run: Run): void;
  /** Insert `%wml watch EXP` in the current notebook. */
  insertWatch(experiment: Experiment): void;
}

/** Milliseconds between refreshes while runs are queued or running; errors back off up to `POLL_MAX_MS`. */
export const POLL_INTERVAL_MS = 2000;
/** Milliseconds between refreshes while nothing is queued or running. */
export const IDLE_INTERVAL_MS = 5000;
/** Longest wait between refreshes while the server extension or backend fails. */
export const POLL_MAX_MS = 30000;
/** Milliseconds between refreshes while the event stream is open: its events ask for the others. */
export const STREAMED_INTERVAL_MS = POLL_MAX_MS;

/** The left-sidebar panel, tab title `WML`. */
export class SidebarWidget extends ReactWidget {
  /** Create the panel drawing `model` and offering `actions`. */
  constructor(
    readonly model: SidebarModel,
    private readonly actions: SidebarActions,
    private readonly feed?: EventFeed
  ) {
    super();
    this.id = 'wml-sidebar';
    this.addClass('jp-wml-Sidebar');
    this.title.icon = wmlIcon;
    this.title.label = 'WML';
    this.title.caption = 'WML training runs';
    this.poll = new FreshPoll({
      fetch: () => this.model.refresh(),
      frequency: { interval: POLL_INTERVAL_MS, backoff: true, max: POLL_MAX_MS },
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: 'wml-jupyter:sidebar'
    });
    this.model.changed.connect(this.onModelChanged, this);
    if (feed) {
      feed.changed.connect(() => void this.refresh(), this);
      feed.connectedChanged.connect(this.onConnectedChanged, this);
      void feed.start();
    }
  }

  /** The poll that keeps the panel live. */
  readonly poll: FreshPoll;

  /** Refresh now (the Retry button, and after every action). */
  refresh(): Promise<void> {
    return this.poll.refresh();
  }

  /** Stop polling. */
  dispose(): void {
    this.feed?.dispose();
    this.poll.dispose();
    super.dispose();
  }

  private onModelChanged(): void {
    const polled = this.model.isLive ? POLL_INTERVAL_MS : IDLE_INTERVAL_MS;
    const interval = this.feed?.connected ? STREAMED_INTERVAL_MS : polled;
    this.poll.frequency = { interval, backoff: true, max: POLL_MAX_MS };
    this.update();
  }

  /** The stream opened or dropped: poll as often as that calls for, and on a drop look at once
   *  (the backend may be gone; the next poll would come only at the streamed interval). */
  private onConnectedChanged(_: EventFeed, connected: boolean): void {
    this.onModelChanged();
    if (!connected) {
      void this.refresh();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  /** Draw the model; page changes and expansions ask for a new snapshot at once. */
  protected render(): JSX.Element {
    return <Sidebar model={this.model} actions={this.actions} refresh={() => void this.refresh()} />;
  }
}

interface ViewProps {
  model: SidebarModel;
  actions: SidebarActions;
  refresh: () => void;
}

function Sidebar(props: ViewProps): JSX.Element {
  const { snapshot, error } = props.model;
  return (
    <div className="jp-wml-Sidebar-content">
      <header className="jp-wml-header">
        <h2 className="jp-wml-title">WML</h2>
        <IconButton icon={refreshIcon} title="Refresh" onClick={props.refresh} />
      </header>
      {error && <ErrorBox message={error.message} hint={error.hint} retry={props.refresh} />}
      {snapshot ? <Content {...props} snapshot={snapshot} /> : !error && <Loading />}
    </div>
  );
}

function Loading(): JSX.Element {
  return <div className="jp-wml-empty">Loading experiments…</div>;
}

function ErrorBox(props: { message: string; hint: string; retry: () => void }): JSX.Element {
  return (
    <div className="jp-wml-error" role="alert">
      <div className="jp-wml-error-message">{props.message}</div>
      {props.hint && <div className="jp-wml-error-hint">{props.hint}</div>}
      <button className="jp-Button jp-mod-styled jp-mod-accept jp-wml-retry" onClick={props.retry}>
        Retry
      </button>
    </div>
  );
}

function Content(props: ViewProps & { snapshot: Snapshot }): JSX.Element {
  const { snapshot, model } = props;
  const page = snapshot.experiments;
  const turn = (offset: number) => {
    model.setOffset(offset);
    props.refresh();
  };
  return (
    <>
      <Account usage={snapshot.usage} backend={snapshot.backend} />
      <div className="jp-wml-section-title">Experiments</div>
      {page.total === 0 && (
        <div className="jp-wml-empty">No experiments yet: run a cell with %%wml train.</div>
      )}
      <ul className="jp-wml-experiments">
        {page.items.map(experiment => (
          <ExperimentItem key={experiment.id} {...props} experiment={experiment} />
        ))}
      </ul>
      <Pager total={page.total} offset={page.offset} size={snapshot.page_size} turn={turn} />
    </>
  );
}

function Account(props: { usage: Usage; backend: string }): JSX.Element {
  const { usage } = props;
  const bar = quotaBar(usage);
  const words = quotaWords(usage);
  return (
    <section className="jp-wml-account" title={`Backend: ${props.backend}`}>
      <div className="jp-wml-account-line">
        <span className="jp-wml-account-name">{usage.account}</span>
        <span className="jp-wml-muted">GPU time {formatGpuTime(usage.gpu_seconds)}</span>
      </div>
      <div
        className={`jp-wml-quota${bar.over ? ' jp-mod-over' : ''}`}
        role="meter"
        aria-label={`${bar.unit} quota`}
        aria-valuemin={0}
        aria-valuemax={bar.unit === 'run slots' ? usage.run_slots ?? 0 : usage.gpu_quota}
        aria-valuenow={bar.unit === 'run slots' ? usage.runs_in_use : usage.gpus_in_use}
      >
        <div className="jp-wml-quota-used" style={{ width: `${bar.inUse}%` }} />
        <div className="jp-wml-quota-queued" style={{ width: `${bar.queued}%` }} />
        {bar.over && (
          <div className="jp-wml-quota-mark" style={{ left: `${bar.quotaAt}%` }} title="quota" />
        )}
      </div>
      <div className="jp-wml-account-line jp-wml-quota-text">
        <span>{words.gpus}</span>
        {words.slots && <span>{words.slots}</span>}
        <span
          className={usage.queued_runs ? 'jp-wml-queued-text' : 'jp-wml-muted'}
          title={usage.waiting_for ? `The first queued run waits for ${usage.waiting_for}` : undefined}
        >
          {words.queued}
        </span>
      </div>
    </section>
  );
}

function ExperimentItem(props: ViewProps & { experiment: Experiment; snapshot: Snapshot }): JSX.Element {
  const { experiment, model, actions } = props;
  const expanded = model.isExpanded(experiment.id);
  const live = !isTerminal(experiment.state);
  const toggle = () => {
    model.toggle(experiment.id);
    props.refresh();
  };
  const page = props.snapshot.runs[experiment.id];
  return (
    <li className="jp-wml-experiment" data-experiment-id={experiment.id}>
      <div className="jp-wml-row jp-wml-experiment-row">
        <button
          className="jp-wml-expander"
          aria-expanded={expanded}
          title={`${expanded ? 'Hide' : 'Show'} the runs of ${experiment.name}`}
          onClick={toggle}
        >
          <LabIcon.resolveReact icon={expanded ? caretDownIcon : caretRightIcon} tag="span" />
          <span className="jp-wml-experiment-name" title={experiment.name}>
            {experiment.name}
          </span>
        </button>
        {live && <StateBadge state={experiment.state} />}
        <IconButton
          icon={addBelowIcon}
          title={`Insert %wml watch ${experiment.id} in the notebook`}
          onClick={() => actions.insertWatch(experiment)}
        />
        <IconButton
          icon={stopIcon}
          title="Cancel experiment"
          disabled={!live}
          onClick={() => actions.cancelExperiment(experiment)}
        />
      </div>
      <div className="jp-wml-row jp-wml-detail">
        <span className="jp-wml-id">{experiment.id}</span>
        <StateCounts runs={experiment.runs} />
        {live && experiment.eta_seconds !== null && experiment.eta_seconds !== undefined && (
          <span className="jp-wml-eta jp-wml-muted" title="When its last run should end">
            {' '}
            · done in {etaText(experiment.eta_seconds)}
          </span>
        )}
      </div>
      <div className="jp-wml-row jp-wml-detail">
        <Leader experiment={experiment} />
        <span className="jp-wml-spacer" />
        <span className="jp-wml-num" title="GPU time (and what early stopping saved)">
          GPU {formatGpuTime(experiment.gpu_seconds)}
          {experiment.gpu_seconds_saved > 0 && `, saved ${formatGpuTime(experiment.gpu_seconds_saved)}`}
        </span>
      </div>
      {expanded && page && <RunList {...props} page={page} />}
      {expanded && !page && <div className="jp-wml-empty">Loading runs…</div>}
    </li>
  );
}

/** The runs counted by state, each group in its state's colour: `3 completed · 2 failed`. */
function StateCounts({ runs }: { runs: Experiment['runs'] }): JSX.Element {
  const groups = countGroups(runs);
  return (
    <span className="jp-wml-counts" title={formatCounts(runs)}>
      {groups.length === 0 && 'no runs'}
      {groups.map((group, i) => (
        <React.Fragment key={group.label}>
          {i > 0 && ' · '}
          <span className={`jp-wml-count jp-wml-count-${group.kind}`}>
            {group.count} {group.label}
          </span>
        </React.Fragment>
      ))}
    </span>
  );
}

/** The best run, the provisional leader, or why there is none (no metric, every run failed). */
function Leader({ experiment }: { experiment: Experiment }): JSX.Element {
  const ended = isTerminal(experiment.state);
  const text =
    ended && allFailed(experiment.runs) ? 'every run failed' : bestText(experiment.best, experiment.metric);
  const kind = experiment.best ? (experiment.best.provisional ? ' jp-wml-provisional' : ' jp-wml-best') : '';
  return (
    <span className={`jp-wml-leader${kind}`} title={text}>
      {text}
    </span>
  );
}

function RunList(
  props: ViewProps & { experiment: Experiment; page: RunPage; snapshot: Snapshot }
): JSX.Element {
  const { page, experiment, model } = props;
  const turn = (offset: number) => {
    model.setRunsOffset(experiment.id, offset);
    props.refresh();
  };
  return (
    <div className="jp-wml-runs">
      <ul>
        {page.items.map(run => (
          <RunItem
            key={run.id}
            run={run}
            metric={page.metric}
            sparkline={page.sparklines[run.id] ?? []}
            actions={props.actions}
          />
        ))}
      </ul>
      <Pager total={page.total} offset={page.offset} size={props.snapshot.page_size} turn={turn} />
    </div>
  );
}

interface RunItemProps {
  run: Run;
  metric: string | null;
  sparkline: number[];
  actions: SidebarActions;
}

function RunItem({ run, metric, sparkline, actions }: RunItemProps): JSX.Element {
  const value = metric ? run.metrics[metric] : undefined;
  const why = runWhy(run) || waitingText(run);
  const preempted = preemptedText(run);
  const progress = progressText(run.metrics);
  const elapsed = runElapsed(run, Date.now());
  return (
    <li className="jp-wml-run" data-run-id={run.id} data-state={run.state}>
      <div className="jp-wml-row">
        <StateBadge state={run.state} />
        {run.queue_position !== null && (
          <span className="jp-wml-queue" title="Place in the queue">
            #{run.queue_position}
          </span>
        )}
        {progress && (
          <span className="jp-wml-num jp-wml-progress" title="Step (of the total its code declared)">
            step {progress}
          </span>
        )}
        <span className="jp-wml-spacer" />
        <IconButton icon={listIcon} title="Open logs" onClick={() => actions.openLogs(run)} />
        <IconButton
          icon={downloadIcon}
          title="Download results"
          disabled={!isTerminal(run.state)}
          onClick={() => actions.download(run)}
        />
        <IconButton icon={copyIcon} title="Copy run id" onClick={() => actions.copyId(run)} />
        <IconButton
          icon={stopIcon}
          title="Cancel run"
          disabled={isTerminal(run.state)}
          onClick={() => actions.cancelRun(run)}
        />
      </div>
      <div className="jp-wml-row jp-wml-detail">
        <span className="jp-wml-id jp-wml-run-id" title={run.id}>
          {run.id}
        </span>
        <span className="jp-wml-hparams" title={formatHparams(run.hparams)}>
          {formatHparams(run.hparams) || 'no hyperparameters'}
        </span>
      </div>
      <div className="jp-wml-row jp-wml-detail">
        {metric && value !== undefined ? (
          <span className="jp-wml-metric jp-wml-num">
            {metric} {formatValue(value)}
          </span>
        ) : (
          <span className="jp-wml-muted">no metrics yet</span>
        )}
        <Sparkline values={sparkline} />
        <span className="jp-wml-spacer" />
        {elapsed !== null && (
          <span className="jp-wml-num jp-wml-elapsed" title="Elapsed since it got its GPUs">
            {formatGpuTime(elapsed)}
          </span>
        )}
        <span className="jp-wml-num" title="GPU time">
          GPU {formatGpuTime(run.gpu_seconds)}
        </span>
      </div>
      {preempted && (
        <div className="jp-wml-reason jp-wml-preempted" title={preempted}>
          {preempted}
        </div>
      )}
      {why && (
        <div
          className={`jp-wml-reason jp-wml-reason-${stateKind(run.state)}`}
          title={run.log_tail.join('\n') || why}
        >
          {why}
        </div>
      )}
    </li>
  );
}

/** Width and height of a run's sparkline, in pixels. */
const SPARK_W = 64;
const SPARK_H = 16;

function Sparkline({ values }: { values: number[] }): JSX.Element | null {
  if (values.length < 2) {
    return null;
  }
  return (
    <svg className="jp-wml-sparkline" width={SPARK_W} height={SPARK_H} aria-hidden="true">
      <polyline points={sparklinePoints(values, SPARK_W, SPARK_H)} />
    </svg>
  );
}

function StateBadge({ state }: { state: string }): JSX.Element {
  return <span className={`jp-wml-badge jp-wml-badge-${stateKind(state)}`}>{state}</span>;
}

function IconButton(props: {
  icon: LabIcon;
  title: string;
  onClick: () => void;
  disabled?: boolean;
}): JSX.Element {
  return (
    <button
      className="jp-wml-icon-button"
      title={props.title}
      aria-label={props.title}
      disabled={props.disabled}
      onClick={props.onClick}
    >
      <props.icon.react tag="span" />
    </button>
  );
}

function Pager(props: {
  total: number;
  offset: number;
  size: number;
  turn: (offset: number) => void;
}): JSX.Element | null {
  const { total, offset, size } = props;
  if (total <= size) {
    return null;
  }
  const last = Math.min(offset + size, total);
  return (
    <div className="jp-wml-pager">
      <button
        className="jp-Button jp-mod-minimal"
        disabled={offset === 0}
        onClick={() => props.turn(offset - size)}
      >
        ‹ Prev
      </button>
      <span className="jp-wml-muted">
        {offset + 1}–{last} of {total}
      </span>
      <button
        className="jp-Button jp-mod-minimal"
        disabled={last >= total}
        onClick={() => props.turn(offset + size)}
      >
        Next ›
      </button>
    </div>
  );
}
