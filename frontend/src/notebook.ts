// The notebook: the list of cells bound to the doc's `cells` array, the active cell, the two
// keyboard modes, structure edits (add, delete, move, retype) with their own undo, and runs.
import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { CellView, type CellHost } from './cell'
import { editorKeys, installCommandKeys, type CellType, type KeyActions, type RunMode } from './keyboard'
import { KernelMonitor } from './kernel'
import { cloneCell, newCellMap, retypedCell } from './model'
import type { Peer, Presence } from './presence'
import { ApiError, execute, kernelAction } from './api'
import { icon } from './icons'
import { h, toast } from './ui'

/** Origin of this page's structure edits: the cell UndoManager tracks only these. */
const STRUCTURE = { name: 'crdtnb-structure' }

export class NotebookView implements KeyActions {
  readonly element: HTMLElement
  private readonly list: HTMLElement
  private readonly empty: HTMLElement
  private readonly cells: Y.Array<unknown>
  private readonly views = new Map<Y.Map<unknown>, CellView>()
  private order: CellView[] = []
  private active: CellView | null = null
  private activeIndex = 0
  private mode: 'command' | 'edit' = 'command'
  private readonly undoManager: Y.UndoManager
  private readonly host: CellHost
  private readOnly = false
  private peers: Peer[] = []
  private removeKeys: () => void
  private onActiveChange: Array<(cell: CellView | null) => void> = []

  constructor (
    private readonly doc: Y.Doc,
    awareness: Awareness,
    private readonly path: string,
    private readonly presence: Presence,
    readonly kernel: KernelMonitor
  ) {
    this.cells = doc.getArray('cells')
    this.undoManager = new Y.UndoManager(this.cells, { trackedOrigins: new Set([STRUCTURE]), captureTimeout: 0 })
    const keys = editorKeys(this)
    this.host = {
      awareness,
      keys,
      readOnly: () => this.readOnly,
      activate: (cell, edit) => this.setActive(cell, edit ? 'edit' : 'command'),
      run: (cell) => { this.setActive(cell, cell === this.active ? this.mode : 'command'); this.run('stay') },
      move: (cell, delta) => { this.setActive(cell, 'command'); this.move(delta) },
      remove: (cell) => { this.setActive(cell, 'command'); this.deleteActive() },
      changeType: (cell, type) => { this.setActive(cell, 'command'); this.changeType(type) }
    }
    this.list = h('div', { class: 'cells' })
    this.empty = h('div', { class: 'empty-notebook', hidden: true },
      h('p', {}, 'This notebook has no cells.'),
      h('button', { type: 'button', class: 'btn', onclick: () => this.insertAt(0, 'code') }, icon('plus'), ' Code cell'),
      h('button', { type: 'button', class: 'btn', onclick: () => this.insertAt(0, 'markdown') }, icon('plus'), ' Markdown cell'))
    this.element = h('main', { class: 'notebook', 'aria-label': 'Notebook' }, this.list, this.empty)
    this.cells.observe(() => this.reconcile())
    this.removeKeys = installCommandKeys(this)
    document.addEventListener('focusin', this.onFocusIn)
    presence.onChange((peers) => this.showPeers(peers))
    kernel.onPending((ids) => {
      for (const view of this.order) view.setPending(ids.has(view.id))
    })
    this.reconcile()
  }

  // -- following the doc ---------------------------------------------------------

  private reconcile (): void {
    const maps = this.cells.toArray().filter((item): item is Y.Map<unknown> => item instanceof Y.Map)
    const present = new Set(maps)
    for (const [ymap, view] of this.views) {
      if (!present.has(ymap)) {
        view.destroy()
        this.views.delete(ymap)
      }
    }
    const order: CellView[] = []
    let cursor: ChildNode | null = this.list.firstChild
    for (const ymap of maps) {
      let view = this.views.get(ymap)
      if (!view) {
        view = new CellView(ymap, this.host)
        this.views.set(ymap, view)
      }
      order.push(view)
      if (view.element !== cursor) this.list.insertBefore(view.element, cursor)
      else cursor = cursor.nextSibling
    }
    this.order = order
    this.empty.hidden = order.length > 0
    const pending = this.kernel.pending
    for (const view of order) view.setPending(pending.has(view.id))
    if (this.active && !this.views.has(this.active.ymap)) {
      // The active cell went away (deleted here or elsewhere): select its neighbour.
      this.active = null
      const next = order[Math.min(this.activeIndex, order.length - 1)] ?? null
      if (next) this.setActive(next, 'command', { focus: this.mode === 'command' && this.pageHasFocus() })
    } else if (!this.active && order.length) {
      this.setActive(order[0], 'command', { focus: false })
    }
    if (this.active) this.activeIndex = order.indexOf(this.active)
    this.showPeers(this.peers)
  }

  private pageHasFocus (): boolean {
    return document.activeElement === document.body || this.element.contains(document.activeElement)
  }

  private readonly onFocusIn = (event: FocusEvent): void => {
    const target = event.target as HTMLElement
    const cellEl = target.closest?.('.cell')
    if (!cellEl || !this.list.contains(cellEl)) return
    const view = this.order.find((v) => v.element === cellEl)
    if (view) this.setActive(view, target.closest('.cm-editor') ? 'edit' : 'command', { focus: false })
  }

  private showPeers (peers: Peer[]): void {
    this.peers = peers
    const byCell = new Map<string, Peer[]>()
    for (const peer of peers) {
      if (peer.self || !peer.cell) continue
      const list = byCell.get(peer.cell) ?? []
      list.push(peer)
      byCell.set(peer.cell, list)
    }
    for (const view of this.order) view.setPeers(byCell.get(view.id) ?? [])
  }

  // -- selection and modes -------------------------------------------------------

  get activeCell (): CellView | null {
    return this.active
  }

  onActive (listener: (cell: CellView | null) => void): void {
    this.onActiveChange.push(listener)
  }

  setActive (view: CellView, mode: 'command' | 'edit', options: { focus?: boolean } = {}): void {
    const changed = this.active !== view
    if (this.active && changed) this.active.setActive(false, false)
    this.active = view
    this.activeIndex = this.order.indexOf(view)
    this.mode = mode
    view.setActive(true, mode === 'edit')
    this.presence.setActiveCell(view.id)
    if (mode === 'command' && options.focus !== false && !view.element.contains(document.activeElement)) {
      view.element.focus({ preventScroll: true })
    }
    if (changed) {
      view.element.scrollIntoView({ block: 'nearest' })
      for (const listener of this.onActiveChange) listener(view)
    }
  }

  commandMode (): void {
    if (!this.active) return
    this.setActive(this.active, 'command')
    this.active.element.focus({ preventScroll: true })
  }

  editMode (): void {
    if (!this.active || this.readOnly) return
    this.active.startEditing(null)
    this.setActive(this.active, 'edit', { focus: false })
  }

  selectRelative (delta: number, edit?: 'start' | 'end'): boolean {
    if (!this.active) {
      if (this.order.length) this.setActive(this.order[0], 'command')
      return true
    }
    const index = this.order.indexOf(this.active) + delta
    const target = this.order[index]
    if (!target) return false
    if (edit && !(target.type === 'markdown' && !target.isEditing)) {
      this.setActive(target, 'edit', { focus: false })
      target.focusEditor(edit)
    } else {
      this.setActive(target, 'command')
    }
    return true
  }

  // -- structure edits -------------------------------------------------------------

  private guardWrite (): boolean {
    if (this.readOnly) toast('This notebook is read-only for you', 'error')
    return !this.readOnly
  }

  private indexOf (view: CellView): number {
    return this.cells.toArray().indexOf(view.ymap)
  }

  insertAt (index: number, type: CellType, edit = true): CellView | null {
    if (!this.guardWrite()) return null
    const ymap = newCellMap(type)
    this.doc.transact(() => this.cells.insert(Math.max(0, Math.min(index, this.cells.length)), [ymap]), STRUCTURE)
    const view = this.views.get(ymap) ?? null
    if (view) {
      if (edit) {
        view.startEditing('start')
        this.setActive(view, 'edit', { focus: false })
      } else {
        this.setActive(view, 'command')
      }
    }
    return view
  }

  /** Insert next to the active cell: command mode (keys a/b), or editing it (toolbar). */
  insert (where: 'above' | 'below', type: CellType = 'code', edit = false): void {
    if (!this.active) {
      this.insertAt(this.cells.length, type, edit)
      return
    }
    const index = this.indexOf(this.active)
    this.insertAt(where === 'above' ? index : index + 1, type, edit)
  }

  deleteActive (): void {
    if (!this.active || !this.guardWrite()) return
    const index = this.indexOf(this.active)
    if (index < 0) return
    this.activeIndex = index
    this.mode = 'command'
    this.doc.transact(() => this.cells.delete(index, 1), STRUCTURE)
  }

  move (delta: number): void {
    if (!this.active || !this.guardWrite()) return
    const index = this.indexOf(this.active)
    const other = index + delta
    if (index < 0 || other < 0 || other >= this.cells.length || Math.abs(delta) !== 1) return
    const lo = Math.min(index, other)
    const loMap = this.cells.get(lo)
    const hiMap = this.cells.get(lo + 1)
    if (!(loMap instanceof Y.Map) || !(hiMap instanceof Y.Map)) return
    // Swapping two neighbours needs one of them re-created. Re-create the one that is neither
    // running nor queued (the kernel agent writes into it), and rather not the active one
    // (its editor and undo history stay).
    const busy = this.kernel.pending
    const isBusy = (m: Y.Map<unknown>): boolean => m.get('execution_state') === 'running' || busy.has(String(m.get('id')))
    const activeMap = this.active.ymap
    const otherMap = activeMap === loMap ? hiMap : loMap
    const recreate = isBusy(otherMap) && !isBusy(activeMap) ? activeMap : otherMap
    const wasEditing = this.mode === 'edit'
    this.doc.transact(() => {
      if (recreate === loMap) {
        const copy = cloneCell(loMap)
        this.cells.delete(lo, 1)
        this.cells.insert(lo + 1, [copy])
      } else {
        const copy = cloneCell(hiMap)
        this.cells.delete(lo + 1, 1)
        this.cells.insert(lo, [copy])
      }
    }, STRUCTURE)
    if (recreate === activeMap) {
      const view = this.order[lo + (delta > 0 ? 1 : 0)]
      if (view) {
        if (wasEditing) {
          view.startEditing(null)
          this.setActive(view, 'edit', { focus: false })
        } else {
          this.setActive(view, 'command')
        }
      }
    } else {
      this.active.element.scrollIntoView({ block: 'nearest' })
      if (wasEditing) this.active.focusEditor(null)
    }
  }

  changeType (type: CellType): void {
    if (!this.active || this.active.type === type || !this.guardWrite()) return
    const index = this.indexOf(this.active)
    if (index < 0) return
    const replacement = retypedCell(this.active.ymap, type)
    this.doc.transact(() => {
      this.cells.delete(index, 1)
      this.cells.insert(index, [replacement])
    }, STRUCTURE)
    const view = this.views.get(replacement)
    if (view) this.setActive(view, 'command')
  }

  undoCells (): void {
    if (this.guardWrite() && this.undoManager.undo() === null) toast('Nothing to undo')
  }

  redoCells (): void {
    if (this.guardWrite() && this.undoManager.redo() === null) toast('Nothing to redo')
  }

  setReadOnly (readOnly: boolean): void {
    if (this.readOnly === readOnly) return
    this.readOnly = readOnly
    for (const view of this.order) view.refreshEditor()
  }

  // -- execution -----------------------------------------------------------------

  run (mode: RunMode): void {
    const view = this.active
    if (!view) return
    if (view.type === 'markdown') view.stopEditing()
    if (view.type === 'code') void this.execute([view])
    const index = this.order.indexOf(view)
    if (mode === 'stay') {
      if (view.type !== 'code') this.setActive(view, 'command')
      return
    }
    if (mode === 'insert' || index === this.order.length - 1) {
      this.insertAt(index + 1, 'code', true)
      return
    }
    const next = this.order[index + 1]
    if (next) this.setActive(next, 'command')
  }

  runAll (): void {
    const code: CellView[] = []
    for (const view of this.order) {
      if (view.type === 'markdown') view.stopEditing()
      if (view.type === 'code') code.push(view)
    }
    void this.execute(code)
  }

  private async execute (views: CellView[]): Promise<void> {
    if (!views.length || !this.guardWrite()) return
    const ids = views.map((v) => v.id)
    for (const view of views) view.setPending(true)
    try {
      await execute(this.path, ids)
      this.kernel.submitted(ids)
    } catch (error) {
      for (const view of views) view.setPending(this.kernel.pending.has(view.id))
      this.kernel.rejected(ids)
      toast(describeKernelError(error, 'run'), 'error')
    }
  }

  async kernelCommand (action: 'interrupt' | 'restart'): Promise<void> {
    try {
      await kernelAction(this.path, action)
      toast(action === 'interrupt' ? 'Interrupt sent' : 'Kernel restarting')
    } catch (error) {
      toast(describeKernelError(error, action), 'error')
    }
    void this.kernel.refresh()
  }

  interrupt (): void {
    void this.kernelCommand('interrupt')
  }

  restart (): void {
    void this.kernelCommand('restart')
  }

  destroy (): void {
    this.removeKeys()
    document.removeEventListener('focusin', this.onFocusIn)
    for (const view of this.views.values()) view.destroy()
    this.views.clear()
    this.undoManager.destroy()
  }
}

function describeKernelError (error: unknown, what: string): string {
  if (error instanceof ApiError) {
    if (error.status === 404 || error.status === 405) return `Cannot ${what}: this server has no kernel support`
    if (error.status === 403) return `Cannot ${what}: not allowed`
    return `Cannot ${what}: ${error.message}`
  }
  return `Cannot ${what}: ${error instanceof Error ? error.message : String(error)}`
}
