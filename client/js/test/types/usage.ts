// A small program written against index.d.ts; test/types.test.js runs `tsc --noEmit`
// on it, so a declaration that breaks ordinary use fails the tests.
import {
  AuthClient,
  AuthError,
  CloseCode,
  DeltaDecoder,
  ErrorCode,
  RoomClient,
  RoomError,
  StateroomError,
  backoffDelay,
  encodeMsgpack,
  type GameEvent,
  type RoomStatus,
  type State,
  type Tokens,
  type Welcome,
} from "@stateroom/client";

interface Arena {
  w: number;
  h: number;
  players: Record<string, { name: string; x: number; y: number; score: number; inputs: number }>;
  pickups: [number, number][];
}

export async function play(authUrl: string): Promise<number> {
  const auth = new AuthClient(authUrl, { timeoutMs: 5000 });
  let tokens: Tokens;
  try {
    tokens = await auth.guest("ann");
  } catch (error) {
    if (error instanceof AuthError && error.status === 429) return -1;
    throw error;
  }
  const source = auth.tokenSource(tokens);
  source.onRefresh = (fresh: Tokens) => localStore(fresh.refreshToken);
  const servers = await auth.servers(tokens);
  const room = new RoomClient({
    urls: servers.map((s) => s.wsUrl),
    room: "lobby",
    token: source,
    game: "arena",
    encoding: "json",
    protocol: 2,
    options: { mode: "ffa", max_players: 8, ranked: false },
  });
  const off = room.on("state", (state: State<Arena>) => {
    const me = state.state.players[room.playerId];
    if (me) draw(me.x, me.y, state.tick);
  });
  room.on("event", (event: GameEvent<{ n: number }>) => draw(event.data.n, 0, event.tick));
  room.on("status", (status: RoomStatus) => {
    const p99: number | null = status.latency.p99Ms;
    draw(status.epoch, status.reconnects, p99 ?? 0);
    if (status.state === "reconnecting") draw(status.stats.resent, status.stats.lost, status.stats.duplicated);
  });
  room.on("error", (error: StateroomError) => {
    if (error.code === ErrorCode.ILLEGAL_INPUT) draw(error.seq ?? 0, 0, 0);
  });
  room.on("close", (error: StateroomError | null) => {
    if (error instanceof RoomError && error.closeCode === CloseCode.REPLACED) draw(0, 0, 0);
  });
  const welcome: Welcome = await room.connect(10000);
  const seq: number = room.sendInput({ dx: 1, dy: -0.5 });
  room.sendInput({ big: 2n ** 62n, list: [1, "two", null, true] });
  for await (const state of room) {
    if (state.ack >= seq) break;
  }
  const rtt: number = await room.ping();
  const where: string = `${room.url} ${room.encoding} ${room.game ?? ""} ${room.tickRate} ${room.tokenExp ?? 0}`;
  if (room.error !== null) draw(where.length, 0, 0);
  room.countApplied = (state: State<Arena>, me: string) => state.state.players[me]?.inputs;
  off();
  await room.leave();
  const quick = await auth.quickJoin(tokens, "arena", { mode: "ffa" });
  const again = await RoomClient.fromAuth(auth, tokens, quick.room, { options: quick.options });
  await again.close();
  const decoder = new DeltaDecoder();
  decoder.apply({ tick: 1, view: {} });
  encodeMsgpack({ t: "ping", id: 2 ** 32 + 5 });
  return welcome.tickRate + rtt + backoffDelay(1, 50, 250);
}

declare function draw(a: number, b: number, c: number): void;
declare function localStore(token: string): void;
