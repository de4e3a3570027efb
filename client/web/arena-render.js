// Canvas drawing of the arena world (what client/arena_view.py draws in a terminal):
// the field, the pickups, every player as a disc in its own colour with its name, and
// the local player ringed and labelled "you", drawn last so it is always on top.

/** A colour per player id, the same on every page (a hash of the id picks the hue). */
export function colourOf(id) {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < id.length; i += 1) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  const hue = Math.round(((h % 360) * 137.508) % 360);
  return `hsl(${hue} 75% 58%)`;
}

/** Where the world goes in a `width` x `height` canvas: its scale and offset, aspect kept. */
export function fit(width, height, worldW, worldH, margin = 8) {
  const scale = Math.max(0.1, Math.min((width - 2 * margin) / worldW, (height - 2 * margin) / worldH));
  return {
    scale,
    left: (width - worldW * scale) / 2,
    top: (height - worldH * scale) / 2,
  };
}

/** Draws `world` (from arena-interp's `blend`) with `selfId` highlighted. */
export function draw(ctx, world, selfId, { width, height, dpr = 1 }) {
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const { scale, left, top } = fit(width, height, world.w, world.h);
  const X = (x) => left + x * scale;
  const Y = (y) => top + y * scale;
  // The field and a grid every 8 units.
  ctx.fillStyle = "#10151f";
  ctx.fillRect(X(0), Y(0), world.w * scale, world.h * scale);
  ctx.strokeStyle = "#1e2838";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let gx = 8; gx < world.w; gx += 8) {
    ctx.moveTo(X(gx), Y(0));
    ctx.lineTo(X(gx), Y(world.h));
  }
  for (let gy = 8; gy < world.h; gy += 8) {
    ctx.moveTo(X(0), Y(gy));
    ctx.lineTo(X(world.w), Y(gy));
  }
  ctx.stroke();
  ctx.strokeStyle = "#4a5a78";
  ctx.lineWidth = 2;
  ctx.strokeRect(X(0), Y(0), world.w * scale, world.h * scale);
  // Pickups.
  ctx.fillStyle = "#f5c542";
  for (const pickup of world.pickups) {
    if (!Array.isArray(pickup) || pickup.length !== 2) continue;
    ctx.beginPath();
    ctx.arc(X(Number(pickup[0])), Y(Number(pickup[1])), Math.max(2, 0.35 * scale), 0, 2 * Math.PI);
    ctx.fill();
  }
  // Players: others first, you on top.
  const radius = Math.max(4, 0.6 * scale);
  const ordered = [...world.players].sort((a, b) => (a.id === selfId) - (b.id === selfId));
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  ctx.font = `${Math.max(11, Math.round(0.9 * scale))}px system-ui, sans-serif`;
  for (const p of ordered) {
    const mine = p.id === selfId;
    const px = X(p.x);
    const py = Y(p.y);
    ctx.fillStyle = colourOf(p.id);
    ctx.beginPath();
    ctx.arc(px, py, radius, 0, 2 * Math.PI);
    ctx.fill();
    if (mine) {
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.arc(px, py, radius + 4, 0, 2 * Math.PI);
      ctx.stroke();
    }
    // The name above the disc, kept inside the field (a player at the edge stays readable).
    const label = mine ? `${p.name} (you)` : p.name;
    const half = ctx.measureText(label).width / 2;
    const lx = Math.min(Math.max(px, X(0) + half + 2), X(world.w) - half - 2);
    const above = py - radius - (mine ? 6 : 3);
    const ly = above - 14 < Y(0) ? py + radius + (mine ? 22 : 18) : above; // no room: below
    ctx.fillStyle = mine ? "#ffffff" : "#c8d0e0";
    ctx.fillText(label, lx, ly);
  }
}
