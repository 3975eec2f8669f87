import { RequestFn, WmlApi } from '../src/api';
import { COALESCE_MS, EventFeed, SseParser } from '../src/events';

/** A streamed response whose body the test writes chunk by chunk, then closes. */
function streamed() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({ start: c => (controller = c) });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }),
    write: (text: string) => controller.enqueue(encoder.encode(text)),
    close: () => controller.close()
  };
}

const tick = (ms = 0) => new Promise<void>(resolve => setTimeout(resolve, ms));

describe('SseParser', () => {
  it('yields events with their id and type, however chunks cut the lines, and skips heartbeats', () => {
    const parser = new SseParser();
    expect(parser.push(': connected\n\nid: 7\nevent: ru')).toEqual([]);
    expect(parser.push('n\ndata: {"a":\ndata: 1}\n\n: heartbeat\n\ndata: x\r\n\r\n')).toEqual([
      { id: '7', event: 'run', data: '{"a":\n1}' },
      { id: null, event: 'message', data: 'x' }
    ]);
  });
});

describe('WmlApi.events', () => {
  it('asks /wml/events, resuming after the last event id', async () => {
    const calls: { url: string; init: RequestInit }[] = [];
    const request: RequestFn = async (url, init) => {
      calls.push({ url, init });
      return new Response('', { status: 200 });
    };
    const api = new WmlApi('http://host/base/', request);
    const abort = new AbortController();
    await api.events('42', abort.signal);
    await api.events(null, abort.signal);
    expect(calls[0].url).toBe('http://host/base/wml/events');
    expect(calls[0].init.headers).toEqual({ 'Last-Event-ID': '42' });
    expect(calls[1].init.headers).toEqual({});
    expect(calls[0].init.signal).toBe(abort.signal);
  });
});

describe('EventFeed', () => {
  it('signals once per burst of events, soon after the first', async () => {
    const stream = streamed();
    const feed = new EventFeed({ events: async () => stream.response }, () => new Promise(() => undefined));
    const times: number[] = [];
    feed.changed.connect(() => times.push(Date.now()));
    void feed.start();
    await tick();
    expect(feed.connected).toBe(true);
    await tick(COALESCE_MS * 2);
    times.length = 0; // the refresh on connecting, for what changed while it was closed
    const first = Date.now();
    for (let n = 1; n <= 50; n++) {
      stream.write(`id: ${n}\nevent: run\ndata: {}\n\n`);
    }
    await tick(COALESCE_MS * 3);
    expect(times.length).toBe(1);
    expect(times[0] - first).toBeLessThan(COALESCE_MS * 3);
    expect(feed.lastEventId).toBe('50');
    feed.dispose();
  });

  it('reconnects after a drop, resuming after the last event, and says when it is down', async () => {
    const streams = [streamed(), streamed()];
    const asked: (string | null)[] = [];
    const api = {
      events: async (lastEventId: string | null) => {
        asked.push(lastEventId);
        return streams[asked.length - 1].response;
      }
    };
    const states: boolean[] = [];
    const feed = new EventFeed(api, () => tick());
    feed.connectedChanged.connect((_, connected) => states.push(connected));
    void feed.start();
    await tick();
    streams[0].write('id: 9\nevent: run\ndata: {}\n\n');
    await tick();
    streams[0].close();
    await tick(10);
    expect(asked).toEqual([null, '9']);
    expect(states).toEqual([true, false, true]);
    feed.dispose();
  });

  it('keeps retrying a refused stream, waiting longer each time', async () => {
    const waits: number[] = [];
    const api = {
      events: async () => {
        throw new Error('refused');
      }
    };
    const feed = new EventFeed(api, async ms => {
      waits.push(ms);
      if (waits.length === 4) {
        feed.dispose();
      }
    });
    await feed.start();
    expect(waits).toEqual([500, 1000, 2000, 4000]);
    expect(feed.connected).toBe(false);
  });
});
