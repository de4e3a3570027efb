/**
 * A minimal event emitter that works the same in browsers and Node (no EventTarget
 * subclassing, no Node `events`). A listener that throws does not break the session that
 * emits: the error is rethrown on a fresh task, where the platform reports it.
 */

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Add a listener; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("a listener must be a function");
    let set = this._listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  listenerCount(event) {
    return this._listeners.get(event)?.size ?? 0;
  }

  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (set === undefined || set.size === 0) return false;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        }, 0);
      }
    }
    return true;
  }
}
