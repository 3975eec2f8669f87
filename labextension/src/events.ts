/**
 * The backend's server-sent events, read through the server extension (`GET /wml/events`), so
 * that the sidebar refreshes when something changed instead of polling for it.
 *
 * The stream is read with the request layer's transport (a fetch whose body streams), not with
 * `EventSource`: that keeps Jupyter's token and XSRF header, and reconnection with
 * `Last-Event-ID` under our control. Events are coalesced: a burst (a sweep of a hundred runs
 * queued at once) is one `changed` signal, `COALESCE_MS` after its first event.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { WmlApi } from './api';

/** Milliseconds after an event within which further events join its refresh. */
export const COALESCE_MS = 100;
/** First and longest wait before reconnecting a dropped stream; doubling in between. */
export const RETRY_MIN_MS = 500;
export const RETRY_MAX_MS = 15000;

/** One server-sent event. */
export interface ServerEvent {
  /** Its id (the backend's event seq), if it had one. */
  id: string | null;
  /** Its type: `run`, `metrics`, `note`... */
  event: string;
  /** Its data lines, joined by newlines. */
  data: string;
}

/** Splits a text/event-stream into events, however its chunks cut lines. */
export class SseParser {
  /** Add a chunk of the stream's text; returns the events it completed. */
  push(text: string): ServerEvent[] {
    this._buffer += text;
    const lines = this._buffer.split(/\r\n|\r|\n/);
    this._buffer = lines.pop() ?? '';
    const events: ServerEvent[] = [];
    for (const line of lines) {
      const event = this.line(line);
      if (event) {
        events.push(event);
      }
    }
    return events;
  }

  /** Take one whole line; the event it ends, if it is the blank line after one. */
  private line(line: string): ServerEvent | null {
    if (line === '') {
      const done = this._data.length ? { id: this._id, event: this._event, data: this._data.join('\n') } : null;
      this._id = null;
      this._event = 'message';
      this._data = [];
      return done;
    }
    if (line.startsWith(':')) {
      return null; // a comment: the backend's heartbeat
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'data') {
      this._data.push(value);
    } else if (field === 'event') {
      this._event = value;
    } else if (field === 'id') {
      this._id = value;
    }
    return null;
  }

  private _buffer = '';
  private _id: string | null = null;
  private _event = 'message';
  private _data: string[] = [];
}

/** The calls the feed needs from the request layer. */
export type EventsApi = Pick<WmlApi, 'events'>;

/** Waits `ms` milliseconds (replaceable in tests). */
export type Sleep = (ms: number) => Promise<void>;

const sleep: Sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** The account's events, read for as long as the feed lives, reconnecting after a drop. */
export class EventFeed {
  /** Create a feed reading `api`'s events; `start()` opens it. */
  constructor(
    private readonly api: EventsApi,
    private readonly wait: Sleep = sleep
  ) {}

  /** Emitted (coalesced) after events arrived: what the sidebar shows may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted when the stream opens or drops. */
  get connectedChanged(): ISignal<this, boolean> {
    return this._connectedChanged;
  }

  /** Whether the stream is open now (while it is, polling can be rare). */
  get connected(): boolean {
    return this._connected;
  }

  /** The id of the last event read: a reconnection resumes after it. */
  get lastEventId(): string | null {
    return this._lastEventId;
  }

  /** Read the stream until `dispose()`, reconnecting with backoff. */
  async start(): Promise<void> {
    let retry = RETRY_MIN_MS;
    while (!this._abort.signal.aborted) {
      try {
        await this.readOnce();
        retry = RETRY_MIN_MS; // it was open: the next drop starts the backoff afresh
      } catch {
        // refused or unreachable: wait, then try again
      }
      this.setConnected(false);
      if (!this._abort.signal.aborted) {
        await this.wait(retry);
        retry = Math.min(retry * 2, RETRY_MAX_MS);
      }
    }
  }

  /** Stop reading. */
  dispose(): void {
    this._abort.abort();
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Open the stream once and read it to its end. */
  private async readOnce(): Promise<void> {
    const response = await this.api.events(this._lastEventId, this._abort.signal);
    if (!response.body) {
      return;
    }
    this.setConnected(true);
    this.schedule(); // whatever changed while the stream was closed
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        return;
      }
      for (const event of parser.push(decoder.decode(value, { stream: true }))) {
        this._lastEventId = event.id ?? this._lastEventId;
        this.schedule();
      }
    }
  }

  private schedule(): void {
    if (this._timer === null && !this._abort.signal.aborted) {
      this._timer = setTimeout(() => {
        this._timer = null;
        this._changed.emit();
      }, COALESCE_MS);
    }
  }

  private setConnected(connected: boolean): void {
    if (connected !== this._connected) {
      this._connected = connected;
      this._connectedChanged.emit(connected);
    }
  }

  private _abort = new AbortController();
  private _connected = false;
  private _lastEventId: string | null = null;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _changed = new Signal<this, void>(this);
  private _connectedChanged = new Signal<this, boolean>(this);
}
