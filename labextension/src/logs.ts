/**
 * A run's training log in a main-area tab that follows new lines until the run has ended.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { WmlApi } from './api';
import { wmlIcon } from './icons';
import { errorView } from './state';

/** Milliseconds between reads of a live run's log. */
export const LOG_POLL_MS = 1000;
/** Pixels from the bottom within which the view keeps scrolling to new lines. */
const FOLLOW_SLACK_PX = 24;

/** The log text of one run, growing as the run writes. */
export class LogView extends Widget {
  /** Create the view of `runId`'s log, read through `api`. */
  constructor(
    private readonly api: Pick<WmlApi, 'logs'>,
    readonly runId: string
  ) {
    super();
    this.addClass('jp-wml-LogView');
    this.status = document.createElement('div');
    this.status.className = 'jp-wml-LogView-status';
    this.text = document.createElement('pre');
    this.text.className = 'jp-wml-LogView-text';
    this.node.append(this.status, this.text);
    this.poll = new Poll({
      factory: () => this.read(),
      frequency: { interval: LOG_POLL_MS, backoff: true, max: 30000 },
      standby: 'when-hidden',
      name: `wml-jupyter:logs:${runId}`
    });
    this.setStatus('Following the log…');
  }

  /** The poll reading new text (stopped once the log is complete). */
  readonly poll: Poll;

  /** Stop reading. */
  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  private async read(): Promise<void> {
    try {
      const chunk = await this.api.logs(this.runId, this.offset);
      this.append(chunk.data);
      this.offset = chunk.next_offset;
      if (chunk.complete) {
        this.setStatus('The run has ended; this is its whole log.');
        this.poll.dispose();
      } else {
        this.setStatus('Following the log…');
      }
    } catch (error) {
      const view = errorView(error);
      this.setStatus(`${view.message} ${view.hint}`.trim(), true);
      throw error;
    }
  }

  private append(data: string): void {
    if (!data) {
      return;
    }
    const node = this.node;
    const atEnd = node.scrollHeight - node.scrollTop - node.clientHeight < FOLLOW_SLACK_PX;
    this.text.append(document.createTextNode(data));
    if (atEnd) {
      node.scrollTop = node.scrollHeight;
    }
  }

  private setStatus(message: string, error = false): void {
    this.status.textContent = message;
    this.status.classList.toggle('jp-mod-error', error);
  }

  private offset = 0;
  private readonly status: HTMLDivElement;
  private readonly text: HTMLPreElement;
}

/** A main-area tab showing `runId`'s log. */
export function createLogTab(api: Pick<WmlApi, 'logs'>, runId: string): MainAreaWidget<LogView> {
  const widget = new MainAreaWidget({ content: new LogView(api, runId) });
  widget.id = `wml-logs-${runId}`;
  widget.title.label = `Logs ${runId}`;
  widget.title.caption = `Training log of run ${runId}`;
  widget.title.icon = wmlIcon;
  widget.title.closable = true;
  return widget;
}
