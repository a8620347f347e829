// Keyboard: Jupyter's two modes.
//
// Edit mode (a cell editor has focus): Shift+Enter run and go to the next cell, Ctrl/Cmd+Enter
// run in place, Alt+Enter run and insert below, Esc command mode, Up/Down at the first/last
// line move to the previous/next cell.
// Command mode (no editor focused): Enter edit, j/k or Down/Up select, a/b insert above/below,
// d d delete, m/y/r markdown/code/raw, z / Shift+Z undo/redo cell operations, i i interrupt,
// 0 0 restart, Shift+Enter / Ctrl+Enter run.
import type { EditorView, KeyBinding } from '@codemirror/view'

export type RunMode = 'advance' | 'stay' | 'insert'
export type CellType = 'code' | 'markdown' | 'raw'

export interface KeyActions {
  run: (mode: RunMode) => void
  commandMode: () => void
  editMode: () => void
  /** select the cell `delta` away; with `edit`, put the caret at its start/end */
  selectRelative: (delta: number, edit?: 'start' | 'end') => boolean
  insert: (where: 'above' | 'below') => void
  deleteActive: () => void
  changeType: (type: CellType) => void
  move: (delta: number) => void
  undoCells: () => void
  redoCells: () => void
  interrupt: () => void
  restart: () => void
}

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
  return [
    { key: 'Shift-Enter', run: () => { actions.run('advance'); return true } },
    { key: 'Mod-Enter', run: () => { actions.run('stay'); return true } },
    { key: 'Alt-Enter', run: () => { actions.run('insert'); return true } },
    { key: 'Escape', run: () => { actions.commandMode(); return true } },
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

/** Command-mode keys on the document; returns a function that removes the listener. */
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

  const handler = (event: KeyboardEvent): void => {
    if (event.defaultPrevented || isTextInput(event.target)) return
    if (event.isComposing) return
    const key = event.key
    const mod = event.ctrlKey || event.metaKey
    let handled = true
    if (key === 'Enter') {
      if (event.shiftKey) actions.run('advance')
      else if (mod) actions.run('stay')
      else if (event.altKey) actions.run('insert')
      else actions.editMode()
    } else if (mod || event.altKey) {
      handled = false
    } else if (key === 'ArrowDown' || key === 'j') {
      actions.selectRelative(1)
    } else if (key === 'ArrowUp' || key === 'k') {
      actions.selectRelative(-1)
    } else if (key === 'a') {
      actions.insert('above')
    } else if (key === 'b') {
      actions.insert('below')
    } else if (key === 'd') {
      if (twice('d')) actions.deleteActive()
    } else if (key === 'm') {
      actions.changeType('markdown')
    } else if (key === 'y') {
      actions.changeType('code')
    } else if (key === 'r') {
      actions.changeType('raw')
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
  document.addEventListener('keydown', handler)
  return () => document.removeEventListener('keydown', handler)
}
