// Structure edits of the cell list (insert, remove, move, change a source) and their undo.
//
// Every structure edit this page makes is a list of operations addressed by cell id, applied in
// one transaction; applying an operation returns its inverse, computed at that moment (what a
// removal took away, where it was). Undo applies the inverse, so it is placed by ids: a cell
// that was deleted comes back after the cell that was before it, wherever that cell is now.
// (Y.UndoManager places restored items next to the deleted items they replaced, so a deleted
// cell came back at the wrong place, e.g. at the end, once a collaborator had re-created a
// neighbour by changing its type or moving it.)
import * as Y from 'yjs'
import { cellFromJson, cellToJson, cloneCell, type CellJson } from './model'

export type StructureOp =
  /** insert cells after the cell `after` (else before `before`, else at `index`); cells whose
   * id is already in the notebook are skipped (a collaborator put them back first) */
  | { kind: 'insert', cells: CellJson[], outputs: boolean, after: string | null, before: string | null, index: number }
  | { kind: 'remove', ids: string[] }
  /** replace a cell's source (the smallest differing middle part is rewritten) */
  | { kind: 'source', id: string, text: string }
  /** move a contiguous run of cells one place up (-1) or down (+1), keeping their ids */
  | { kind: 'move', ids: string[], delta: -1 | 1 }

/** Which of two neighbours a move may re-create: never one the kernel is writing into. */
export type BusyCheck = (cell: Y.Map<unknown>) => boolean

export function cellId (cell: unknown): string {
  return cell instanceof Y.Map ? String(cell.get('id') ?? '') : ''
}

function ids (cells: Y.Array<unknown>): string[] {
  return cells.toArray().map(cellId)
}

function setSource (cell: Y.Map<unknown>, text: string): string {
  const source = cell.get('source')
  if (!(source instanceof Y.Text)) {
    const before = String(source ?? '')
    cell.set('source', new Y.Text(text))
    return before
  }
  const before = source.toString()
  let start = 0
  while (start < before.length && start < text.length && before[start] === text[start]) start++
  let endBefore = before.length
  let endText = text.length
  while (endBefore > start && endText > start && before[endBefore - 1] === text[endText - 1]) {
    endBefore--
    endText--
  }
  if (endBefore > start) source.delete(start, endBefore - start)
  if (endText > start) source.insert(start, text.slice(start, endText))
  return before
}

/** Apply one operation to `cells` (inside a transaction); returns the operations that undo it. */
export function applyOp (cells: Y.Array<unknown>, op: StructureOp, busy: BusyCheck): StructureOp[] {
  switch (op.kind) {
    case 'insert': {
      const present = new Set(ids(cells))
      const fresh = op.cells.filter((cell) => !cell.id || !present.has(cell.id))
      if (!fresh.length) return []
      const order = ids(cells)
      let index = op.after !== null && order.includes(op.after)
        ? order.indexOf(op.after) + 1
        : op.before !== null && order.includes(op.before) ? order.indexOf(op.before) : op.index
      index = Math.max(0, Math.min(index, cells.length))
      const maps = fresh.map((cell) => cellFromJson(cell, { outputs: op.outputs }))
      cells.insert(index, maps)
      return [{ kind: 'remove', ids: maps.map(cellId) }]
    }
    case 'remove': {
      const wanted = new Set(op.ids)
      const inverse: StructureOp[] = []
      const all = cells.toArray()
      for (let i = 0; i < all.length; i++) {
        if (!wanted.has(cellId(all[i]))) continue
        inverse.push({
          kind: 'insert',
          cells: [cellToJson(all[i] as Y.Map<unknown>)],
          outputs: true,
          after: i > 0 ? cellId(all[i - 1]) : null,
          before: i + 1 < all.length ? cellId(all[i + 1]) : null,
          index: i
        })
      }
      for (let i = all.length - 1; i >= 0; i--) {
        if (wanted.has(cellId(all[i]))) cells.delete(i, 1)
      }
      return inverse
    }
    case 'source': {
      const cell = cells.toArray().find((c) => cellId(c) === op.id)
      if (!(cell instanceof Y.Map)) return []
      const before = setSource(cell, op.text)
      return before === op.text ? [] : [{ kind: 'source', id: op.id, text: before }]
    }
    case 'move': {
      const order = ids(cells)
      const positions = op.ids.map((id) => order.indexOf(id))
      if (!positions.length || positions.some((p) => p < 0)) return []
      const first = Math.min(...positions)
      const last = Math.max(...positions)
      if (last - first + 1 !== positions.length) return [] // no longer one contiguous run
      const other = op.delta < 0 ? first - 1 : last + 1
      if (other < 0 || other >= cells.length) return []
      const neighbour = cells.get(other)
      const block = cells.slice(first, last + 1)
      if (!(neighbour instanceof Y.Map) || !block.every((c): c is Y.Map<unknown> => c instanceof Y.Map)) return []
      // Y.Array has no move: one side is deleted and re-created (same id and content) on the
      // other. Re-create the neighbour, unless the kernel writes into it and not into the block.
      const moveBlock = busy(neighbour) && !block.some(busy)
      if (!moveBlock) {
        const copy = cloneCell(neighbour)
        cells.delete(other, 1)
        cells.insert(op.delta < 0 ? last : first, [copy])
      } else {
        const copies = block.map(cloneCell)
        cells.delete(first, block.length)
        cells.insert(op.delta < 0 ? other : other - block.length + 1, copies)
      }
      return [{ kind: 'move', ids: op.ids, delta: op.delta < 0 ? 1 : -1 }]
    }
  }
}

/** Apply operations in order; returns the operations that undo all of them. */
export function applyOps (cells: Y.Array<unknown>, ops: StructureOp[], busy: BusyCheck): StructureOp[] {
  const inverses = ops.map((op) => applyOp(cells, op, busy))
  return inverses.reverse().flat()
}

const LIMIT = 200

/** Undo and redo of this page's structure edits (never of other users'). */
export class StructureHistory {
  private undoStack: StructureOp[][] = []
  private redoStack: StructureOp[][] = []

  constructor (
    private readonly doc: Y.Doc,
    private readonly cells: Y.Array<unknown>,
    private readonly busy: BusyCheck,
    private readonly origin: object
  ) {}

  private apply (ops: StructureOp[]): StructureOp[] {
    let inverse: StructureOp[] = []
    this.doc.transact(() => { inverse = applyOps(this.cells, ops, this.busy) }, this.origin)
    return inverse
  }

  /** Make a structure edit; it becomes the next thing undone. */
  run (ops: StructureOp[]): void {
    const inverse = this.apply(ops)
    if (!inverse.length) return
    this.undoStack.push(inverse)
    if (this.undoStack.length > LIMIT) this.undoStack.shift()
    this.redoStack = []
  }

  /** 'empty': nothing to undo; 'noop': the step had nothing left to change (a collaborator
   * undid it already, e.g. put the deleted cell back) */
  undo (): 'done' | 'noop' | 'empty' {
    const ops = this.undoStack.pop()
    if (!ops) return 'empty'
    const inverse = this.apply(ops)
    if (!inverse.length) return 'noop'
    this.redoStack.push(inverse)
    return 'done'
  }

  redo (): 'done' | 'noop' | 'empty' {
    const ops = this.redoStack.pop()
    if (!ops) return 'empty'
    const inverse = this.apply(ops)
    if (!inverse.length) return 'noop'
    this.undoStack.push(inverse)
    return 'done'
  }
}
