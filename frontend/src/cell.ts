// One cell: prompt, editor (or rendered markdown), outputs, presence markers, cell toolbar.
//
// A CellView follows its Y.Map: keys (cell_type, execution_count, execution_state, outputs,
// source) are observed; the source Y.Text is bound to CodeMirror through yCollab.
import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { EditorSelection } from '@codemirror/state'
import type { EditorView, KeyBinding } from '@codemirror/view'
import { createEditor, type Language } from './editor'
import { renderMarkdown } from './markdown'
import { OutputArea } from './outputs'
import type { Peer } from './presence'
import type { CellType } from './keyboard'
import { icon } from './icons'
import { h, clear } from './ui'

export interface CellHost {
  awareness: Awareness
  keys: readonly KeyBinding[]
  readOnly: () => boolean
  /** a click or a focus made this cell the active one */
  activate: (cell: CellView, edit: boolean) => void
  run: (cell: CellView) => void
  move: (cell: CellView, delta: number) => void
  remove: (cell: CellView) => void
  changeType: (cell: CellView, type: CellType) => void
}

function toolButton (name: string, title: string, onClick: () => void): HTMLButtonElement {
  const button = h('button', { type: 'button', class: `cell-tool tool-${name}`, title, 'aria-label': title }, icon(name))
  button.addEventListener('click', (event) => {
    event.stopPropagation()
    onClick()
  })
  return button
}

export class CellView {
  readonly element: HTMLElement
  private readonly prompt: HTMLElement
  private readonly outPrompt: HTMLElement
  private readonly input: HTMLElement
  private readonly editorHost: HTMLElement
  private readonly rendered: HTMLElement
  private readonly markers: HTMLElement
  private readonly typeSelect: HTMLSelectElement
  private readonly outputs = new OutputArea()
  private editorView: EditorView | null = null
  private boundText: Y.Text | null = null
  private boundType: CellType | null = null
  private editing = false
  private renderFrame = 0
  /** queued or running according to the kernel API (before the doc says so) */
  private pendingRun = false
  private peersKey = ''
  private readonly onKeys = (): void => this.update()
  private readonly onSource = (): void => this.scheduleRender()

  constructor (readonly ymap: Y.Map<unknown>, private readonly host: CellHost) {
    this.prompt = h('div', { class: 'prompt prompt-in' })
    this.outPrompt = h('div', { class: 'prompt prompt-out' })
    this.editorHost = h('div', { class: 'editor' })
    this.rendered = h('div', { class: 'rendered markdown-body', title: 'Double-click to edit' })
    this.input = h('div', { class: 'cell-input' }, this.editorHost, this.rendered)
    this.markers = h('div', { class: 'cell-markers' })
    this.typeSelect = h('select', { class: 'cell-type', title: 'Cell type', 'aria-label': 'Cell type' },
      h('option', { value: 'code' }, 'Code'),
      h('option', { value: 'markdown' }, 'Markdown'),
      h('option', { value: 'raw' }, 'Raw'))
    this.typeSelect.addEventListener('change', () => host.changeType(this, this.typeSelect.value as CellType))
    this.typeSelect.addEventListener('click', (event) => event.stopPropagation())
    const tools = h('div', { class: 'cell-tools' },
      toolButton('run', 'Run cell (Shift+Enter)', () => host.run(this)),
      toolButton('up', 'Move up', () => host.move(this, -1)),
      toolButton('down', 'Move down', () => host.move(this, 1)),
      this.typeSelect,
      toolButton('trash', 'Delete cell (d d)', () => host.remove(this)))
    this.element = h('div', { class: 'cell', tabindex: -1 },
      this.prompt, this.input, this.outPrompt, this.outputs.element, this.markers, tools)
    this.element.addEventListener('mousedown', (event) => {
      const target = event.target as HTMLElement
      if (target.closest('.cell-tools')) return
      host.activate(this, Boolean(target.closest('.cm-editor')))
    })
    this.rendered.addEventListener('dblclick', () => {
      if (!this.host.readOnly()) this.startEditing('end')
    })
    this.outputs.onRender = () => this.updateOutPrompt()
    ymap.observe(this.onKeys)
    this.update()
  }

  get id (): string {
    return String(this.ymap.get('id') ?? '')
  }

  get type (): CellType {
    const type = this.ymap.get('cell_type')
    return type === 'markdown' || type === 'raw' ? type : 'code'
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

  get running (): boolean {
    return this.ymap.get('execution_state') === 'running'
  }

  /** Re-read the cell's keys: type, prompt, outputs, source binding. */
  update (): void {
    const type = this.type
    this.element.dataset.cellId = this.id
    this.element.dataset.type = type
    this.element.classList.toggle('code', type === 'code')
    this.element.classList.toggle('markdown', type === 'markdown')
    this.element.classList.toggle('raw', type === 'raw')
    if (this.typeSelect.value !== type) this.typeSelect.value = type
    this.bindSource()
    this.outputs.bind(type === 'code' ? this.ymap.get('outputs') : null)
    this.updatePrompt()
    this.updateMode()
  }

  private bindSource (): void {
    const source = this.ymap.get('source')
    const text = source instanceof Y.Text ? source : null
    if (text === this.boundText && this.type === this.boundType && (this.editorView || this.type === 'markdown')) return
    if (this.type !== 'markdown') this.editing = false
    this.boundType = this.type
    this.destroyEditor()
    this.boundText?.unobserve(this.onSource)
    this.boundText = text
    text?.observe(this.onSource)
    if (this.type !== 'markdown' || this.editing) this.ensureEditor()
    this.scheduleRender()
  }

  private language (): Language {
    return this.type === 'code' ? 'python' : this.type === 'markdown' ? 'markdown' : 'text'
  }

  private ensureEditor (): EditorView | null {
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
  }

  private updateMode (): void {
    const renderedMode = this.type === 'markdown' && !this.editing
    this.element.classList.toggle('rendered-mode', renderedMode)
    this.editorHost.hidden = renderedMode
    this.rendered.hidden = !renderedMode
    if (renderedMode) this.scheduleRender()
  }

  private scheduleRender (): void {
    if (this.type !== 'markdown' || this.editing || this.renderFrame) return
    this.renderFrame = requestAnimationFrame(() => {
      this.renderFrame = 0
      this.renderMarkdownNow()
    })
  }

  private renderMarkdownNow (): void {
    const source = this.source
    if (source.trim()) {
      this.rendered.innerHTML = renderMarkdown(source)
      this.rendered.classList.remove('empty')
    } else {
      this.rendered.textContent = 'Empty markdown cell: double-click or press Enter to edit'
      this.rendered.classList.add('empty')
    }
  }

  /** Show the editor (markdown cells) and put the caret at `where`. */
  startEditing (where: 'start' | 'end' | null = null): void {
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

  focusEditor (where: 'start' | 'end' | null): void {
    const view = this.type === 'markdown' && !this.editing ? null : this.ensureEditor()
    if (!view) {
      this.element.focus({ preventScroll: false })
      return
    }
    if (where) {
      const pos = where === 'start' ? 0 : view.state.doc.length
      view.dispatch({ selection: EditorSelection.cursor(pos), scrollIntoView: true })
    }
    view.focus()
  }

  setActive (active: boolean, editing: boolean): void {
    this.element.classList.toggle('active', active)
    this.element.classList.toggle('editing', active && editing)
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
    if (this.renderFrame) cancelAnimationFrame(this.renderFrame)
    this.destroyEditor()
    this.outputs.destroy()
    this.element.remove()
  }
}
