#!/usr/bin/env node
// Compatibility check: JupyterLab's notebook model (@jupyter/ydoc) and y-websocket's
// provider against a running crdtnb daemon.
//
//   node compat.mjs URL PATH TOKEN
//
// URL is the sync endpoint, e.g. ws://127.0.0.1:8888/api/sync (a bare ws://host:port or
// http://host:port gets /api/sync appended). PATH is the notebook path under the served root.
//
// Steps:
//  1. provider A syncs a YNotebook (the model JupyterLab uses) and prints, as one JSON line,
//     what the model sees: {"event": "synced", "cell_count", "cells": [{id, cell_type, source}]}
//  2. provider B syncs a fresh plain Y.Doc of the same room (BroadcastChannel disabled, so every
//     byte goes through the server)
//  3. through the model on A: inserts text at the end of the first line of the first cell
//     (cell.updateSource) and appends a markdown cell (notebook.addCell)
//  4. waits until B sees both changes, then prints
//     {"event": "propagated", "inserted", "first_cell_source", "new_cell": {id, cell_type, source},
//      "cell_count", "cells": [...]}   (the cells as B's raw Y.Doc holds them)
// Exit 0 on success; 1 with a message on stderr on any failure or after 20 s.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { YNotebook } from '@jupyter/ydoc'

const TIMEOUT_MS = 20000
// Non-ASCII on purpose: Yjs indexes text in UTF-16 code units, the server (pycrdt/yrs) must agree.
const INSERTED = ' — edited from Node ✓ 👩‍💻'
const NEW_CELL_SOURCE = '## Added by the Node compat check\n\nInserted through `@jupyter/ydoc` `YNotebook.addCell` — ça marche ✓'

const providers = []
const docs = []
let finished = false
let timer = null
let stage = 'starting'

function finish (code, message) {
  if (finished) return
  finished = true
  if (timer !== null) clearTimeout(timer)
  if (message) process.stderr.write(`compat: ${message}\n`)
  for (const p of providers) {
    try { p.destroy() } catch (e) { /* closing anyway */ }
  }
  for (const d of docs) {
    try { d.dispose ? d.dispose() : d.destroy() } catch (e) { /* closing anyway */ }
  }
  // Give ws a moment to send its close frames, then leave whatever is still pending.
  setTimeout(() => process.exit(code), 100).unref()
  process.exitCode = code
}

function fail (message) {
  finish(1, message)
}

process.on('uncaughtException', (err) => fail(`uncaught exception: ${err && err.stack ? err.stack : err}`))
process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${err && err.stack ? err.stack : err}`))

const [rawUrl, path, token] = process.argv.slice(2)
if (!rawUrl || !path || !token) {
  process.stderr.write('usage: node compat.mjs URL PATH TOKEN   (URL e.g. ws://127.0.0.1:8888/api/sync)\n')
  process.exit(2)
}

function syncUrl (u) {
  let url = u.replace(/^http(s?):\/\//, 'ws$1://').replace(/\/+$/, '')
  if (!/\/api\/sync$/.test(url)) url += '/api/sync'
  return url
}

const serverUrl = syncUrl(rawUrl)
stage = 'connecting'
timer = setTimeout(() => fail(`timed out after ${TIMEOUT_MS / 1000} s (stage: ${stage})`), TIMEOUT_MS)

function connect (name, ydoc) {
  const provider = new WebsocketProvider(serverUrl, path, ydoc, {
    params: { token },
    WebSocketPolyfill: WebSocket,
    disableBc: true, // both providers live in this process: force everything through the server
    maxBackoffTime: 1000
  })
  providers.push(provider)
  provider.on('connection-error', (event) => {
    if (finished) return
    const detail = event && (event.message || (event.error && event.error.message))
    fail(`${name}: websocket error on ${serverUrl}/${path}: ${detail || event}`)
  })
  provider.on('connection-close', (event) => {
    if (finished || event == null) return
    fail(`${name}: server closed the connection (code ${event.code}${event.reason ? `, reason: ${event.reason}` : ''}) during stage "${stage}"`)
  })
  return new Promise((resolve) => {
    if (provider.synced) resolve(provider)
    const onSync = (synced) => {
      if (synced) {
        provider.off('sync', onSync)
        resolve(provider)
      }
    }
    provider.on('sync', onSync)
  })
}

function modelCells (notebook) {
  return notebook.cells.map((cell) => ({ id: cell.id, cell_type: cell.cell_type, source: cell.source }))
}

function rawCells (ydoc) {
  return ydoc.getArray('cells').toArray().map((ycell) => {
    const source = ycell.get('source')
    return {
      id: ycell.get('id'),
      cell_type: ycell.get('cell_type'),
      source: source instanceof Y.Text ? source.toString() : source
    }
  })
}

function print (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function main () {
  // JupyterLab does the same: a YNotebook with its own fresh Y.Doc that the provider fills.
  // (YNotebook.create() would first write an empty notebook into the doc; the constructor writes nothing.)
  const notebook = new YNotebook()
  docs.push(notebook)
  stage = 'sync of provider A (YNotebook)'
  await connect('provider A', notebook.ydoc)
  if (notebook.cells.length === 0) {
    throw new Error(`the model sees no cells after sync (raw cells array length ${notebook.ydoc.getArray('cells').length})`)
  }
  const initial = modelCells(notebook)
  print({
    event: 'synced',
    cell_count: notebook.cells.length,
    cells: initial,
    nbformat: notebook.nbformat,
    nbformat_minor: notebook.nbformat_minor
  })

  const observerDoc = new Y.Doc()
  docs.push(observerDoc)
  stage = 'sync of provider B (plain Y.Doc)'
  await connect('provider B', observerDoc)
  const before = rawCells(observerDoc)
  if (JSON.stringify(before) !== JSON.stringify(initial)) {
    throw new Error(`provider B's raw doc differs from provider A's model after sync:\n${JSON.stringify(before)}\n${JSON.stringify(initial)}`)
  }

  // Edit through the model, as JupyterLab's editor binding and "insert cell" command do.
  stage = 'editing through the model'
  const first = notebook.cells[0]
  const nl = first.source.indexOf('\n')
  const at = nl === -1 ? first.source.length : nl // UTF-16 index, as CodeMirror/Yjs count
  first.updateSource(at, at, INSERTED)
  const expectedFirst = initial[0].source.slice(0, at) + INSERTED + initial[0].source.slice(at)
  if (first.source !== expectedFirst) throw new Error(`model did not apply updateSource: ${JSON.stringify(first.source)}`)
  const added = notebook.addCell({ cell_type: 'markdown', source: NEW_CELL_SOURCE })
  const newCell = { id: added.id, cell_type: added.cell_type, source: added.source }

  stage = 'waiting for provider B to see both edits'
  const seen = () => {
    const cells = rawCells(observerDoc)
    return cells.length === initial.length + 1 &&
      cells[0].source === expectedFirst &&
      cells[cells.length - 1].id === newCell.id &&
      cells[cells.length - 1].cell_type === 'markdown' &&
      cells[cells.length - 1].source === NEW_CELL_SOURCE
  }
  await new Promise((resolve) => {
    if (seen()) return resolve()
    const onUpdate = () => {
      if (seen()) {
        observerDoc.off('afterTransaction', onUpdate)
        resolve()
      }
    }
    observerDoc.on('afterTransaction', onUpdate)
  })
  const cells = rawCells(observerDoc)
  print({
    event: 'propagated',
    inserted: INSERTED,
    insert_offset_utf16: at,
    first_cell_source: cells[0].source,
    new_cell: newCell,
    cell_count: cells.length,
    cells
  })
  stage = 'done'
}

main().then(() => finish(0), (err) => fail(err && err.stack ? err.stack : String(err)))
