// Creating cells the way @jupyter/ydoc does (jupyter_ydoc schema 2.0.0), so JupyterLab and
// the Python side read them unchanged; cells as nbformat JSON and back (clipboard, undo).
import * as Y from 'yjs'
import type { CellType } from './keyboard'
import { randomCellId } from './ui'

/** A cell as nbformat JSON (what the clipboard carries and the structure undo remembers). */
export interface CellJson {
  id?: string
  cell_type: CellType
  source: string
  metadata: Record<string, unknown>
  attachments?: Record<string, unknown>
  outputs?: Array<Record<string, unknown>>
  execution_count?: number | null
}

/** A new cell as a prelim Y.Map: id, cell_type, source (Y.Text), metadata (Y.Map), and for
 * code cells outputs (empty Y.Array), execution_count null, execution_state "idle". */
export function newCellMap (type: CellType, source = '', metadata?: Y.Map<unknown>, id?: string): Y.Map<unknown> {
  const cell = new Y.Map<unknown>()
  cell.set('id', id ?? randomCellId())
  cell.set('cell_type', type)
  cell.set('source', new Y.Text(source))
  cell.set('metadata', metadata ?? new Y.Map())
  if (type === 'code') {
    cell.set('outputs', new Y.Array())
    cell.set('execution_count', null)
    cell.set('execution_state', 'idle')
  }
  return cell
}

/** A deep copy of a cell (same id, source, outputs, state) for moving it: Y.Array has no move,
 * so a move is a delete plus an insert of the copy, in one transaction (as @jupyter/ydoc does). */
export function cloneCell (cell: Y.Map<unknown>): Y.Map<unknown> {
  return cell.clone()
}

/** The cell with another type: same source and metadata, a new id (as JupyterLab does). */
export function retypedCell (cell: Y.Map<unknown>, type: CellType): Y.Map<unknown> {
  const metadata = cell.get('metadata')
  return newCellMap(type, sourceOf(cell), metadata instanceof Y.Map ? metadata.clone() : undefined)
}

export function sourceOf (cell: Y.Map<unknown>): string {
  const source = cell.get('source')
  return source instanceof Y.Text ? source.toString() : String(source ?? '')
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function plainJson (value: unknown): unknown {
  if (value instanceof Y.Map || value instanceof Y.Array) return value.toJSON()
  if (value instanceof Y.Text) return value.toString()
  return value
}

/** A cell of the doc as nbformat JSON; `outputs: false` leaves out outputs and the count. */
export function cellToJson (cell: Y.Map<unknown>, { outputs = true } = {}): CellJson {
  const type = cell.get('cell_type')
  const cellType: CellType = type === 'markdown' || type === 'raw' ? type : 'code'
  const metadata = plainJson(cell.get('metadata'))
  const json: CellJson = {
    id: String(cell.get('id') ?? ''),
    cell_type: cellType,
    source: sourceOf(cell),
    metadata: isRecord(metadata) ? metadata : {}
  }
  const attachments = plainJson(cell.get('attachments'))
  if (cellType !== 'code' && isRecord(attachments) && Object.keys(attachments).length) json.attachments = attachments
  if (cellType === 'code') {
    const list = plainJson(cell.get('outputs'))
    json.outputs = outputs && Array.isArray(list) ? list.filter(isRecord) : []
    const count = cell.get('execution_count')
    json.execution_count = outputs && typeof count === 'number' ? count : null
  }
  return json
}

/** An nbformat output as the Y.Map the schema wants (a stream's text as Y.Text). */
function outputMap (output: Record<string, unknown>): Y.Map<unknown> {
  const map = new Y.Map<unknown>()
  for (const [key, value] of Object.entries(output)) {
    if (key === 'text' && output.output_type === 'stream') {
      map.set(key, new Y.Text(Array.isArray(value) ? value.join('') : String(value ?? '')))
    } else {
      map.set(key, value)
    }
  }
  return map
}

/** A prelim Y.Map from nbformat JSON. Outputs are kept only with `outputs: true` (undo of
 * this page's own delete); pasted cells come without them, as new cells. */
export function cellFromJson (json: CellJson, { id, outputs = false }: { id?: string, outputs?: boolean } = {}): Y.Map<unknown> {
  const metadata = new Y.Map<unknown>()
  for (const [key, value] of Object.entries(json.metadata ?? {})) metadata.set(key, value)
  const cell = newCellMap(json.cell_type, json.source, metadata, id ?? json.id)
  if (json.cell_type !== 'code' && json.attachments && Object.keys(json.attachments).length) {
    cell.set('attachments', json.attachments)
  }
  if (json.cell_type === 'code' && outputs) {
    const list = new Y.Array<unknown>()
    list.push((json.outputs ?? []).map(outputMap))
    cell.set('outputs', list)
    cell.set('execution_count', typeof json.execution_count === 'number' ? json.execution_count : null)
  }
  return cell
}

/** Cells read from untrusted JSON (the clipboard): a notebook, a list of cells or one cell.
 * Returns null when it is none of these. Sources given as lists of lines are joined. */
export function parseCells (value: unknown): CellJson[] | null {
  const list = isRecord(value) && Array.isArray(value.cells) ? value.cells : Array.isArray(value) ? value : isRecord(value) && 'cell_type' in value ? [value] : null
  if (!list || list.length === 0) return null
  const cells: CellJson[] = []
  for (const raw of list) {
    if (!isRecord(raw)) return null
    const type = raw.cell_type
    if (type !== 'code' && type !== 'markdown' && type !== 'raw') return null
    const source = Array.isArray(raw.source) ? raw.source.map(String).join('') : typeof raw.source === 'string' ? raw.source : null
    if (source === null) return null
    const cell: CellJson = { cell_type: type, source, metadata: isRecord(raw.metadata) ? raw.metadata : {} }
    if (typeof raw.id === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(raw.id)) cell.id = raw.id
    if (type !== 'code' && isRecord(raw.attachments)) cell.attachments = raw.attachments
    cells.push(cell)
  }
  return cells
}

/** Cells as an nbformat 4.5 notebook (what C and X put on the clipboard). */
export function cellsToNotebookJson (cells: CellJson[]): string {
  return JSON.stringify({ nbformat: 4, nbformat_minor: 5, metadata: {}, cells }, null, 1)
}
