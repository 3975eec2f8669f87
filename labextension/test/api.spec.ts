import { RequestFn, WmlApi, WmlApiError, wmlUrl } from '../src/api';
import { makeSnapshot } from './fixtures';

/** A transport that records calls and answers with `respond`. */
function transport(respond: () => Promise<Response> | Response) {
  const calls: { url: string; init: RequestInit }[] = [];
  const request: RequestFn = async (url, init) => {
    calls.push({ url, init });
    return respond();
  };
  return { calls, api: new WmlApi('http://host/base/', request) };
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

describe('wmlUrl', () => {
  it('joins the base URL, /wml/ and encoded segments', () => {
    expect(wmlUrl('http://h/base/', ['runs', 'a b/c', 'logs'])).toBe('http://h/base/wml/runs/a%20b%2Fc/logs');
    expect(wmlUrl('http://h/base', ['snapshot'])).toBe('http://h/base/wml/snapshot');
  });

  it('repeats array parameters and leaves out undefined ones', () => {
    const url = wmlUrl('/', ['snapshot'], { offset: 0, expand: ['a:0', 'b:50'], none: undefined });
    expect(url).toBe('/wml/snapshot?offset=0&expand=a%3A0&expand=b%3A50');
  });
});

describe('WmlApi', () => {
  it('asks for a snapshot of the expanded experiments and returns it', async () => {
    const { calls, api } = transport(() => json(makeSnapshot()));
    const snapshot = await api.snapshot({ offset: 50, expanded: { abc123: 100 } });
    expect(snapshot.usage.account).toBe('local');
    expect(calls[0].url).toBe('http://host/base/wml/snapshot?offset=50&expand=abc123%3A100');
    expect(calls[0].init.method).toBeUndefined();
  });

  it('posts cancels and training requests', async () => {
    const { calls, api } = transport(() => json({ id: 'x' }));
    await api.cancelRun('abc123-1');
    await api.cancelExperiment('abc123');
    await api.train({ code: 'print(1)', name: 'n', gpus: 1, framework: 'pytorch', data: null, sweep: [], runs: null, metric: null, mode: 'max' });
    expect(calls.map(c => [c.init.method, c.url.replace('http://host/base/', '')])).toEqual([
      ['POST', 'wml/runs/abc123-1/cancel'],
      ['POST', 'wml/experiments/abc123/cancel'],
      ['POST', 'wml/train']
    ]);
    expect(JSON.parse(String(calls[2].init.body)).code).toBe('print(1)');
  });

  it("gets the Train dialog's defaults from GET /wml/train", async () => {
    const served = { name: 'notebook', gpus: 0, framework: 'pytorch', data: null, sweep: [], runs: null, metric: null, mode: 'max' };
    const { calls, api } = transport(() => json(served));
    expect(await api.trainDefaults()).toEqual(served);
    expect([calls[0].init.method, calls[0].url]).toEqual([undefined, 'http://host/base/wml/train']);
  });

    it('reads logs from an offset and results as a blob', async () => {
    const { calls, api } = transport(() => json({ offset: 10, next_offset: 20, data: 'x', learner: 1, complete: false }));
    const chunk = await api.logs('abc123-1', 10);
    expect(chunk.next_offset).toBe(20);
    expect(calls[0].url).toContain('wml/runs/abc123-1/logs?offset=10&learner=1');
    const blob = await api.results('abc123-1');
    expect(blob.size).toBeGreaterThan(0);
  });

  it('turns a {code, message} answer into a WmlApiError', async () => {
    const { api } = transport(() => json({ code: 'unavailable', message: 'cannot reach the backend' }, 503));
    await expect(api.snapshot({ offset: 0, expanded: {} })).rejects.toMatchObject({
      name: 'WmlApiError',
      status: 503,
      code: 'unavailable',
      message: 'cannot reach the backend'
    });
  });

  it("reads Jupyter's own 403 as a login problem", async () => {
    const { api } = transport(() => new Response('<html>Forbidden</html>', { status: 403, statusText: 'Forbidden' }));
    const error = await api.cancelRun('x-1').catch(e => e);
    expect(error).toBeInstanceOf(WmlApiError);
    expect(error.code).toBe('forbidden');
    expect(error.message).toMatch(/log in/);
  });

  it('names the status of an answer that is not JSON', async () => {
    const { api } = transport(() => new Response('Bad gateway', { status: 502, statusText: 'Bad Gateway' }));
    await expect(api.snapshot({ offset: 0, expanded: {} })).rejects.toMatchObject({
      code: 'error',
      message: 'The Jupyter server answered 502 Bad Gateway.'
    });
  });

  it('reports a transport failure as a network error', async () => {
    const { api } = transport(() => Promise.reject(new TypeError('Failed to fetch')));
    await expect(api.snapshot({ offset: 0, expanded: {} })).rejects.toMatchObject({ status: 0, code: 'network' });
  });
});
