import { WmlApiError } from '../src/api';
import { ExperimentState, Snapshot } from '../src/model';
import { errorView, SidebarModel } from '../src/state';
import { makeSnapshot } from './fixtures';

/** A controllable fake of the request layer. */
function fakeApi() {
  const pending: { resolve: (s: Snapshot) => void; reject: (e: unknown) => void }[] = [];
  const queries: unknown[] = [];
  const api = {
    snapshot: (query: unknown) => {
      queries.push(query);
      return new Promise<Snapshot>((resolve, reject) => pending.push({ resolve, reject }));
    }
  };
  return { api, pending, queries };
}

describe('SidebarModel', () => {
  it('stores a snapshot and tells the view', async () => {
    const { api, pending } = fakeApi();
    const model = new SidebarModel(api);
    let changes = 0;
    model.changed.connect(() => changes++);
    const done = model.refresh();
    pending[0].resolve(makeSnapshot());
    await done;
    expect(model.snapshot?.usage.account).toBe('local');
    expect(model.error).toBeNull();
    expect(changes).toBe(1);
  });

  it('keeps the last snapshot and shows the error with a hint, then clears it on success', async () => {
    const { api, pending } = fakeApi();
    const model = new SidebarModel(api);
    const first = model.refresh();
    pending[0].resolve(makeSnapshot());
    await first;
    const failing = model.refresh();
    pending[1].reject(new WmlApiError(503, 'unavailable', 'cannot reach the backend at http://x'));
    await expect(failing).rejects.toBeInstanceOf(WmlApiError);
    expect(model.snapshot).not.toBeNull();
    expect(model.error?.message).toBe('cannot reach the backend at http://x');
    expect(model.error?.hint).toMatch(/wml backend status/);
    const retry = model.refresh();
    pending[2].resolve(makeSnapshot());
    await retry;
    expect(model.error).toBeNull();
  });

  it('ignores an answer older than one already shown', async () => {
    const { api, pending } = fakeApi();
    const model = new SidebarModel(api);
    const older = model.refresh();
    const newer = model.refresh();
    const fresh = makeSnapshot();
    fresh.backend = 'newer';
    pending[1].resolve(fresh);
    await newer;
    pending[0].resolve(makeSnapshot());
    await older;
    expect(model.snapshot?.backend).toBe('newer');
  });

  it('is live while runs queue or run, idle once all have ended', async () => {
    const { api, pending } = fakeApi();
    const model = new SidebarModel(api);
    expect(model.isLive).toBe(true);
    const idle = makeSnapshot();
    idle.usage = { ...idle.usage, gpus_in_use: 0, queued_gpus: 0 };
    idle.experiments.items[0].state = ExperimentState.Completed;
    const first = model.refresh();
    pending[0].resolve(idle);
    await first;
    expect(model.isLive).toBe(false);
    const second = model.refresh();
    pending[1].resolve(makeSnapshot());
    await second;
    expect(model.isLive).toBe(true);
  });

  it('asks for the pages shown: experiments offset and expanded experiments', async () => {
    const { api, queries } = fakeApi();
    const model = new SidebarModel(api);
    model.toggle('a');
    model.toggle('b');
    model.setRunsOffset('b', 50);
    model.setOffset(-5);
    void model.refresh();
    model.toggle('a');
    void model.refresh();
    expect(queries).toEqual([
      { offset: 0, expanded: { a: 0, b: 50 } },
      { offset: 0, expanded: { b: 50 } }
    ]);
    expect(model.isExpanded('b')).toBe(true);
    expect(model.isExpanded('a')).toBe(false);
  });
});

describe('errorView', () => {
  it('gives hints for errors a user can fix and none for others', () => {
    expect(errorView(new WmlApiError(502, 'unauthorized', 'bad token')).hint).toMatch(/wml config set token/);
    expect(errorView(new WmlApiError(404, 'not_found', 'no run x')).hint).toBe('');
    expect(errorView(new Error('boom')).message).toBe('Error: boom');
  });
});
