// Builds the notebook page into ../src/crdtnb/static (committed: `pip install .` needs no node).
// Deterministic: fixed file names, no hashes, no timestamps; CI rebuilds and runs
// `git diff --exit-code src/crdtnb/static` to catch a stale bundle.
import * as esbuild from 'esbuild'
import { mkdir, readdir, rm, copyFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = join(here, '..', 'src', 'crdtnb', 'static')
const watch = process.argv.includes('--watch')

// Only files this build produces live in static/: clear it so renamed outputs leave nothing stale.
await mkdir(outdir, { recursive: true })
for (const name of await readdir(outdir)) await rm(join(outdir, name), { recursive: true, force: true })

const options = {
  absWorkingDir: here,
  entryPoints: {
    notebook: 'src/notebook-page.ts',
    list: 'src/list-page.ts',
    app: 'src/styles.css'
  },
  outdir,
  entryNames: '[name]',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
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
