// What the event handlers saw, for the scenario in main.ts to wait on.
import { EventEmitter } from 'node:events';

const emitter = new EventEmitter();
const history: Array<{ type: string; event: unknown }> = [];

export const seen = {
  emit(type: string, event: unknown) {
    history.push({ type, event });
    emitter.emit(type, event);
  },
};

// The first event of `type` that is `wanted`, seen already or within `ms`.
export function waitFor<T>(type: string, wanted: (event: T) => boolean, ms = 60_000): Promise<T> {
  const before = history.find((entry) => entry.type === type && wanted(entry.event as T));
  if (before) return Promise.resolve(before.event as T);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} within ${ms} ms`)), ms);
    const listener = (event: T) => {
      if (!wanted(event)) return;
      clearTimeout(timer);
      emitter.off(type, listener);
      resolve(event);
    };
    emitter.on(type, listener);
  });
}
