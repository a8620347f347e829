// The notebook: the list of cells bound to the doc's `cells` array, the active cell and the
// selection, the two keyboard modes, structure edits (add, delete, move, retype, paste, merge,
// split) with their own undo, outputs shown/hidden/scrolled, and runs.
import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { CellView, type CellHost } from './cell'
import { editorKeys, installCommandKeys, commandModeTarget, SHORTCUTS, type CellType, type KeyActions, type RunMode } from './keyboard'
import { KernelMonitor } from './kernel'
import { StructureHistory, applyOps, type StructureOp } from './history'
import { cellFromJson, cellToJson, cellsToNotebookJson, parseCells, type CellJson } from './model'
import type { Peer, Presence } from './presence'
import { ApiError, answerInput, execute, kernelAction, type InputRequest } from './api'
import { KernelHelp } from './help'
import { icon } from './icons'
import { confirmAction, dialog, h, randomCellId, toast } from './ui'

/** Origin of this page's structure edits (undoable through StructureHistory). */
const STRUCTURE = { name: 'crdtnb-structure' }
/** Origin of a cell this page put back because a collaborator deleted it while it was being edited. */
const RESTORE = { name: 'crdtnb-restore' }
/** Origin of output clearing and of output display settings (not undoable). */
const OUTPUTS = { name: 'crdtnb-outputs' }

// Notebooks up to this many cells build every cell at once; longer ones build a cell when it
// comes within LAZY_MARGIN_PX of the viewport (the first EAGER_CELLS right away). The check
// runs on scroll, resize and cell changes, not every frame (an IntersectionObserver on
// hundreds of cells costs every keystroke a recomputation).
const LAZY_ABOVE = 40
const EAGER_CELLS = 4
const LAZY_MARGIN_PX = 1200
const BUILD_BUDGET_MS = 8
const LINE_NUMBERS_KEY = 'crdtnb-line-numbers'

export interface NotebookOptions {
  /** Ctrl+S */
  save: () => void
}

interface LostEdit {
  id: string
  type: CellType
  text: string
  selection: { anchor: number, head: number }
  metadata: Record<string, unknown>
  index: number
}

export class NotebookView implements KeyActions {
  readonly element: HTMLElement
  private readonly list: HTMLElement
  private readonly empty: HTMLElement
  private readonly cells: Y.Array<unknown>
  private readonly views = new Map<Y.Map<unknown>, CellView>()
  private byId = new Map<string, CellView>()
  private readonly byElement = new WeakMap<Element, CellView>()
  private order: CellView[] = []
  private active: CellView | null = null
  private anchor: CellView | null = null
  private selected = new Set<CellView>()
  private activeIndex = 0
  private mode: 'command' | 'edit' = 'command'
  private readonly history: StructureHistory
  private readonly host: CellHost
  /** cells not built yet (long notebooks), and the frame that will look for visible ones */
  private readonly unbuilt = new Set<CellView>()
  private lazyFrame = 0
  private readOnly = false
  private applyingLocal = false
  private lineNumbersAll: boolean
  private clipboard: string | null = null
  private peers: Peer[] = []
  private removeKeys: () => void
  private onActiveChange: Array<(cell: CellView | null) => void> = []
  private readonly state: Y.Map<unknown>
  private readonly help: KernelHelp
  private inputCell: CellView | null = null
  private readonly onState = (event: Y.YMapEvent<unknown>): void => {
    if (event.keysChanged.has('input_request')) this.showInputRequest()
  }

  constructor (
    private readonly doc: Y.Doc,
    awareness: Awareness,
    private readonly path: string,
    private readonly presence: Presence,
    readonly kernel: KernelMonitor,
    private readonly options: NotebookOptions
  ) {
    this.cells = doc.getArray('cells')
    this.state = doc.getMap('state')
    this.help = new KernelHelp(() => this.path, this.cells)
    this.history = new StructureHistory(doc, this.cells, (cell) => this.isBusy(cell), STRUCTURE)
    this.lineNumbersAll = localStorage.getItem(LINE_NUMBERS_KEY) === 'true'
    const keys = editorKeys(this)
    this.host = {
      awareness,
      keys,
      readOnly: () => this.readOnly,
      lineNumbers: () => this.lineNumbersAll,
      activate: (cell, edit, extend) => this.setActive(cell, edit ? 'edit' : 'command', { focus: !edit, extend }),
      run: (cell) => { this.setActive(cell, cell === this.active ? this.mode : 'command'); this.run('stay') },
      move: (cell, delta) => { if (!this.selected.has(cell)) this.setActive(cell, 'command'); this.move(delta) },
      remove: (cell) => { if (!this.selected.has(cell)) this.setActive(cell, 'command'); this.deleteSelected() },
      changeType: (cell, type) => { this.setActive(cell, 'command'); this.changeType(type) },
      setOutputsHidden: (cell, hidden) => this.setOutputsHidden([cell], hidden),
      setOutputsScrolled: (cell, scrolled) => this.setOutputsScrolled([cell], scrolled),
      help: this.help,
      answerInput: async (request, value) => await this.answerInput(request, value)
    }
    this.list = h('div', { class: 'cells' })
    this.empty = h('div', { class: 'empty-notebook', hidden: true },
      h('p', {}, 'This notebook has no cells.'),
      h('button', { type: 'button', class: 'btn', onclick: () => this.insertAt(0, 'code') }, icon('plus'), ' Code cell'),
      h('button', { type: 'button', class: 'btn', onclick: () => this.insertAt(0, 'markdown') }, icon('plus'), ' Markdown cell'))
    this.element = h('main', { class: 'notebook', 'aria-label': 'Notebook' }, this.list, this.empty)
    window.addEventListener('scroll', this.scheduleBuild, { passive: true })
    window.addEventListener('resize', this.scheduleBuild)
    this.cells.observe((event) => this.reconcile(event.transaction))
    this.removeKeys = installCommandKeys(this)
    document.addEventListener('focusin', this.onFocusIn)
    document.addEventListener('copy', this.onCopy)
    document.addEventListener('cut', this.onCut)
    document.addEventListener('paste', this.onPaste)
    presence.onChange((peers) => this.showPeers(peers))
    kernel.onPending((ids) => {
      for (const view of this.order) view.setPending(ids.has(view.id))
    })
    kernel.onPermissions((mayExecute) => {
      this.help.setMayExecute(mayExecute)
      this.showInputRequest()
    })
    this.state.observe(this.onState)
    this.reconcile(null)
    this.showInputRequest()
  }

  // -- input requests ----------------------------------------------------------------

  /** A running cell waits for input (`state.input_request`): the prompt shows under it, on
   * every page; those who may run code can answer it. */
  private showInputRequest (): void {
    const raw = this.state.get('input_request')
    const request = raw && typeof raw === 'object' && !(raw instanceof Y.AbstractType) ? raw as InputRequest : null
    const view = request ? this.byId.get(request.cell_id) ?? null : null
    if (this.inputCell && this.inputCell !== view) this.inputCell.showInputRequest(null, false)
    this.inputCell = view
    view?.showInputRequest(request, !this.readOnly && this.kernel.mayExecute !== false)
  }

  private async answerInput (request: InputRequest, value: string): Promise<boolean> {
    try {
      await answerInput(this.path, request.id, value)
      return true
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) {
        toast('Someone answered first, or the cell is no longer waiting', 'error')
        return false
      }
      toast(describeKernelError(error, 'send the input'), 'error')
      return false
    }
  }

  // -- following the doc ---------------------------------------------------------

  private reconcile (transaction: Y.Transaction | null): void {
    const maps = this.cells.toArray().filter((item): item is Y.Map<unknown> => item instanceof Y.Map)
    const present = new Set(maps)
    const first = this.views.size === 0
    let lost: LostEdit | null = null
    for (const [ymap, view] of this.views) {
      if (!present.has(ymap)) {
        if (view === this.active && this.mode === 'edit' && view.editor?.hasFocus && !this.applyingLocal &&
            !this.readOnly && transaction !== null && !transaction.local) {
          lost = this.captureEdit(view)
        }
        this.unbuilt.delete(view)
        view.destroy()
        this.views.delete(ymap)
        this.selected.delete(view)
      }
    }
    const eager = maps.length <= LAZY_ABOVE
    const order: CellView[] = []
    const byId = new Map<string, CellView>()
    let cursor: ChildNode | null = this.list.firstChild
    for (const ymap of maps) {
      let view = this.views.get(ymap)
      if (!view) {
        view = new CellView(ymap, this.host)
        this.views.set(ymap, view)
        this.byElement.set(view.element, view)
        if (eager || (first && order.length < EAGER_CELLS)) view.materialize()
        else this.unbuilt.add(view)
      }
      order.push(view)
      byId.set(view.id, view)
      if (view.element !== cursor) this.list.insertBefore(view.element, cursor)
      else cursor = cursor.nextSibling
    }
    this.order = order
    this.byId = byId
    this.empty.hidden = order.length > 0
    const pending = this.kernel.pending
    for (const view of order) view.setPending(pending.has(view.id))
    if (this.anchor && !this.views.has(this.anchor.ymap)) this.anchor = null
    if (lost) {
      this.keepEditing(lost)
      return
    }
    if (this.active && !this.views.has(this.active.ymap)) {
      // The active cell went away (deleted here or elsewhere): select its neighbour.
      this.active = null
      const next = order[Math.min(this.activeIndex, order.length - 1)] ?? null
      if (next) this.setActive(next, 'command', { focus: this.mode === 'command' && this.pageHasFocus() })
    } else if (!this.active && order.length) {
      this.setActive(order[0], 'command', { focus: false })
    }
    if (this.active) this.activeIndex = order.indexOf(this.active)
    this.showSelection()
    this.showPeers(this.peers)
    if (this.state.has('input_request') || this.inputCell) this.showInputRequest()
    if (this.unbuilt.size) this.scheduleBuild()
  }

  private readonly scheduleBuild = (): void => {
    if (this.lazyFrame || !this.unbuilt.size) return
    this.lazyFrame = requestAnimationFrame(() => {
      this.lazyFrame = 0
      this.buildNearViewport()
    })
  }

  /** Build the cells within LAZY_MARGIN_PX of the viewport, the visible ones first, for at
   * most BUILD_BUDGET_MS a frame (reads first, then writes; the rest in the next frames). */
  private buildNearViewport (): void {
    for (const view of this.unbuilt) if (view.isMaterialized) this.unbuilt.delete(view)
    if (!this.unbuilt.size) return
    const height = window.innerHeight
    const top = -LAZY_MARGIN_PX
    const bottom = height + LAZY_MARGIN_PX
    const order = this.order
    // the first cell whose bottom is below `top` (cells are in document order)
    let lo = 0
    let hi = order.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (order[mid].element.getBoundingClientRect().bottom < top) lo = mid + 1
      else hi = mid
    }
    const near: Array<{ view: CellView, distance: number }> = []
    for (let i = lo; i < order.length; i++) {
      const rect = order[i].element.getBoundingClientRect()
      if (rect.top > bottom) break
      if (this.unbuilt.has(order[i])) {
        near.push({ view: order[i], distance: rect.bottom < 0 ? -rect.bottom : rect.top > height ? rect.top - height : 0 })
      }
    }
    near.sort((a, b) => a.distance - b.distance)
    const deadline = performance.now() + BUILD_BUDGET_MS
    let built = 0
    for (const { view } of near) {
      if (built > 0 && performance.now() > deadline) break
      view.materialize()
      this.unbuilt.delete(view)
      built++
    }
    // built cells grow, and some may be left: look again next frame
    if (built) this.scheduleBuild()
  }

  private captureEdit (view: CellView): LostEdit {
    const editor = view.editor
    const sel = editor?.state.selection.main
    return {
      id: view.id,
      type: view.type,
      text: editor ? editor.state.doc.toString() : view.source,
      selection: { anchor: sel?.anchor ?? 0, head: sel?.head ?? 0 },
      metadata: view.metadataSnapshot,
      index: this.activeIndex
    }
  }

  /**
   * A collaborator deleted (or re-created, moving it) the cell this page is typing in. The
   * typing must not turn into command-mode keys, and what was typed must not be lost: the
   * cell comes back where it was, with the text this page holds, and the editor keeps focus.
   * This runs inside the doc's observer, before the browser hands the page its next key.
   */
  private keepEditing (lost: LostEdit): void {
    this.active = null
    const moved = this.byId.get(lost.id)
    if (moved) {
      if (moved.source !== lost.text) {
        this.doc.transact(() => applyOps(this.cells, [{ kind: 'source', id: lost.id, text: lost.text }], () => false), RESTORE)
      }
    } else {
      const cell: CellJson = { id: lost.id, cell_type: lost.type, source: lost.text, metadata: lost.metadata }
      const index = Math.max(0, Math.min(lost.index, this.cells.length))
      this.doc.transact(() => this.cells.insert(index, [cellFromJson(cell)]), RESTORE)
      toast('A collaborator deleted the cell you were typing in: it was kept, with your text')
    }
    // the doc's observers run after this one returns: build the view now, focus it now
    this.reconcile(null)
    const view = this.byId.get(lost.id)
    if (!view) return
    this.mode = 'edit'
    if (view.type === 'markdown') view.startEditing(null)
    this.setActive(view, 'edit', { focus: false })
    view.focusEditor(null, lost.selection)
  }

  private pageHasFocus (): boolean {
    return document.activeElement === document.body || this.element.contains(document.activeElement)
  }

  private readonly onFocusIn = (event: FocusEvent): void => {
    const target = event.target as HTMLElement
    const cellEl = target.closest?.('.cell')
    if (!cellEl || !this.list.contains(cellEl)) return
    const view = this.byElement.get(cellEl)
    if (view && this.views.has(view.ymap)) this.setActive(view, target.closest('.cm-editor') ? 'edit' : 'command', { focus: false, keepSelection: view === this.active })
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

  private isBusy (cell: Y.Map<unknown>): boolean {
    return cell.get('execution_state') === 'running' || this.kernel.pending.has(String(cell.get('id')))
  }

  // -- selection and modes -------------------------------------------------------

  get activeCell (): CellView | null {
    return this.active
  }

  onActive (listener: (cell: CellView | null) => void): void {
    this.onActiveChange.push(listener)
  }

  /** The selected cells in notebook order (the active cell alone unless a range is selected). */
  selectedViews (): CellView[] {
    if (!this.active) return []
    if (!this.anchor || this.anchor === this.active) return [this.active]
    const a = this.order.indexOf(this.anchor)
    const b = this.order.indexOf(this.active)
    if (a < 0 || b < 0) return [this.active]
    return this.order.slice(Math.min(a, b), Math.max(a, b) + 1)
  }

  private showSelection (): void {
    const now = new Set(this.selectedViews())
    if (now.size <= 1) now.clear() // one cell is just the active one
    for (const view of this.selected) if (!now.has(view)) view.setSelected(false)
    for (const view of now) if (!this.selected.has(view)) view.setSelected(true)
    this.selected = now
    this.element.classList.toggle('multi-select', now.size > 1)
  }

  setActive (view: CellView, mode: 'command' | 'edit', options: { focus?: boolean, extend?: boolean, keepSelection?: boolean } = {}): void {
    const changed = this.active !== view
    if (options.extend) {
      this.anchor ??= this.active ?? view
    } else if (!options.keepSelection) {
      this.anchor = null
    }
    if (mode === 'edit') this.anchor = null
    if (this.active && changed) this.active.setActive(false, false)
    this.active = view
    this.activeIndex = this.order.indexOf(view)
    this.mode = mode
    view.setActive(true, mode === 'edit')
    this.showSelection()
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
    if (!target) {
      if (this.anchor) this.setActive(this.active, 'command') // collapse the selection
      return false
    }
    if (edit && !(target.type === 'markdown' && !target.isEditing)) {
      this.setActive(target, 'edit', { focus: false })
      target.focusEditor(edit)
    } else {
      this.setActive(target, 'command')
    }
    return true
  }

  extendSelection (delta: number): void {
    if (!this.active) return
    const target = this.order[this.order.indexOf(this.active) + delta]
    if (target) this.setActive(target, 'command', { extend: true })
  }

  selectAll (): void {
    if (!this.order.length) return
    this.anchor = this.order[0]
    this.setActive(this.order[this.order.length - 1], 'command', { keepSelection: true })
  }

  // -- structure edits -------------------------------------------------------------

  private guardWrite (): boolean {
    if (this.readOnly) toast('This notebook is read-only for you', 'error')
    return !this.readOnly
  }

  private runOps (ops: StructureOp[]): void {
    this.applyingLocal = true
    try {
      this.history.run(ops)
    } finally {
      this.applyingLocal = false
    }
  }

  insertAt (index: number, type: CellType, edit = true): CellView | null {
    if (!this.guardWrite()) return null
    const at = Math.max(0, Math.min(index, this.order.length))
    const cell: CellJson = { id: randomCellId(), cell_type: type, source: '', metadata: {} }
    this.runOps([{ kind: 'insert', cells: [cell], outputs: false, after: this.order[at - 1]?.id ?? null, before: this.order[at]?.id ?? null, index: at }])
    const view = this.byId.get(cell.id as string) ?? null
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
    const selected = this.selectedViews()
    if (!selected.length) {
      this.insertAt(this.order.length, type, edit)
      return
    }
    const index = where === 'above' ? this.order.indexOf(selected[0]) : this.order.indexOf(selected[selected.length - 1]) + 1
    this.insertAt(index, type, edit)
  }

  deleteSelected (): void {
    const selected = this.selectedViews()
    if (!selected.length || !this.guardWrite()) return
    const index = this.order.indexOf(selected[0])
    this.mode = 'command'
    this.anchor = null
    this.runOps([{ kind: 'remove', ids: selected.map((v) => v.id) }])
    const next = this.order[Math.min(index, this.order.length - 1)]
    if (next && next !== this.active) this.setActive(next, 'command', { focus: this.pageHasFocus() })
  }

  move (delta: -1 | 1): void {
    const selected = this.selectedViews()
    if (!selected.length || !this.guardWrite()) return
    const ids = selected.map((v) => v.id)
    const wasEditing = this.mode === 'edit' && selected.length === 1
    const activeId = this.active?.id
    const anchorId = this.anchor?.id
    this.runOps([{ kind: 'move', ids, delta }])
    // the moved cells kept their ids; their views may be new (re-created cells)
    const active = activeId ? this.byId.get(activeId) : undefined
    if (!active) return
    this.anchor = anchorId ? this.byId.get(anchorId) ?? null : null
    if (wasEditing) {
      if (this.active !== active) active.startEditing(null)
      this.setActive(active, 'edit', { focus: false })
      active.focusEditor(null)
    } else {
      this.setActive(active, 'command', { keepSelection: true })
    }
    active.element.scrollIntoView({ block: 'nearest' })
  }

  changeType (type: CellType): void {
    const selected = this.selectedViews().filter((v) => v.type !== type)
    if (!selected.length || !this.guardWrite()) return
    const activeId = this.active?.id
    const replaced = new Map<string, string>()
    const ops: StructureOp[] = []
    for (const view of selected) {
      const json = cellToJson(view.ymap, { outputs: false })
      const retyped: CellJson = { ...json, id: randomCellId(), cell_type: type }
      if (type === 'code') delete retyped.attachments
      else { delete retyped.outputs; delete retyped.execution_count }
      replaced.set(view.id, retyped.id as string)
      ops.push({ kind: 'insert', cells: [retyped], outputs: false, after: view.id, before: null, index: this.order.indexOf(view) + 1 })
      ops.push({ kind: 'remove', ids: [view.id] })
    }
    const anchorId = this.anchor?.id
    this.runOps(ops)
    const active = this.byId.get(replaced.get(activeId ?? '') ?? activeId ?? '')
    this.anchor = anchorId ? this.byId.get(replaced.get(anchorId) ?? anchorId) ?? null : null
    if (active) this.setActive(active, 'command', { keepSelection: true })
  }

  // -- clipboard ---------------------------------------------------------------------

  private clipboardJson (): string {
    return cellsToNotebookJson(this.selectedViews().map((v) => cellToJson(v.ymap)))
  }

  copyCells (): void {
    const views = this.selectedViews()
    if (!views.length) return
    const json = this.clipboardJson()
    this.clipboard = json
    // The system clipboard, as nbformat JSON; this page remembers it too (no clipboard access
    // outside secure contexts, or when the browser refuses).
    navigator.clipboard?.writeText(json).catch(() => {})
    toast(`Copied ${views.length} cell${views.length === 1 ? '' : 's'}`)
  }

  cutCells (): void {
    if (!this.selectedViews().length || !this.guardWrite()) return
    this.copyCells()
    this.deleteSelected()
  }

  async pasteCells (where: 'above' | 'below'): Promise<void> {
    if (!this.guardWrite()) return
    let text: string | null = null
    try {
      text = navigator.clipboard ? await navigator.clipboard.readText() : null
    } catch {
      text = null // reading was refused: this page's own copy, if any
    }
    this.pasteText(text ?? this.clipboard, where)
  }

  private pasteText (text: string | null, where: 'above' | 'below'): void {
    let parsed: CellJson[] | null = null
    try {
      parsed = text ? parseCells(JSON.parse(text)) : null
    } catch {
      parsed = null
    }
    if (!parsed) {
      toast('The clipboard holds no cells (copy cells with c or x)', 'error')
      return
    }
    // Pasted cells are new cells: no outputs, no execution count (the kernel agent alone
    // writes those). A cell keeps its id unless that id is in the notebook already.
    const used = new Set(this.order.map((v) => v.id))
    const cells = parsed.map((cell) => {
      const id = cell.id && !used.has(cell.id) ? cell.id : randomCellId()
      used.add(id)
      const { outputs: _outputs, execution_count: _count, ...rest } = cell
      return { ...rest, id }
    })
    const selected = this.selectedViews()
    let after: string | null = null
    let before: string | null = null
    let index = this.order.length
    if (selected.length) {
      if (where === 'below') {
        after = selected[selected.length - 1].id
        index = this.order.indexOf(selected[selected.length - 1]) + 1
      } else {
        before = selected[0].id
        index = this.order.indexOf(selected[0])
      }
    }
    this.runOps([{ kind: 'insert', cells, outputs: false, after, before, index }])
    const firstView = this.byId.get(cells[0].id)
    const lastView = this.byId.get(cells[cells.length - 1].id)
    if (firstView && lastView) {
      this.anchor = null
      this.setActive(lastView, 'command')
      if (firstView !== lastView) this.setActive(firstView, 'command', { extend: true })
    }
  }

  private readonly onCopy = (event: ClipboardEvent): void => {
    if (!this.commandKeysApply(event)) return
    event.preventDefault()
    const json = this.clipboardJson()
    this.clipboard = json
    event.clipboardData?.setData('text/plain', json)
  }

  private readonly onCut = (event: ClipboardEvent): void => {
    if (!this.commandKeysApply(event) || !this.guardWrite()) return
    this.onCopy(event)
    this.deleteSelected()
  }

  private readonly onPaste = (event: ClipboardEvent): void => {
    if (!this.commandKeysApply(event) || !this.guardWrite()) return
    event.preventDefault()
    this.pasteText(event.clipboardData?.getData('text/plain') ?? null, 'below')
  }

  /** A copy/cut/paste event is about cells when no editor, field or text selection has it. */
  private commandKeysApply (event: Event): boolean {
    if (!this.active || !commandModeTarget(event.target) || !commandModeTarget(document.activeElement)) return false
    const selection = window.getSelection()
    return !selection || selection.isCollapsed
  }

  // -- merge, split ------------------------------------------------------------------

  mergeCells (): void {
    if (!this.guardWrite()) return
    let views = this.selectedViews()
    if (views.length === 1) {
      const below = this.order[this.order.indexOf(views[0]) + 1]
      if (!below) return
      views = [views[0], below]
    }
    if (views.length < 2) return
    const [first, ...rest] = views
    const text = views.map((v) => v.source).join('\n\n')
    this.anchor = null
    this.runOps([{ kind: 'source', id: first.id, text }, { kind: 'remove', ids: rest.map((v) => v.id) }])
    const merged = this.byId.get(first.id)
    if (merged) this.setActive(merged, 'command')
  }

  splitCell (): void {
    const view = this.active
    const editor = view?.editor
    if (!view || !editor || !this.guardWrite()) return
    const text = editor.state.doc.toString()
    const { from, to } = editor.state.selection.main
    const cuts = from === to ? [from] : [from, to]
    const pieces: string[] = []
    let start = 0
    for (const cut of cuts) {
      pieces.push(text.slice(start, cut))
      start = cut
    }
    pieces.push(text.slice(start))
    // the line break at a cut belongs to neither piece
    const trimmed = pieces.map((piece, i) => {
      let p = piece
      if (i > 0) p = p.replace(/^\r?\n/, '')
      if (i < pieces.length - 1) p = p.replace(/\r?\n$/, '')
      return p
    })
    const type = view.type
    const metadata = cellToJson(view.ymap, { outputs: false }).metadata
    const added: CellJson[] = trimmed.slice(1).map((source) => ({ id: randomCellId(), cell_type: type, source, metadata: { ...metadata } }))
    this.runOps([
      { kind: 'source', id: view.id, text: trimmed[0] },
      { kind: 'insert', cells: added, outputs: false, after: view.id, before: null, index: this.order.indexOf(view) + 1 }
    ])
    const next = this.byId.get(added[0].id as string)
    if (next) {
      next.startEditing('start')
      this.setActive(next, 'edit', { focus: false })
    }
  }

  // -- outputs -------------------------------------------------------------------------

  private codeCells (views: CellView[]): CellView[] {
    return views.filter((v) => v.type === 'code')
  }

  setOutputsHidden (views: CellView[], hidden: boolean): void {
    if (!this.guardWrite()) return
    this.doc.transact(() => {
      for (const view of this.codeCells(views)) {
        const metadata = view.ymap.get('metadata')
        if (!(metadata instanceof Y.Map)) continue
        const jupyter = metadata.get('jupyter')
        const lab = typeof jupyter === 'object' && jupyter !== null ? { ...(jupyter as Record<string, unknown>) } : {}
        if (hidden) {
          metadata.set('collapsed', true)
          metadata.set('jupyter', { ...lab, outputs_hidden: true })
        } else {
          if (metadata.has('collapsed')) metadata.delete('collapsed')
          if ('outputs_hidden' in lab) {
            delete lab.outputs_hidden
            if (Object.keys(lab).length) metadata.set('jupyter', lab)
            else metadata.delete('jupyter')
          }
        }
      }
    }, OUTPUTS)
  }

  setOutputsScrolled (views: CellView[], scrolled: boolean): void {
    if (!this.guardWrite()) return
    this.doc.transact(() => {
      for (const view of this.codeCells(views)) {
        const metadata = view.ymap.get('metadata')
        if (metadata instanceof Y.Map) metadata.set('scrolled', scrolled)
      }
    }, OUTPUTS)
  }

  toggleOutputs (): void {
    const views = this.codeCells(this.selectedViews())
    if (!views.length) return
    this.setOutputsHidden(views, !views.every((v) => v.outputsHidden))
  }

  toggleOutputScrolling (): void {
    const views = this.codeCells(this.selectedViews())
    if (!views.length) return
    const scrolledNow = views.every((v) => v.element.classList.contains('outputs-scrolled'))
    this.setOutputsScrolled(views, !scrolledNow)
  }

  /** Delete the outputs and the execution count of these cells (all code cells by default).
   * The server lets any writer clear outputs; nothing else about them. Not undoable. */
  clearOutputs (views: CellView[] = this.order): void {
    if (!this.guardWrite()) return
    this.doc.transact(() => {
      for (const view of this.codeCells(views)) {
        const outputs = view.ymap.get('outputs')
        if (outputs instanceof Y.Array && outputs.length) outputs.delete(0, outputs.length)
        if (view.ymap.get('execution_count') !== null && view.ymap.has('execution_count')) view.ymap.set('execution_count', null)
      }
    }, OUTPUTS)
  }

  clearSelectedOutputs (): void {
    this.clearOutputs(this.selectedViews())
  }

  toggleLineNumbers (all: boolean): void {
    if (all) {
      this.lineNumbersAll = !this.lineNumbersAll
      localStorage.setItem(LINE_NUMBERS_KEY, String(this.lineNumbersAll))
      for (const view of this.order) view.setLineNumbers(this.lineNumbersAll)
      return
    }
    const views = this.selectedViews()
    const on = !(this.active?.lineNumbers ?? false)
    for (const view of views) view.setLineNumbers(on)
  }

  showHelp (): void {
    const body = h('div', { class: 'shortcut-help' })
    for (const [title, rows] of SHORTCUTS) {
      body.append(h('h3', {}, title), h('table', {}, h('tbody', {}, ...rows.map(([keys, what]) =>
        h('tr', {}, h('td', {}, h('kbd', {}, keys)), h('td', {}, what))))))
    }
    void dialog('Keyboard shortcuts', body, [{ label: 'Close', value: 'close', primary: true }], true)
  }

  save (): void {
    this.options.save()
  }

  undoCells (): void {
    if (!this.guardWrite()) return
    this.applyingLocal = true
    try {
      const result = this.history.undo()
      if (result === 'empty') toast('Nothing to undo')
      else if (result === 'noop') toast('Nothing left to undo there: a collaborator changed it back already')
    } finally {
      this.applyingLocal = false
    }
  }

  redoCells (): void {
    if (!this.guardWrite()) return
    this.applyingLocal = true
    try {
      const result = this.history.redo()
      if (result === 'empty') toast('Nothing to redo')
      else if (result === 'noop') toast('Nothing left to redo there: a collaborator changed it already')
    } finally {
      this.applyingLocal = false
    }
  }

  setReadOnly (readOnly: boolean): void {
    if (this.readOnly === readOnly) return
    this.readOnly = readOnly
    for (const view of this.order) view.refreshEditor()
    this.showInputRequest()
  }

  // -- execution -----------------------------------------------------------------

  run (mode: RunMode): void {
    const views = this.selectedViews()
    if (!views.length) return
    for (const view of views) if (view.type === 'markdown') view.stopEditing()
    const code = this.codeCells(views)
    if (code.length) void this.execute(code)
    const last = views[views.length - 1]
    const index = this.order.indexOf(last)
    if (mode === 'stay') {
      if (this.active && this.active.type !== 'code') this.setActive(this.active, 'command', { keepSelection: true })
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
    this.runCells(this.order)
  }

  /** Every cell above the selection (not the selection itself), as JupyterLab's "Run All Above". */
  runAbove (): void {
    const first = this.selectedViews()[0]
    if (first) this.runCells(this.order.slice(0, this.order.indexOf(first)))
  }

  /** The selection and every cell below it. */
  runBelow (): void {
    const first = this.selectedViews()[0]
    if (first) this.runCells(this.order.slice(this.order.indexOf(first)))
  }

  private runCells (views: CellView[]): void {
    for (const view of views) if (view.type === 'markdown') view.stopEditing()
    const code = this.codeCells(views)
    if (code.length) void this.execute(code)
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

  async kernelCommand (action: 'interrupt' | 'restart'): Promise<boolean> {
    let done = false
    try {
      await kernelAction(this.path, action)
      toast(action === 'interrupt' ? 'Interrupt sent' : 'Kernel restarting')
      done = true
    } catch (error) {
      toast(describeKernelError(error, action), 'error')
    }
    void this.kernel.refresh()
    return done
  }

  interrupt (): void {
    void this.kernelCommand('interrupt')
  }

  restart (): void {
    void (async () => {
      if (await confirmAction('Restart the kernel?', 'Every variable of the running kernel is lost. The outputs stay.', 'Restart')) {
        await this.kernelCommand('restart')
      }
    })()
  }

  restartAndRunAll (): void {
    void (async () => {
      if (!await confirmAction('Restart the kernel and run all cells?', 'Every variable of the running kernel is lost; then every code cell runs, top to bottom.', 'Restart and run all')) return
      if (await this.kernelCommand('restart')) this.runAll()
    })()
  }

  destroy (): void {
    this.state.unobserve(this.onState)
    this.removeKeys()
    document.removeEventListener('focusin', this.onFocusIn)
    document.removeEventListener('copy', this.onCopy)
    document.removeEventListener('cut', this.onCut)
    document.removeEventListener('paste', this.onPaste)
    window.removeEventListener('scroll', this.scheduleBuild)
    window.removeEventListener('resize', this.scheduleBuild)
    if (this.lazyFrame) cancelAnimationFrame(this.lazyFrame)
    for (const view of this.views.values()) view.destroy()
    this.views.clear()
  }
}

export function describeKernelError (error: unknown, what: string): string {
  if (error instanceof ApiError) {
    if (error.status === 404 || error.status === 405) return `Cannot ${what}: this server has no kernel support`
    if (error.status === 403) return `Cannot ${what}: not allowed`
    return `Cannot ${what}: ${error.message}`
  }
  return `Cannot ${what}: ${error instanceof Error ? error.message : String(error)}`
}
