// CodeMirror 6 editors bound to a cell's Y.Text by y-codemirror.next.
//
// yCollab gives shared text, remote carets/selections (from awareness) and undo through
// a Y.UndoManager that tracks only this editor's own origin: Ctrl+Z never undoes other
// people's typing. CodeMirror's own history is not used.
import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { Compartment, EditorState, Prec, StateEffect, StateField, type Extension } from '@codemirror/state'
import {
  EditorView, keymap, dropCursor, highlightSpecialChars, lineNumbers, placeholder, showTooltip,
  type Command, type KeyBinding, type Tooltip
} from '@codemirror/view'
import { defaultKeymap, indentLess, indentMore, indentWithTab } from '@codemirror/commands'
import { HighlightStyle, syntaxHighlighting, indentOnInput, bracketMatching, indentUnit } from '@codemirror/language'
import {
  acceptCompletion, autocompletion, closeBrackets, closeBracketsKeymap, completionStatus, startCompletion
} from '@codemirror/autocomplete'
import { highlightSelectionMatches } from '@codemirror/search'
import { python } from '@codemirror/lang-python'
import { tags as t } from '@lezer/highlight'
import type { EditorHelp } from './help'
import { ansiToHtml } from './outputs'

/** The CSP nonce for CodeMirror's <style> elements, from the page shell. */
export function cspNonce (): string {
  return document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? ''
}

// JupyterLab-like colours on a light background.
const notebookHighlight = HighlightStyle.define([
  { tag: t.keyword, color: '#008000', fontWeight: '600' },
  { tag: [t.controlKeyword, t.moduleKeyword, t.operatorKeyword], color: '#008000', fontWeight: '600' },
  { tag: [t.definitionKeyword, t.self], color: '#008000', fontWeight: '600' },
  { tag: [t.string, t.special(t.string), t.regexp], color: '#ba2121' },
  { tag: t.comment, color: '#3d7a7a', fontStyle: 'italic' },
  { tag: [t.number, t.bool, t.null], color: '#098658' },
  { tag: t.operator, color: '#aa22ff', fontWeight: '600' },
  { tag: [t.function(t.definition(t.variableName)), t.definition(t.className)], color: '#0000ff' },
  { tag: t.className, color: '#0000ff' },
  { tag: [t.standard(t.variableName), t.special(t.variableName)], color: '#008000' },
  { tag: t.propertyName, color: '#1f3a93' },
  { tag: t.heading, color: '#0b4f9e', fontWeight: '700' },
  { tag: t.emphasis, fontStyle: 'italic' },
  { tag: t.strong, fontWeight: '700' },
  { tag: t.link, color: '#1565c0', textDecoration: 'underline' },
  { tag: t.url, color: '#1565c0' },
  { tag: t.monospace, color: '#8b3b00' },
  { tag: t.quote, color: '#555' },
  { tag: t.invalid, color: '#f00' }
])

const editorTheme = EditorView.theme({
  '&': { fontSize: '13.5px', backgroundColor: 'transparent' },
  '&.cm-focused': { outline: 'none' },
  '.cm-content': { fontFamily: 'var(--mono)', padding: '6px 0', caretColor: '#111' },
  '.cm-line': { padding: '0 10px' },
  '.cm-scroller': { fontFamily: 'var(--mono)', lineHeight: '1.45' },
  '.cm-placeholder': { color: '#9aa0a6' },
  '.cm-gutters': { backgroundColor: 'transparent', border: 'none', color: '#9aa0a6' },
  '.cm-lineNumbers .cm-gutterElement': { padding: '0 2px 0 8px', fontSize: '12px' },
  '.cm-content ::selection': { backgroundColor: '#b9d2f5' },
  '.cm-content::selection': { backgroundColor: '#b9d2f5' }
})

export type Language = 'python' | 'markdown' | 'text'

export interface EditorOptions {
  ytext: Y.Text
  awareness: Awareness
  language: Language
  /** bindings that take precedence over the editor's own (run, leave, move between cells) */
  keys: readonly KeyBinding[]
  onFocus: () => void
  readOnly?: boolean
  lineNumbers?: boolean
  /** completion (Tab) and help (Shift+Tab) for code cells */
  help?: EditorHelp | null
}

const gutter = new Compartment()
const markdownLanguage = new Compartment()

// Markdown's language (with the HTML, CSS and JavaScript it embeds: ~180 KB) is loaded when
// the first markdown cell is edited, not with the page.
let markdownSupport: Promise<Extension> | null = null
function loadMarkdown (): Promise<Extension> {
  markdownSupport ??= import('@codemirror/lang-markdown').then((module) => module.markdown())
  return markdownSupport
}

/** Show or hide line numbers in an editor (L in command mode). */
export function setLineNumbers (view: EditorView, on: boolean): void {
  view.dispatch({ effects: gutter.reconfigure(on ? lineNumbers() : []) })
}

function languageExtension (language: Language): Extension {
  if (language === 'python') return python()
  if (language === 'markdown') return [markdownLanguage.of([]), EditorView.lineWrapping]
  return EditorView.lineWrapping
}

// -- Tab and Shift+Tab in code cells --------------------------------------------------

/** Only whitespace between the line's start and the caret (or a selection): Tab indents there. */
function indentsHere (state: EditorState): boolean {
  const range = state.selection.main
  if (state.selection.ranges.length > 1 || !range.empty) return true
  const line = state.doc.lineAt(range.head)
  const before = line.text.slice(0, range.head - line.from)
  return before.trim() === '' || /\s$/.test(before)
}

/** Spaces up to the next multiple of four columns, at the caret. */
const insertIndent: Command = (view) => {
  if (view.state.readOnly) return false
  const range = view.state.selection.main
  if (!range.empty || view.state.selection.ranges.length > 1) return indentMore(view)
  const column = range.head - view.state.doc.lineAt(range.head).from
  const spaces = ' '.repeat(4 - (column % 4))
  view.dispatch(view.state.update(view.state.replaceSelection(spaces), { scrollIntoView: true, userEvent: 'input' }))
  return true
}

const setHelp = StateEffect.define<Tooltip | null>()

/** The help tooltip of Shift+Tab: gone at the next edit or caret move, or Esc. */
const helpTooltip = StateField.define<Tooltip | null>({
  create: () => null,
  update (value, tr) {
    for (const effect of tr.effects) if (effect.is(setHelp)) return effect.value
    return tr.docChanged || tr.selection ? null : value
  },
  provide: (field) => showTooltip.from(field)
})

function helpDom (text: string, found: boolean): HTMLElement {
  const dom = document.createElement('div')
  dom.className = found ? 'cm-help-tooltip' : 'cm-help-tooltip cm-help-none'
  dom.setAttribute('role', 'tooltip')
  const pre = document.createElement('pre')
  // IPython colours its help with ANSI codes: the same conversion (sanitized) as outputs
  pre.innerHTML = ansiToHtml(text)
  dom.append(pre)
  return dom
}

function codeKeys (help: EditorHelp): Extension {
  const tab: Command = (view) => {
    if (completionStatus(view.state) === 'active') return acceptCompletion(view)
    if (indentsHere(view.state)) return insertIndent(view)
    return startCompletion(view)
  }
  const shiftTab: Command = (view) => {
    const range = view.state.selection.main
    if (!range.empty || view.state.selection.ranges.length > 1) return indentLess(view)
    const line = view.state.doc.lineAt(range.head)
    if (line.text.slice(0, range.head - line.from).trim() === '') return indentLess(view)
    const pos = range.head
    const code = view.state.doc.toString()
    void help.inspect(code, pos).then(({ found, text }) => {
      // still where it was asked: show it
      if (view.state.selection.main.head !== pos || view.state.doc.toString() !== code) return
      view.dispatch({ effects: setHelp.of({ pos, above: false, create: () => ({ dom: helpDom(text, found) }) }) })
    })
    return true
  }
  const closeHelp: Command = (view) => {
    if (!view.state.field(helpTooltip, false)) return false
    view.dispatch({ effects: setHelp.of(null) })
    return true
  }
  return [
    helpTooltip,
    // opened by Tab only, so Enter may take a choice at once (no interaction delay)
    autocompletion({ override: [help.completions], activateOnTyping: false, icons: true, interactionDelay: 0 }),
    // ahead of the page's own Escape (command mode): an open list or tooltip closes first
    Prec.highest(keymap.of([{ key: 'Escape', run: closeHelp }])),
    keymap.of([{ key: 'Tab', run: tab }, { key: 'Shift-Tab', run: shiftTab }])
  ]
}

export function createEditor (parent: HTMLElement, options: EditorOptions): EditorView {
  // Only changes made through this editor (y-codemirror's origin, added by the plugin) are undone.
  const undoManager = new Y.UndoManager(options.ytext, { trackedOrigins: new Set() })
  const extensions: Extension[] = [
    EditorView.cspNonce.of(cspNonce()),
    keymap.of([...options.keys]),
    gutter.of(options.lineNumbers ? lineNumbers() : []),
    highlightSpecialChars(),
    // No drawSelection(): the browser's own caret and selection. Drawing them costs a layout
    // measurement on every keystroke (about 3 ms of the time to the next frame, see
    // bench/README.md); what is lost is extra cursors of a multiple selection.
    dropCursor(),
    indentOnInput(),
    indentUnit.of('    '),
    EditorState.tabSize.of(4),
    bracketMatching(),
    closeBrackets(),
    highlightSelectionMatches(),
    syntaxHighlighting(notebookHighlight),
    languageExtension(options.language),
    placeholder(options.language === 'markdown' ? 'Markdown text' : options.language === 'python' ? 'Code' : 'Raw text'),
    options.help && options.language === 'python' && !options.readOnly ? codeKeys(options.help) : [],
    keymap.of([...closeBracketsKeymap, ...yUndoManagerKeymap, indentWithTab, ...defaultKeymap]),
    yCollab(options.ytext, options.awareness, { undoManager }),
    editorTheme,
    EditorView.editable.of(!options.readOnly),
    EditorState.readOnly.of(Boolean(options.readOnly)),
    EditorView.domEventHandlers({
      focus: () => { options.onFocus() }
    }),
    EditorView.contentAttributes.of({ 'aria-label': `${options.language} cell editor` })
  ]
  const view = new EditorView({
    parent,
    state: EditorState.create({ doc: options.ytext.toString(), extensions })
  })
  if (options.language === 'markdown') {
    void loadMarkdown().then((support) => {
      // the editor may be gone by then (a cell rendered again, deleted)
      if (view.dom.isConnected || view.dom.parentElement) view.dispatch({ effects: markdownLanguage.reconfigure(support) })
    })
  }
  return view
}
