// One cell: prompt, editor (or rendered markdown), outputs, presence markers, cell toolbar.
//
// A CellView follows its Y.Map: keys (cell_type, execution_count, execution_state, outputs,
// source, metadata) are observed; the source Y.Text is bound to CodeMirror through yCollab.
//
// A cell is built light: its source as plain text, no editor, no outputs. `materialize()`
// (called when the cell comes near the viewport, or is selected) creates the editor, renders
// the markdown and the outputs: a long notebook opens without building hundreds of editors,
// and outputs arriving in cells far off screen cost nothing until they are looked at.
import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { EditorSelection } from '@codemirror/state'
import type { EditorView, KeyBinding } from '@codemirror/view'
import { createEditor, setLineNumbers, type Language } from './editor'
import type { EditorHelp } from './help'
import type { InputRequest } from './api'
import { renderMarkdownInto } from './markdown'
import { OutputArea } from './outputs'
import type { Peer } from './presence'
import type { CellType } from './keyboard'
import { icon } from './icons'
import { h, clear } from './ui'

export interface CellHost {
  awareness: Awareness
  keys: readonly KeyBinding[]
  readOnly: () => boolean
  /** line numbers in new editors (Shift+L) */
  lineNumbers: () => boolean
  /** a click or a focus made this cell the active one; `extend`: Shift+click */
  activate: (cell: CellView, edit: boolean, extend?: boolean) => void
  run: (cell: CellView) => void
  move: (cell: CellView, delta: -1 | 1) => void
  remove: (cell: CellView) => void
  changeType: (cell: CellView, type: CellType) => void
  /** hide or show the outputs (metadata `collapsed`, shared as in Jupyter) */
  setOutputsHidden: (cell: CellView, hidden: boolean) => void
  /** scroll long outputs (true), show them whole (false) (metadata `scrolled`) */
  setOutputsScrolled: (cell: CellView, scrolled: boolean) => void
  /** completion and help in code cells */
  help: EditorHelp | null
  /** answer a running cell's input request; false if it could not be */
  answerInput: (request: InputRequest, value: string) => Promise<boolean>
}

function toolButton (name: string, title: string, onClick: () => void): HTMLButtonElement {
  const button = h('button', { type: 'button', class: `cell-tool tool-${name}`, title, 'aria-label': title }, icon(name))
  button.addEventListener('click', (event) => {
    event.stopPropagation()
    onClick()
  })
  return button
}

// Outputs taller than this scroll (unless the cell says `scrolled: false`), as JupyterLab's
// "scroll outputs" does past its threshold.
export const SCROLL_THRESHOLD_PX = 560

// One observer for every cell's output height: it decides when "show all" is offered.
const heights = new WeakMap<Element, (height: number) => void>()
let resizeObserver: ResizeObserver | null = null
function observeHeight (el: Element, callback: (height: number) => void): void {
  resizeObserver ??= new ResizeObserver((entries) => {
    for (const entry of entries) heights.get(entry.target)?.(entry.contentRect.height)
  })
  heights.set(el, callback)
  resizeObserver.observe(el)
}
function unobserveHeight (el: Element): void {
  resizeObserver?.unobserve(el)
  heights.delete(el)
}

export class CellView {
  readonly element: HTMLElement
  private readonly prompt: HTMLElement
  private readonly outPrompt: HTMLElement
  private readonly input: HTMLElement
  private readonly editorHost: HTMLElement
  private readonly rendered: HTMLElement
  private readonly markers: HTMLElement
  private readonly outputArea: HTMLElement
  private readonly outputGutter: HTMLElement
  private readonly outputScroll: HTMLElement
  private readonly hiddenNote: HTMLButtonElement
  private readonly scrollToggle: HTMLButtonElement
  private readonly collapser: HTMLButtonElement
  private tools: HTMLElement | null = null
  private stdin: HTMLElement | null = null
  private stdinRequest: InputRequest | null = null
  private typeSelect: HTMLSelectElement | null = null
  private readonly outputs = new OutputArea()
  private editorView: EditorView | null = null
  private boundText: Y.Text | null = null
  private boundType: CellType | null = null
  private metadata: Y.Map<unknown> | null = null
  private editing = false
  private materialized = false
  private renderFrame = 0
  private previewFrame = 0
  private lineNumbersOn: boolean
  private outputsTall = false
  /** queued or running according to the kernel API (before the doc says so) */
  private pendingRun = false
  private peersKey = ''
  /** when this page last typed into the cell */
  lastLocalEdit = 0
  /** the metadata as JSON, kept current: what a cell put back after a remote delete gets */
  metadataSnapshot: Record<string, unknown> = {}
  private readonly onKeys = (): void => this.update()
  private readonly onSource = (event: Y.YTextEvent): void => {
    if (event.transaction.local) this.lastLocalEdit = Date.now()
    if (this.materialized) this.scheduleRender()
    else this.schedulePreview()
  }

  private readonly onMetadata = (): void => {
    this.metadataSnapshot = this.metadata?.toJSON() ?? {}
    this.updateOutputsView()
  }

  constructor (readonly ymap: Y.Map<unknown>, private readonly host: CellHost) {
    this.prompt = h('div', { class: 'prompt prompt-in' })
    this.collapser = h('button', { type: 'button', class: 'output-collapser', title: 'Hide the outputs (o)', 'aria-label': 'Hide the outputs' })
    this.collapser.addEventListener('click', (event) => {
      event.stopPropagation()
      host.setOutputsHidden(this, true)
    })
    this.outPrompt = h('div', { class: 'prompt prompt-out' })
    this.editorHost = h('div', { class: 'editor' })
    this.rendered = h('div', { class: 'rendered markdown-body', title: 'Double-click to edit' })
    this.input = h('div', { class: 'cell-input' }, this.editorHost, this.rendered)
    this.markers = h('div', { class: 'cell-markers' })
    this.hiddenNote = h('button', { type: 'button', class: 'outputs-hidden-note', hidden: true })
    this.hiddenNote.addEventListener('click', (event) => {
      event.stopPropagation()
      host.setOutputsHidden(this, false)
    })
    this.scrollToggle = h('button', { type: 'button', class: 'outputs-scroll-toggle', hidden: true })
    this.scrollToggle.addEventListener('click', (event) => {
      event.stopPropagation()
      host.setOutputsScrolled(this, !this.element.classList.contains('outputs-scrolled'))
    })
    this.outputScroll = h('div', { class: 'output-scroll' }, this.outputs.element)
    this.outputArea = h('div', { class: 'output-area' }, this.hiddenNote, this.outputScroll, this.scrollToggle)
    this.outputGutter = h('div', { class: 'output-gutter' }, this.outPrompt, this.collapser)
    // a cell not built yet holds its prompt and source only: fewer nodes for the page to lay out
    this.element = h('div', { class: 'cell', tabindex: -1 }, this.prompt, this.input, this.markers)
    this.lineNumbersOn = host.lineNumbers()
    this.element.addEventListener('mousedown', (event) => {
      const target = event.target as HTMLElement
      if (target.closest('.cell-tools')) return
      const inEditor = Boolean(target.closest('.cm-editor'))
      if (event.shiftKey && !inEditor) event.preventDefault() // extend the selection, not a text selection
      host.activate(this, inEditor, event.shiftKey && !inEditor)
    })
    this.rendered.addEventListener('dblclick', () => {
      if (!this.host.readOnly()) this.startEditing('end')
    })
    this.outputs.onRender = () => this.updateOutPrompt()
    ymap.observe(this.onKeys)
    this.update()
  }

  // id and type as last read: a deleted map reads as empty, and a cell put back after a
  // collaborator's delete needs what it was
  private lastId = ''
  private lastType: CellType = 'code'

  get id (): string {
    const id = this.ymap.get('id')
    if (typeof id === 'string' && id) this.lastId = id
    return this.lastId
  }

  get type (): CellType {
    const type = this.ymap.get('cell_type')
    if (type === 'markdown' || type === 'raw' || type === 'code') this.lastType = type
    return this.lastType
  }

  get source (): string {
    const source = this.ymap.get('source')
    return source instanceof Y.Text ? source.toString() : String(source ?? '')
  }

  get editor (): EditorView | null {
    return this.editorView
  }

  get isEditing (): boolean {
    return this.editing
  }

  get isMaterialized (): boolean {
    return this.materialized
  }

  get running (): boolean {
    return this.ymap.get('execution_state') === 'running'
  }

  /** Build the editor (or rendered markdown), the outputs and the toolbar. */
  materialize (): void {
    if (this.materialized) return
    this.materialized = true
    if (this.previewFrame) cancelAnimationFrame(this.previewFrame)
    this.previewFrame = 0
    this.element.classList.remove('lazy')
    this.element.insertBefore(this.outputGutter, this.markers)
    this.element.insertBefore(this.outputArea, this.markers)
    this.buildTools()
    this.bindSource(true)
    this.outputs.show()
    this.observeOutputs()
    this.updateMode()
  }

  /** Re-read the cell's keys: type, prompt, outputs, source binding. */
  update (): void {
    const type = this.type
    this.element.dataset.cellId = this.id
    this.element.dataset.type = type
    this.element.classList.toggle('code', type === 'code')
    this.element.classList.toggle('markdown', type === 'markdown')
    this.element.classList.toggle('raw', type === 'raw')
    this.element.classList.toggle('lazy', !this.materialized)
    if (this.typeSelect && this.typeSelect.value !== type) this.typeSelect.value = type
    this.bindSource(false)
    this.bindMetadata()
    this.outputs.bind(type === 'code' ? this.ymap.get('outputs') : null)
    this.updatePrompt()
    this.updateMode()
    this.updateOutputsView()
  }

  private buildTools (): void {
    if (this.tools) return
    this.typeSelect = h('select', { class: 'cell-type', title: 'Cell type', 'aria-label': 'Cell type' },
      h('option', { value: 'code' }, 'Code'),
      h('option', { value: 'markdown' }, 'Markdown'),
      h('option', { value: 'raw' }, 'Raw'))
    this.typeSelect.value = this.type
    this.typeSelect.addEventListener('change', () => this.host.changeType(this, (this.typeSelect as HTMLSelectElement).value as CellType))
    this.typeSelect.addEventListener('click', (event) => event.stopPropagation())
    this.tools = h('div', { class: 'cell-tools' },
      toolButton('run', 'Run cell (Shift+Enter)', () => this.host.run(this)),
      toolButton('up', 'Move up (Shift+K)', () => this.host.move(this, -1)),
      toolButton('down', 'Move down (Shift+J)', () => this.host.move(this, 1)),
      this.typeSelect,
      toolButton('trash', 'Delete cell (d d)', () => this.host.remove(this)))
    this.element.append(this.tools)
  }

  private bindMetadata (): void {
    const metadata = this.ymap.get('metadata')
    const map = metadata instanceof Y.Map ? metadata : null
    if (map === this.metadata) return
    this.metadata?.unobserve(this.onMetadata)
    this.metadata = map
    map?.observe(this.onMetadata)
    this.metadataSnapshot = map?.toJSON() ?? {}
  }

  private bindSource (force: boolean): void {
    const source = this.ymap.get('source')
    const text = source instanceof Y.Text ? source : null
    const same = text === this.boundText && this.type === this.boundType
    if (same && !force) {
      if (!this.materialized || this.editorView || this.type === 'markdown') return
    }
    if (this.type !== 'markdown') this.editing = false
    this.boundType = this.type
    if (!same) {
      this.boundText?.unobserve(this.onSource)
      this.boundText = text
      text?.observe(this.onSource)
    }
    if (!this.materialized) {
      this.showPreview()
      return
    }
    if (!same || !this.editorView) {
      this.destroyEditor()
      if (this.type !== 'markdown' || this.editing) this.ensureEditor()
    }
    this.scheduleRender()
  }

  /** The source as plain text, in place of an editor not built yet. */
  private showPreview (): void {
    if (this.type === 'markdown') {
      this.rendered.textContent = this.source
      this.rendered.classList.add('preview')
      return
    }
    clear(this.editorHost)
    this.editorHost.append(h('pre', { class: 'plain-source source-preview' }, this.source || '\u200b'))
  }

  private schedulePreview (): void {
    if (this.previewFrame) return
    this.previewFrame = requestAnimationFrame(() => {
      this.previewFrame = 0
      if (!this.materialized) this.showPreview()
    })
  }

  private language (): Language {
    return this.type === 'code' ? 'python' : this.type === 'markdown' ? 'markdown' : 'text'
  }

  private ensureEditor (): EditorView | null {
    if (this.editorView) return this.editorView
    if (!this.materialized) this.materialize()
    if (this.editorView) return this.editorView
    if (!this.boundText) {
      // A source that is not shared text cannot be edited collaboratively: show it.
      clear(this.editorHost)
      this.editorHost.append(h('pre', { class: 'plain-source' }, this.source))
      return null
    }
    clear(this.editorHost)
    this.editorView = createEditor(this.editorHost, {
      ytext: this.boundText,
      awareness: this.host.awareness,
      language: this.language(),
      keys: this.host.keys,
      readOnly: this.host.readOnly(),
      lineNumbers: this.lineNumbersOn,
      help: this.type === 'code' ? this.host.help : null,
      onFocus: () => this.host.activate(this, true)
    })
    return this.editorView
  }

  private destroyEditor (): void {
    this.editorView?.destroy()
    this.editorView = null
    clear(this.editorHost)
  }

  /** Rebuild the editor (e.g. when the page turns read-only). */
  refreshEditor (): void {
    const had = this.editorView !== null
    this.destroyEditor()
    if (had) this.ensureEditor()
  }

  get lineNumbers (): boolean {
    return this.lineNumbersOn
  }

  setLineNumbers (on: boolean): void {
    this.lineNumbersOn = on
    if (this.editorView) setLineNumbers(this.editorView, on)
  }

  setPending (pending: boolean): void {
    if (this.pendingRun === pending) return
    this.pendingRun = pending
    this.updatePrompt()
  }

  private updatePrompt (): void {
    if (this.type !== 'code') {
      this.prompt.textContent = ''
      this.element.classList.remove('running')
      this.updateOutPrompt()
      return
    }
    const running = this.running || this.pendingRun
    const count = this.ymap.get('execution_count')
    const label = running ? '*' : (typeof count === 'number' ? String(Math.round(count)) : ' ')
    this.prompt.textContent = `[${label}]:`
    this.element.classList.toggle('running', running)
    this.updateOutPrompt()
  }

  private updateOutPrompt (): void {
    const count = this.ymap.get('execution_count')
    const show = this.type === 'code' && this.outputs.hasExecuteResult && typeof count === 'number'
    this.outPrompt.textContent = show ? `Out[${Math.round(count as number)}]:` : ''
    this.updateOutputsView()
  }

  // -- outputs: hidden, scrolled ---------------------------------------------------------

  private metadataValue (key: string): unknown {
    return this.metadata?.get(key)
  }

  /** Outputs hidden (nbformat `collapsed`, or JupyterLab's `jupyter.outputs_hidden`). */
  get outputsHidden (): boolean {
    const jupyter = this.metadataValue('jupyter')
    const hiddenByLab = typeof jupyter === 'object' && jupyter !== null && (jupyter as Record<string, unknown>).outputs_hidden === true
    return this.metadataValue('collapsed') === true || hiddenByLab
  }

  /** nbformat `scrolled`: true scrolls, false shows whole, absent ("auto") scrolls past the threshold. */
  get outputsScrollSetting (): boolean | 'auto' {
    const value = this.metadataValue('scrolled')
    return typeof value === 'boolean' ? value : 'auto'
  }

  private observeOutputs (): void {
    observeHeight(this.outputs.element, (height) => {
      const tall = height > SCROLL_THRESHOLD_PX
      if (tall === this.outputsTall) return
      this.outputsTall = tall
      this.updateOutputsView()
    })
  }

  private updateOutputsView (): void {
    const count = this.type === 'code' ? this.outputs.count : 0
    const hidden = count > 0 && this.outputsHidden
    const setting = this.outputsScrollSetting
    const scrolled = !hidden && count > 0 && (setting === true || (setting === 'auto' && this.outputsTall))
    this.element.classList.toggle('has-outputs', count > 0)
    this.element.classList.toggle('outputs-hidden', hidden)
    this.element.classList.toggle('outputs-scrolled', scrolled)
    this.outputScroll.hidden = hidden
    this.hiddenNote.hidden = !hidden
    if (hidden) this.hiddenNote.textContent = `${count} output${count === 1 ? '' : 's'} hidden: click to show (o)`
    // offered when the outputs are long: scroll them, or show them whole
    const offer = !hidden && count > 0 && (this.outputsTall || setting === true)
    this.scrollToggle.hidden = !offer
    if (offer) this.scrollToggle.textContent = scrolled ? 'Show the whole output' : 'Scroll the output'
  }

  // -- input requests (input(), getpass, pdb) ------------------------------------------------

  /** Show the running cell's input request under its outputs (null: none). Those who may
   * answer get a field (masked for passwords; Enter sends); others see the prompt only. */
  showInputRequest (request: InputRequest | null, canAnswer: boolean): void {
    const same = request !== null && this.stdinRequest !== null && request.id === this.stdinRequest.id
    if (same && this.stdin?.dataset.canAnswer === String(canAnswer)) return
    this.stdin?.remove()
    this.stdin = null
    this.stdinRequest = request
    if (!request) return
    this.materialize()
    const field = h('input', {
      type: request.password ? 'password' : 'text',
      class: 'stdin-input',
      autocomplete: request.password ? 'new-password' : 'off',
      spellcheck: 'false',
      'aria-label': request.prompt || 'Input for the running cell',
      placeholder: canAnswer ? 'Enter sends' : 'Waiting for someone who may run code to answer',
      disabled: !canAnswer
    })
    field.addEventListener('keydown', (event) => {
      event.stopPropagation() // the notebook's shortcuts stay out of the field
      if (event.key !== 'Enter' || event.isComposing || field.disabled) return
      event.preventDefault()
      field.disabled = true
      void this.host.answerInput(request, field.value).then((sent) => {
        if (!sent && this.stdinRequest?.id === request.id) field.disabled = false
      })
    })
    this.stdin = h('div', { class: 'stdin', 'data-request': request.id, 'data-can-answer': String(canAnswer) },
      h('label', { class: 'stdin-prompt' }, request.prompt), field)
    this.outputArea.append(this.stdin)
    const focused = document.activeElement
    const typingElsewhere = focused instanceof HTMLElement && (focused.closest('.cm-editor') !== null || focused.tagName === 'INPUT' || focused.tagName === 'TEXTAREA')
    if (canAnswer && !typingElsewhere) field.focus({ preventScroll: false })
  }

  // -- markdown ------------------------------------------------------------------------

  private updateMode (): void {
    const renderedMode = this.type === 'markdown' && !this.editing
    this.element.classList.toggle('rendered-mode', renderedMode)
    this.editorHost.hidden = renderedMode
    this.rendered.hidden = !renderedMode
    if (renderedMode) this.scheduleRender()
  }

  private scheduleRender (): void {
    if (this.type !== 'markdown' || this.editing || this.renderFrame || !this.materialized) return
    this.renderFrame = requestAnimationFrame(() => {
      this.renderFrame = 0
      this.renderMarkdownNow()
    })
  }

  private renderMarkdownNow (): void {
    if (!this.materialized) return
    const source = this.source
    this.rendered.classList.remove('preview')
    if (source.trim()) {
      renderMarkdownInto(this.rendered, source)
      this.rendered.classList.remove('empty')
    } else {
      this.rendered.textContent = 'Empty markdown cell: double-click or press Enter to edit'
      this.rendered.classList.add('empty')
    }
  }

  /** Show the editor (markdown cells) and put the caret at `where`. */
  startEditing (where: 'start' | 'end' | null = null): void {
    this.materialize()
    if (this.type === 'markdown' && !this.editing) {
      this.editing = true
      this.ensureEditor()
      this.updateMode()
    }
    this.focusEditor(where)
  }

  /** Markdown: render (Shift+Enter). */
  stopEditing (): void {
    if (!this.editing) return
    this.editing = false
    this.editorView?.contentDOM.blur()
    this.updateMode()
    this.renderMarkdownNow()
  }

  focusEditor (where: 'start' | 'end' | null, selection?: { anchor: number, head: number }): void {
    this.materialize()
    const view = this.type === 'markdown' && !this.editing ? null : this.ensureEditor()
    if (!view) {
      this.element.focus({ preventScroll: false })
      return
    }
    if (selection) {
      const length = view.state.doc.length
      view.dispatch({ selection: EditorSelection.single(Math.min(selection.anchor, length), Math.min(selection.head, length)), scrollIntoView: true })
    } else if (where) {
      const pos = where === 'start' ? 0 : view.state.doc.length
      view.dispatch({ selection: EditorSelection.cursor(pos), scrollIntoView: true })
    }
    view.focus()
  }

  setActive (active: boolean, editing: boolean): void {
    if (active) this.materialize()
    this.element.classList.toggle('active', active)
    this.element.classList.toggle('editing', active && editing)
  }

  setSelected (selected: boolean): void {
    this.element.classList.toggle('selected', selected)
  }

  /** Other users whose active cell this is. */
  setPeers (peers: Peer[]): void {
    // Awareness changes with every caret move: touch the DOM only when this cell's peers change.
    const key = peers.map((p) => `${p.clientId}\u0000${p.user.name}\u0000${p.user.color}`).join('\u0001')
    if (key === this.peersKey) return
    this.peersKey = key
    clear(this.markers)
    for (const peer of peers) {
      const marker = h('span', { class: 'cell-marker', title: peer.user.name }, peer.user.name)
      marker.style.backgroundColor = peer.user.color
      this.markers.append(marker)
    }
    this.element.classList.toggle('has-peers', peers.length > 0)
    if (peers.length) this.element.style.setProperty('--peer-color', peers[0].user.color)
    else this.element.style.removeProperty('--peer-color')
  }

  destroy (): void {
    this.ymap.unobserve(this.onKeys)
    this.boundText?.unobserve(this.onSource)
    this.metadata?.unobserve(this.onMetadata)
    if (this.renderFrame) cancelAnimationFrame(this.renderFrame)
    if (this.previewFrame) cancelAnimationFrame(this.previewFrame)
    unobserveHeight(this.outputs.element)
    this.destroyEditor()
    this.outputs.destroy()
    this.element.remove()
  }
}
