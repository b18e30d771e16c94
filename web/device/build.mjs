// Builds the page: bundles src/page.js (with src/reno-device.js, nats-core and cborg) into
// dist/app.js and copies index.html to dist/, its script address carrying the build's hash.
// Run: npm run build. dist/ is a build output.

import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(root, 'src', 'page.js')],
  outfile: join(dist, 'app.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  // BigInt, private class fields and top-level await: every current browser.
  target: ['es2022'],
  minify: true,
  sourcemap: true,
  logLevel: 'warning',
});
// The script's address carries a hash of its content, so that a browser never runs a stale build.
const hash = createHash('sha256').update(await readFile(join(dist, 'app.js'))).digest('hex').slice(0, 12);
const html = await readFile(join(root, 'index.html'), 'utf8');
await writeFile(join(dist, 'index.html'), html.replace('src="app.js"', `src="app.js?v=${hash}"`));
console.log(`built ${dist}/index.html and app.js`);
