// Keyboard: Jupyter's two modes.
//
// Edit mode (a cell editor has focus): Shift+Enter run and go to the next cell, Ctrl/Cmd+Enter
// run in place, Alt+Enter run and insert below, Esc command mode, Up/Down at the first/last
// line move to the previous/next cell, Ctrl+Shift+- split the cell at the cursor.
// Command mode (no editor focused): Enter edit, j/k or Down/Up select, Shift+Up/Down extend the
// selection, a/b insert above/below, d d delete, m/y/r markdown/code/raw, c/x/v/Shift+V copy,
// cut, paste below/above, Shift+M merge, o toggle outputs, Shift+O scroll outputs, l / Shift+L
// line numbers (cell / all), h help, z / Shift+Z undo/redo cell operations, i i interrupt,
// 0 0 restart, Shift+J/K move, Shift+Enter / Ctrl+Enter run, Ctrl+A select all.
// Everywhere: Ctrl/Cmd+S saves now (never the browser's "Save page" dialog).
import type { EditorView, KeyBinding } from '@codemirror/view'

export type RunMode = 'advance' | 'stay' | 'insert'
export type CellType = 'code' | 'markdown' | 'raw'

export interface KeyActions {
  run: (mode: RunMode) => void
  commandMode: () => void
  editMode: () => void
  /** select the cell `delta` away; with `edit`, put the caret at its start/end */
  selectRelative: (delta: number, edit?: 'start' | 'end') => boolean
  extendSelection: (delta: number) => void
  selectAll: () => void
  insert: (where: 'above' | 'below') => void
  deleteSelected: () => void
  changeType: (type: CellType) => void
  move: (delta: -1 | 1) => void
  copyCells: () => void
  cutCells: () => void
  pasteCells: (where: 'above' | 'below') => void
  mergeCells: () => void
  splitCell: () => void
  toggleOutputs: () => void
  toggleOutputScrolling: () => void
  toggleLineNumbers: (all: boolean) => void
  showHelp: () => void
  save: () => void
  undoCells: () => void
  redoCells: () => void
  interrupt: () => void
  restart: () => void
}

/** The shortcuts as the help dialog (H) lists them. */
export const SHORTCUTS: Array<[string, Array<[string, string]>]> = [
  ['Both modes', [
    ['Shift+Enter', 'run the cell(s), select the next'],
    ['Ctrl+Enter', 'run the cell(s)'],
    ['Alt+Enter', 'run, insert a cell below'],
    ['Ctrl+S', 'save now']
  ]],
  ['Edit mode', [
    ['Esc', 'command mode'],
    ['Up / Down', 'at the first/last line: previous/next cell'],
    ['Ctrl+Shift+-', 'split the cell at the cursor'],
    ['Tab', 'complete (at the start of a line or after a space: indent)'],
    ['Shift+Tab', 'help on the name at the cursor (in the indentation: dedent)'],
    ['Ctrl+Z / Ctrl+Shift+Z', 'undo/redo my typing']
  ]],
  ['Command mode', [
    ['Enter', 'edit the cell'],
    ['Up / Down, k / j', 'select the previous/next cell'],
    ['Shift+Up / Shift+Down', 'extend the selection (or Shift+click)'],
    ['Ctrl+A', 'select all cells'],
    ['a / b', 'insert a cell above/below'],
    ['c / x', 'copy/cut the selected cells'],
    ['v / Shift+V', 'paste cells below/above'],
    ['d d', 'delete the selected cells'],
    ['Shift+M', 'merge the selected cells (or with the cell below)'],
    ['Shift+K / Shift+J', 'move the selected cells up/down'],
    ['m / y / r', 'markdown / code / raw'],
    ['o / Shift+O', 'hide/show outputs; scroll long outputs or show them whole'],
    ['l / Shift+L', 'line numbers in the cell / in every cell'],
    ['z / Shift+Z', 'undo/redo my cell operations'],
    ['i i', 'interrupt the kernel'],
    ['0 0', 'restart the kernel (asks first)'],
    ['h', 'this help']
  ]]
]

function atFirstVisualLine (view: EditorView): boolean {
  const sel = view.state.selection.main
  if (!sel.empty) return false
  const line = view.state.doc.lineAt(sel.head)
  if (line.number !== 1) return false
  const here = view.coordsAtPos(sel.head)
  const start = view.coordsAtPos(0)
  return !here || !start || Math.abs(here.top - start.top) < 2
}

function atLastVisualLine (view: EditorView): boolean {
  const sel = view.state.selection.main
  if (!sel.empty) return false
  const doc = view.state.doc
  const line = doc.lineAt(sel.head)
  if (line.number !== doc.lines) return false
  const here = view.coordsAtPos(sel.head)
  const end = view.coordsAtPos(doc.length)
  return !here || !end || Math.abs(here.bottom - end.bottom) < 2
}

/** Bindings installed in every cell editor, ahead of CodeMirror's defaults. */
export function editorKeys (actions: KeyActions): KeyBinding[] {
  const split = (): boolean => { actions.splitCell(); return true }
  return [
    { key: 'Shift-Enter', run: () => { actions.run('advance'); return true } },
    { key: 'Mod-Enter', run: () => { actions.run('stay'); return true } },
    { key: 'Alt-Enter', run: () => { actions.run('insert'); return true } },
    { key: 'Escape', run: () => { actions.commandMode(); return true } },
    { key: 'Mod-Shift--', run: split },
    { key: 'Mod-_', run: split },
    {
      key: 'ArrowUp',
      run: (view) => atFirstVisualLine(view) && actions.selectRelative(-1, 'end')
    },
    {
      key: 'ArrowDown',
      run: (view) => atLastVisualLine(view) && actions.selectRelative(1, 'start')
    }
  ]
}

function isTextInput (target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false
  if (target.closest('.cm-editor')) return true
  const tag = target.tagName
  return tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || tag === 'BUTTON' || tag === 'A' || target.isContentEditable
}

/** Whether keys typed now belong to the page's command mode (no editor, field or dialog has them). */
export function commandModeTarget (target: EventTarget | null): boolean {
  if (isTextInput(target)) return false
  return !(target instanceof Element && target.closest('.dialog'))
}

/** Command-mode keys on the document; returns a function that removes the listeners. */
export function installCommandKeys (actions: KeyActions): () => void {
  let pending: { key: string, at: number } | null = null
  const twice = (key: string): boolean => {
    const now = Date.now()
    if (pending && pending.key === key && now - pending.at < 800) {
      pending = null
      return true
    }
    pending = { key, at: now }
    return false
  }

  // Ctrl/Cmd+S anywhere, editors included: capture phase, before CodeMirror sees it.
  const saveHandler = (event: KeyboardEvent): void => {
    if ((event.ctrlKey || event.metaKey) && !event.altKey && (event.key === 's' || event.key === 'S')) {
      event.preventDefault()
      event.stopPropagation()
      if (!event.repeat) actions.save()
    }
  }

  const handler = (event: KeyboardEvent): void => {
    if (event.defaultPrevented || !commandModeTarget(event.target)) return
    if (event.isComposing) return
    const key = event.key
    const mod = event.ctrlKey || event.metaKey
    let handled = true
    if (key === 'Enter') {
      if (event.shiftKey) actions.run('advance')
      else if (mod) actions.run('stay')
      else if (event.altKey) actions.run('insert')
      else actions.editMode()
    } else if (mod && !event.altKey && !event.shiftKey && (key === 'a' || key === 'A')) {
      actions.selectAll()
    } else if (mod || event.altKey) {
      handled = false // Ctrl+C/X/V arrive as copy/cut/paste events
    } else if (event.shiftKey && key === 'ArrowDown') {
      actions.extendSelection(1)
    } else if (event.shiftKey && key === 'ArrowUp') {
      actions.extendSelection(-1)
    } else if (key === 'ArrowDown' || key === 'j') {
      actions.selectRelative(1)
    } else if (key === 'ArrowUp' || key === 'k') {
      actions.selectRelative(-1)
    } else if (key === 'a') {
      actions.insert('above')
    } else if (key === 'b') {
      actions.insert('below')
    } else if (key === 'd') {
      if (twice('d')) actions.deleteSelected()
    } else if (key === 'm') {
      actions.changeType('markdown')
    } else if (key === 'y') {
      actions.changeType('code')
    } else if (key === 'r') {
      actions.changeType('raw')
    } else if (key === 'c') {
      actions.copyCells()
    } else if (key === 'x') {
      actions.cutCells()
    } else if (key === 'v') {
      actions.pasteCells('below')
    } else if (key === 'V') {
      actions.pasteCells('above')
    } else if (key === 'M') {
      actions.mergeCells()
    } else if (key === 'o') {
      actions.toggleOutputs()
    } else if (key === 'O') {
      actions.toggleOutputScrolling()
    } else if (key === 'l') {
      actions.toggleLineNumbers(false)
    } else if (key === 'L') {
      actions.toggleLineNumbers(true)
    } else if (key === 'h' || key === 'H') {
      actions.showHelp()
    } else if (key === 'z') {
      actions.undoCells()
    } else if (key === 'Z') {
      actions.redoCells()
    } else if (key === 'i') {
      if (twice('i')) actions.interrupt()
    } else if (key === '0') {
      if (twice('0')) actions.restart()
    } else if (key === 'K') {
      actions.move(-1)
    } else if (key === 'J') {
      actions.move(1)
    } else {
      handled = false
    }
    if (handled) event.preventDefault()
    if (key !== 'd' && key !== 'i' && key !== '0') pending = null
  }
  document.addEventListener('keydown', saveHandler, true)
  document.addEventListener('keydown', handler)
  return () => {
    document.removeEventListener('keydown', saveHandler, true)
    document.removeEventListener('keydown', handler)
  }
}
