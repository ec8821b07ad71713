// Boxes with labels and scores, drawn over an image or a video.

import type { Box } from './wire.js';

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#46f0f0', '#f032e6', '#bcf60c'];

/**
 * Draws `boxes` (in a `frameW`×`frameH` frame's pixels) onto `ctx`, whose
 * canvas shows that frame scaled to the canvas size.
 */
export function drawBoxes(
  ctx: CanvasRenderingContext2D,
  boxes: Box[],
  frameW: number,
  frameH: number,
): void {
  const sx = ctx.canvas.width / Math.max(frameW, 1);
  const sy = ctx.canvas.height / Math.max(frameH, 1);
  ctx.lineWidth = 2;
  ctx.font = '13px sans-serif';
  ctx.textBaseline = 'top';
  for (const b of boxes) {
    const color = COLORS[b.classId % COLORS.length];
    const [x1, y1, x2, y2] = [b.box[0] * sx, b.box[1] * sy, b.box[2] * sx, b.box[3] * sy];
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${b.label} ${(b.score * 100).toFixed(0)}%`;
    const w = ctx.measureText(text).width + 6;
    const ty = y1 >= 16 ? y1 - 16 : y1;
    ctx.fillStyle = color;
    ctx.fillRect(x1, ty, w, 16);
    ctx.fillStyle = '#fff';
    ctx.fillText(text, x1 + 3, ty + 2);
  }
}

/** A table of boxes, for the page and for tests reading the DOM. */
export function boxTable(boxes: Box[]): HTMLTableElement {
  const t = document.createElement('table');
  t.className = 'boxes';
  t.innerHTML = '<thead><tr><th>label</th><th>score</th><th>box [x1, y1, x2, y2]</th></tr></thead>';
  const body = t.createTBody();
  for (const b of boxes) {
    const tr = body.insertRow();
    tr.dataset.label = b.label;
    tr.insertCell().textContent = b.label;
    tr.insertCell().textContent = b.score.toFixed(3);
    tr.insertCell().textContent = `[${b.box.map((v) => v.toFixed(1)).join(', ')}]`;
  }
  return t;
}
