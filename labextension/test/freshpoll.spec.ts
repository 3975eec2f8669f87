import { Poll } from '@lumino/polling';

import { FreshPoll } from '../src/freshpoll';

const tick = (ms = 20) => new Promise<void>(resolve => setTimeout(resolve, ms));

/** A poll that ticks only when refreshed, and its fetches, each pending until resolved. */
function poll() {
  const pending: (() => void)[] = [];
  const fresh = new FreshPoll({
    fetch: () => new Promise<void>(resolve => pending.push(resolve)),
    frequency: { interval: Poll.NEVER, backoff: false },
    standby: 'never',
    auto: false
  });
  return { fresh, pending };
}

describe('FreshPoll', () => {
  it('fetches again after a fetch during which a refresh was asked for', async () => {
    const { fresh, pending } = poll();
    void fresh.refresh();
    await tick();
    expect(pending.length).toBe(1);
    void fresh.refresh(); // e.g. the user expanded an experiment while the answer was on its way
    void fresh.refresh();
    pending[0]();
    await tick();
    expect(pending.length).toBe(2); // the two asks are answered by one fetch, after the first
    pending[1]();
    await tick();
    expect(pending.length).toBe(2);
    fresh.dispose();
  });

  it('fetches once for a refresh asked when none is under way', async () => {
    const { fresh, pending } = poll();
    void fresh.refresh();
    await tick();
    pending[0]();
    await tick();
    void fresh.refresh();
    await tick();
    pending[1]();
    await tick();
    expect(pending.length).toBe(2);
    fresh.dispose();
  });
});
