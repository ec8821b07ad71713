// The console is served by the gateway under /console/ (assets embedded in
// the binary by server/build.rs); `npm run build` writes dist/, committed.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    sourcemap: false,
    // One small bundle; no inlined data URLs (the CSP-friendly default).
    assetsInlineLimit: 0,
  },
  server: {
    // `npm run dev` against a gateway on :8080 (API and WebSocket proxied).
    proxy: {
      '/v1': { target: 'http://127.0.0.1:8080', ws: true },
    },
  },
});
