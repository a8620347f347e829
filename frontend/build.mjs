// Builds the notebook page into ../src/crdtnb/static (committed: `pip install .` needs no node).
// Deterministic: fixed file names, no hashes, no timestamps; CI rebuilds and runs
// `git diff --exit-code src/crdtnb/static` to catch a stale bundle.
import * as esbuild from 'esbuild'
import { mkdir, readdir, readFile, rm, copyFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = join(here, '..', 'src', 'crdtnb', 'static')
const watch = process.argv.includes('--watch')
// `node build.mjs --no-minify`: readable names, for profiling (never commit that build)
const minify = !process.argv.includes('--no-minify')

// Only files this build produces live in static/: clear it so renamed outputs leave nothing stale.
await mkdir(outdir, { recursive: true })
for (const name of await readdir(outdir)) await rm(join(outdir, name), { recursive: true, force: true })

// KaTeX's stylesheet lists each font as woff2, woff and ttf: every browser that runs this page
// reads woff2, so only those are bundled (fonts/, served from 'self' as the CSP wants).
const woff2Only = {
  name: 'katex-woff2-only',
  setup (build) {
    build.onLoad({ filter: /katex[\\/]dist[\\/]katex\.css$/ }, async (args) => {
      const css = await readFile(args.path, 'utf8')
      return {
        contents: css.replace(/,\s*url\([^)]*\.woff\)\s*format\("woff"\)|,\s*url\([^)]*\.ttf\)\s*format\("truetype"\)/g, ''),
        loader: 'css',
        resolveDir: dirname(args.path)
      }
    })
  }
}

const options = {
  absWorkingDir: here,
  entryPoints: {
    notebook: 'src/notebook-page.ts',
    list: 'src/list-page.ts',
    app: 'src/styles.css'
  },
  outdir,
  entryNames: '[name]',
  // KaTeX is imported on first use: a chunk of its own (names carry a content hash, so the
  // build stays deterministic)
  chunkNames: 'chunks/[name]-[hash]',
  assetNames: 'fonts/[name]',
  splitting: true,
  loader: { '.woff2': 'file' },
  plugins: [woff2Only],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify,
  sourcemap: false,
  legalComments: 'eof',
  charset: 'utf8',
  logLevel: 'info',
  define: { 'process.env.NODE_ENV': '"production"' }
}

await copyFile(join(here, 'public', 'favicon.svg'), join(outdir, 'favicon.svg'))
if (watch) {
  const ctx = await esbuild.context(options)
  await ctx.watch()
} else {
  await esbuild.build(options)
}
