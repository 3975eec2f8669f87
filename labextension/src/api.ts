/**
 * The request layer: every call the sidebar makes to the server extension's `/wml/` routes.
 *
 * It takes its transport as a function (`ServerConnection.makeRequest` in JupyterLab, which
 * adds Jupyter's token and XSRF header), so it holds no credentials and is testable without
 * a browser. The browser never talks to the backend or to object storage itself.
 */
import {
  Experiment,
  LogChunk,
  Run,
  Snapshot,
  TrainDefaults,
  TrainRequest
} from './model';

/** Sends one HTTP request to the Jupyter server. */
export type RequestFn = (url: string, init: RequestInit) => Promise<Response>;

/** Query parameter values: repeated for arrays, left out when undefined. */
export type Query = Record<string, string | number | string[] | undefined>;

/** Which pages the sidebar wants (mirrors wire.SnapshotQuery). */
export interface SnapshotQuery {
  /** Offset of the experiments page. */
  offset: number;
  /** Expanded experiment id → offset of its runs page. */
  expanded: Record<string, number>;
}

/** Prefix of every route of the server extension. */
export const ROUTE_PREFIX = 'wml';

/**
 * The URL of a `/wml/` route: the one place URLs are built.
 *
 * @param baseUrl - the Jupyter server's base URL (ends with `/`)
 * @param parts - path segments after `/wml/`, each URI-encoded here
 * @param query - query parameters
 */
export function wmlUrl(baseUrl: string, parts: string[], query: Query = {}): string {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const path = [ROUTE_PREFIX, ...parts].map(encodeURIComponent).join('/');
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined) {
        params.append(key, String(item));
      }
    }
  }
  const search = params.toString();
  return `${base}${path}${search ? `?${search}` : ''}`;
}

/** A failed call: the HTTP status (0: no answer), a machine code and a one-line message. */
export class WmlApiError extends Error {
  /** Create an error. */
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message);
    this.name = 'WmlApiError';
  }
}

/** The error for an answer that is not 2xx, from its `{code, message}` body when it has one. */
export async function errorFromResponse(response: Response): Promise<WmlApiError> {
  let body: { code?: string; message?: string } = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's or the server's own error page
  }
  if (response.status === 403 && !body.code) {
    return new WmlApiError(403, 'forbidden', 'Jupyter refused the request: log in to Jupyter again.');
  }
  const message = body.message || `The Jupyter server answered ${response.status} ${response.statusText}.`;
  return new WmlApiError(response.status, body.code || 'error', message);
}

/** Calls to the server extension's routes; each resolves to wire-model objects. */
export class WmlApi {
  /** Create the API for the Jupyter server at `baseUrl`, sending with `request`. */
  constructor(
    readonly baseUrl: string,
    private readonly request: RequestFn
  ) {}

  /** Usage, a page of experiments and a page of runs of each expanded experiment. */
  snapshot(query: SnapshotQuery): Promise<Snapshot> {
    const expand = Object.entries(query.expanded).map(([id, offset]) => `${id}:${offset}`);
    return this.json(['snapshot'], { offset: query.offset, expand });
  }

  /**
   * The account's server-sent events (`text/event-stream`, its body read as it streams), resuming
   * after event `lastEventId` when given; `signal` closes it.
   */
  events(lastEventId: string | null, signal: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = lastEventId ? { 'Last-Event-ID': lastEventId } : {};
    return this.send(['events'], {}, { headers, signal });
  }

  /** Cancel a run; resolves to the run, now HALTED. */
  cancelRun(runId: string): Promise<Run> {
    return this.json(['runs', runId, 'cancel'], {}, { method: 'POST' });
  }

  /** Cancel every live run of an experiment. */
  cancelExperiment(experimentId: string): Promise<Experiment> {
    return this.json(['experiments', experimentId, 'cancel'], {}, { method: 'POST' });
  }

  /** A run's training log from byte `offset`. */
  logs(runId: string, offset: number, learner = 1): Promise<LogChunk> {
    return this.json(['runs', runId, 'logs'], { offset, learner });
  }

  /** A run's results (outputs, log, code) as a zip, fetched by the Jupyter server. */
  async results(runId: string): Promise<Blob> {
    return (await this.send(['runs', runId, 'results'], {}, {})).blob();
  }

  /** The "Train this cell" dialog's defaults: those of `%%wml train`'s flags. */
  trainDefaults(): Promise<TrainDefaults> {
    return this.json(['train'], {});
  }

  /** Submit a notebook cell as an experiment. */
  train(request: TrainRequest): Promise<Experiment> {
    return this.json(['train'], {}, { method: 'POST', body: JSON.stringify(request) });
  }

  private async json<T>(parts: string[], query: Query, init: RequestInit = {}): Promise<T> {
    return (await this.send(parts, query, init)).json() as Promise<T>;
  }

  private async send(parts: string[], query: Query, init: RequestInit): Promise<Response> {
    let response: Response;
    try {
      response = await this.request(wmlUrl(this.baseUrl, parts, query), init);
    } catch (reason) {
      throw new WmlApiError(0, 'network', `Cannot reach the Jupyter server (${String(reason)}).`);
    }
    if (!response.ok) {
      throw await errorFromResponse(response);
    }
    return response;
  }
}
