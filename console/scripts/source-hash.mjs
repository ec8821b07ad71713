// Writes dist/SOURCE-SHA256: a SHA-256 over the console's sources, so a
// cargo test (server/tests/console_assets.rs) can tell, without npm, that the
// committed dist/ was built from the committed sources.
//
// Hashed: every file under src/, plus index.html, package.json,
// package-lock.json, tsconfig.json and vite.config.ts; sorted by their path
// relative to console/ ('/' separators); each contributes
// path + NUL + bytes + NUL. server/tests/console_assets.rs does the same.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const TOP = ['index.html', 'package.json', 'package-lock.json', 'tsconfig.json', 'vite.config.ts'];

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else out.push(relative(root, p).split(sep).join('/'));
  }
  return out;
}

const files = [...TOP, ...walk(join(root, 'src'), [])].sort();
const h = createHash('sha256');
for (const f of files) {
  h.update(f);
  h.update(Buffer.from([0]));
  h.update(readFileSync(join(root, f)));
  h.update(Buffer.from([0]));
}
const digest = h.digest('hex');
writeFileSync(join(root, 'dist', 'SOURCE-SHA256'), `${digest}\n`);
console.log(`dist/SOURCE-SHA256 ${digest} (${files.length} files)`);
