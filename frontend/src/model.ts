// Creating cells the way @jupyter/ydoc does (jupyter_ydoc schema 2.0.0), so JupyterLab and
// the Python side read them unchanged.
import * as Y from 'yjs'
import type { CellType } from './keyboard'
import { randomCellId } from './ui'

/** A new cell as a prelim Y.Map: id, cell_type, source (Y.Text), metadata (Y.Map), and for
 * code cells outputs (empty Y.Array), execution_count null, execution_state "idle". */
export function newCellMap (type: CellType, source = '', metadata?: Y.Map<unknown>): Y.Map<unknown> {
  const cell = new Y.Map<unknown>()
  cell.set('id', randomCellId())
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
  const source = cell.get('source')
  const text = source instanceof Y.Text ? source.toString() : String(source ?? '')
  const metadata = cell.get('metadata')
  return newCellMap(type, text, metadata instanceof Y.Map ? metadata.clone() : undefined)
}
