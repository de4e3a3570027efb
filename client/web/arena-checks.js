// What the page checks of the room's guarantees, from the states it is handed.
//
// The same method as the Python bots (client/bots.py), but on every state rather than a
// sample: the page sends its inputs with seqs 1, 2, 3, ... (the SDK numbers them, once
// each), and the arena counts the inputs it applied for each player (`inputs`). The
// server applies a player's inputs in seq order and `ack` is the highest seq applied, so
// in every state `inputs == ack`:
//
// - duplicated = the largest `inputs - ack` seen: inputs applied more often than seqs
//   were acked, i.e. an input applied twice;
// - lost = the largest number of acknowledged seqs a later state shows unapplied: with H
//   the highest ack seen so far (this state included), `H - min(ack, inputs)` (the ack
//   went back: an acked input forgotten; or the world applied fewer inputs than it acked);
// - tickWentBack: a state whose tick is not newer than one already handed over.
//
// When the state has no entry for the player (before its first state), only the ack
// and the tick are checked.

export class Guarantees {
  constructor() {
    this.states = 0;
    this.maxTick = 0;
    this.highestAck = 0;
    this.ackRegressions = 0;
    this.lost = 0;
    this.duplicated = 0;
    this.tickWentBack = false;
  }

  /** One state as handed to the page: its tick, its ack, and `inputs` (or undefined). */
  observe(tick, ack, inputs) {
    this.states += 1;
    if (tick <= this.maxTick) this.tickWentBack = true;
    else this.maxTick = tick;
    if (ack < this.highestAck) this.ackRegressions += 1;
    this.highestAck = Math.max(this.highestAck, ack);
    const applied = typeof inputs === "number" ? Math.min(ack, inputs) : ack;
    this.lost = Math.max(this.lost, this.highestAck - applied);
    if (typeof inputs === "number") this.duplicated = Math.max(this.duplicated, inputs - ack);
  }
}
