/**
 * A poll whose `refresh()` is never lost.
 *
 * Lumino's `Poll` drops a refresh asked for while another one is under way, yet that one's answer
 * may predate what asked (an expansion, a page turn, an event): the panel then showed it only at
 * the next tick, up to 30 s later while the event stream is open.
 */
import { Poll } from '@lumino/polling';

/** A `Poll` that fetches once more after a fetch during which a refresh was asked for. */
export class FreshPoll extends Poll {
  /** Create a poll that calls `fetch` on every tick. */
  constructor(options: FreshPoll.IOptions) {
    const asked = { again: false };
    super({
      ...options,
      factory: async () => {
        do {
          asked.again = false;
          await options.fetch();
        } while (asked.again);
      }
    });
    this.asked = asked;
  }

  /** Fetch now, or once more as soon as the fetch under way is done. */
  refresh(): Promise<void> {
    if (this.state.phase === 'refreshed') {
      this.asked.again = true; // a refresh is scheduled or under way: Poll would drop this one
    }
    return super.refresh();
  }

  private readonly asked: { again: boolean };
}

export namespace FreshPoll {
  /** A poll's options, with `fetch` (what each tick does) for its factory. */
  export type IOptions = Omit<Poll.IOptions<any, any, 'standby'>, 'factory'> & {
    fetch: () => Promise<void>;
  };
}
