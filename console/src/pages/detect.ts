// One-shot detect: drop (or pick) an image file → POST /v1/detect → boxes
// drawn over the image.

import { api, ApiError, type DetectResponse } from '../api.js';
import { boxTable, drawBoxes } from '../draw.js';
import { h, notice } from '../dom.js';
import { state } from '../state.js';
import type { Box } from '../wire.js';

export class DetectPage {
  private out!: HTMLElement;

  mount(root: HTMLElement): void {
    const input = h('input', { id: 'detect-file', type: 'file', accept: 'image/jpeg,image/png' });
    const zone = h('div', { id: 'drop-zone', class: 'drop-zone' }, 'Drop a JPEG or PNG here, or ', input);
    this.out = h('div', { id: 'detect-result' });
    input.onchange = () => {
      const f = input.files?.[0];
      if (f) void this.run(f);
    };
    zone.ondragover = (e) => {
      e.preventDefault();
      zone.classList.add('over');
    };
    zone.ondragleave = () => zone.classList.remove('over');
    zone.ondrop = (e) => {
      e.preventDefault();
      zone.classList.remove('over');
      const f = e.dataTransfer?.files?.[0];
      if (f) void this.run(f);
    };
    root.append(
      h('h1', {}, 'Detect an image'),
      h('p', { class: 'hint' }, 'One image, one answer: POST /v1/detect with the file as the body.'),
      zone,
      this.out,
    );
  }

  unmount(): void {}

  private async run(file: File): Promise<void> {
    this.out.replaceChildren(notice('info', `Detecting ${file.name}…`));
    let result: DetectResponse;
    try {
      const resp = await api('/v1/detect', {
        method: 'POST',
        headers: { 'Content-Type': file.type || 'application/octet-stream' },
        body: file,
      });
      result = (await resp.json()) as DetectResponse;
    } catch (e) {
      const msg = e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : (e as Error).message;
      this.out.replaceChildren(notice('error', `Detect failed: ${msg}`, 'detect-error'));
      return;
    }
    state.detect = result;
    const boxes: Box[] = result.detections.map((d) => ({
      classId: d.class_id,
      label: d.label,
      score: d.score,
      box: d.box,
    }));
    const canvas = h('canvas', { id: 'detect-canvas' });
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, 800 / bitmap.width);
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    const ctx = canvas.getContext('2d')!;
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    drawBoxes(ctx, boxes, result.width, result.height);
    const t = result.timings_us;
    this.out.replaceChildren(
      h(
        'p',
        { class: 'summary' },
        `${result.model}: ${boxes.length} objects in a ${result.width}×${result.height} image, ` +
          `${((t.total ?? 0) / 1000).toFixed(1)} ms at the gateway (infer ${((t.infer ?? 0) / 1000).toFixed(1)} ms)`,
      ),
      canvas,
      boxTable(boxes),
    );
  }
}
