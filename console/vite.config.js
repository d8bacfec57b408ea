import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// The console is served by the worker at `/` from the files in dist/, embedded in the binary
// (build.rs): no CDN, no network at run time. `npm run dev` proxies the API to a local worker.
export default defineConfig({
  plugins: [vue()],
  base: '/',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 600 },
  server: {
    proxy: { '/api': process.env.CACHEWARDEN_URL || 'http://127.0.0.1:9187' },
  },
  test: { environment: 'node', include: ['tests/**/*.test.js'] },
})
