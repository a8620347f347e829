// Rendering a code cell's outputs, live, as the server writes them into the doc.
//
// The page only reads outputs: the kernel agent on the server is their one writer.
// Each output is a Y.Map of nbformat keys (tolerating plain objects, as older docs may hold);
// a stream's `text` is a Y.Text the server appends to, so a stream is re-rendered
// incrementally: appended text is converted and appended to the same <pre>.
import * as Y from 'yjs'
import { AnsiUp } from 'ansi_up'
import { sanitizeHtml, sanitizeSvg } from './sanitize'
import { renderLatexInto, renderMarkdownInto } from './markdown'
import { OutputFrame, needsFrame } from './frame'
import { h, clear } from './ui'

type OutputItem = Y.Map<unknown> | Record<string, unknown>

function field (item: OutputItem, key: string): unknown {
  return item instanceof Y.Map ? item.get(key) : item[key]
}

function plain (value: unknown): unknown {
  if (value instanceof Y.Map || value instanceof Y.Array) return value.toJSON()
  if (value instanceof Y.Text) return value.toString()
  return value
}

function textOf (value: unknown): string {
  const v = plain(value)
  if (Array.isArray(v)) return v.map(String).join('')
  if (v === null || v === undefined) return ''
  return String(v)
}

function newAnsi (): AnsiUp {
  const ansi = new AnsiUp()
  ansi.use_classes = true
  ansi.escape_html = true
  return ansi
}

/** ANSI-coloured text as sanitized HTML. */
export function ansiToHtml (text: string): string {
  return sanitizeHtml(newAnsi().ansi_to_html(text))
}

// Most expressive first, as Jupyter chooses. Never application/javascript: the page runs no
// output code (HTML with scripts runs in a sandboxed frame, see frame.ts).
const MIME_ORDER = [
  'text/html',
  'text/markdown',
  'text/latex',
  'image/svg+xml',
  'image/png',
  'image/jpeg',
  'image/gif',
  'image/webp',
  'application/json',
  'text/plain'
]

const BASE64 = /^[A-Za-z0-9+/=\s]*$/

function pickMime (data: Record<string, unknown>): string | null {
  for (const mime of MIME_ORDER) if (mime in data) return mime
  for (const mime of Object.keys(data)) if (/^application\/.+\+json$/.test(mime)) return mime
  return null
}

function renderImage (mime: string, value: string, meta: Record<string, unknown>): HTMLElement {
  const b64 = value.replace(/\s+/g, '')
  if (!BASE64.test(b64)) return h('pre', { class: 'output-text output-invalid' }, `[invalid ${mime} data]`)
  const img = h('img', { class: 'output-image', alt: 'output image', src: `data:${mime};base64,${b64}` })
  const size = (meta[mime] ?? {}) as Record<string, unknown>
  if (typeof size.width === 'number') img.width = size.width
  if (typeof size.height === 'number') img.height = size.height
  return img
}

/** One mime bundle as an element (the richest type the page can show safely); an HTML output
 * with scripts or styles gets a sandboxed frame, handed to `frames` so it can be destroyed. */
export function renderMimeBundle (rawData: unknown, rawMeta: unknown, frames: OutputFrame[] = []): HTMLElement {
  const data = (plain(rawData) ?? {}) as Record<string, unknown>
  const meta = (plain(rawMeta) ?? {}) as Record<string, unknown>
  const mime = pickMime(data)
  if (mime === null) {
    return h('pre', { class: 'output-text output-unsupported' }, `[no displayable data: ${Object.keys(data).join(', ') || 'empty'}]`)
  }
  const value = data[mime]
  const wrapper = h('div', { class: 'output-mime', 'data-mime': mime })
  switch (mime) {
    case 'text/html': {
      const html = textOf(value)
      if (needsFrame(html)) {
        const frame = new OutputFrame(html)
        frames.push(frame)
        wrapper.classList.add('output-rich')
        wrapper.append(frame.element)
      } else {
        wrapper.classList.add('output-html')
        wrapper.innerHTML = sanitizeHtml(html)
      }
      break
    }
    case 'text/markdown':
      wrapper.classList.add('output-markdown', 'markdown-body')
      renderMarkdownInto(wrapper, textOf(value))
      break
    case 'text/latex':
      wrapper.classList.add('output-latex')
      renderLatexInto(wrapper, textOf(value))
      break
    case 'image/svg+xml':
      wrapper.classList.add('output-svg')
      wrapper.innerHTML = sanitizeSvg(textOf(value))
      break
    case 'image/png':
    case 'image/jpeg':
    case 'image/gif':
    case 'image/webp':
      wrapper.append(renderImage(mime, textOf(value), meta))
      break
    case 'text/plain': {
      const pre = h('pre', { class: 'output-text' })
      pre.innerHTML = ansiToHtml(textOf(value))
      wrapper.append(pre)
      break
    }
    default: {
      // application/json and +json: pretty-printed, never evaluated.
      let json = plain(value)
      if (typeof json === 'string') {
        try { json = JSON.parse(json) } catch { /* show the string as is */ }
      }
      wrapper.append(h('pre', { class: 'output-json' }, JSON.stringify(json, null, 2)))
    }
  }
  return wrapper
}

/** A stream output's <pre>, kept in step with its Y.Text by appending what was appended. */
class StreamView {
  readonly pre: HTMLElement
  private ansi = newAnsi()
  private rendered = ''
  private frame = 0
  private source: Y.Text | null = null
  private readonly onChange = (): void => this.schedule()

  constructor (name: string) {
    this.pre = h('pre', { class: `output-stream output-${name === 'stderr' ? 'stderr' : 'stdout'}` })
  }

  bind (text: unknown): void {
    this.unbind()
    if (text instanceof Y.Text) {
      this.source = text
      text.observe(this.onChange)
      this.update(text.toString())
    } else {
      this.update(textOf(text))
    }
  }

  private schedule (): void {
    if (this.frame) return
    this.frame = requestAnimationFrame(() => {
      this.frame = 0
      if (this.source) this.update(this.source.toString())
    })
  }

  private update (text: string): void {
    if (text.length >= this.rendered.length && text.startsWith(this.rendered)) {
      const added = text.slice(this.rendered.length)
      if (added) this.pre.insertAdjacentHTML('beforeend', sanitizeHtml(this.ansi.ansi_to_html(added)))
    } else {
      // Something other than an append (a \r rewrite, a trim): render it all again.
      this.ansi = newAnsi()
      this.pre.innerHTML = sanitizeHtml(this.ansi.ansi_to_html(text))
    }
    this.rendered = text
  }

  unbind (): void {
    if (this.source) this.source.unobserve(this.onChange)
    this.source = null
    if (this.frame) cancelAnimationFrame(this.frame)
    this.frame = 0
  }
}

/** One output, re-rendered when its keys change (e.g. update_display_data replacing `data`). */
class OutputView {
  readonly element: HTMLElement
  private stream: StreamView | null = null
  private frames: OutputFrame[] = []
  private readonly onKeys = (event: Y.YMapEvent<unknown>): void => {
    // A stream whose text grew is handled by StreamView; only key changes land here.
    if (event.target === this.item) this.render()
  }

  constructor (private readonly item: OutputItem) {
    this.element = h('div', { class: 'output' })
    if (item instanceof Y.Map) item.observe(this.onKeys)
    this.render()
  }

  get isExecuteResult (): boolean {
    return field(this.item, 'output_type') === 'execute_result'
  }

  private render (): void {
    this.stream?.unbind()
    this.stream = null
    for (const frame of this.frames) frame.destroy()
    this.frames = []
    clear(this.element)
    const type = String(field(this.item, 'output_type') ?? '')
    this.element.dataset.outputType = type
    switch (type) {
      case 'stream': {
        const name = String(field(this.item, 'name') ?? 'stdout')
        this.stream = new StreamView(name)
        this.stream.bind(field(this.item, 'text'))
        this.element.append(this.stream.pre)
        break
      }
      case 'error': {
        const traceback = plain(field(this.item, 'traceback'))
        const text = Array.isArray(traceback) && traceback.length
          ? traceback.map(String).join('\n')
          : `${textOf(field(this.item, 'ename'))}: ${textOf(field(this.item, 'evalue'))}`
        const pre = h('pre', { class: 'output-error' })
        pre.innerHTML = ansiToHtml(text)
        this.element.append(pre)
        break
      }
      case 'execute_result':
      case 'display_data':
        this.element.append(renderMimeBundle(field(this.item, 'data'), field(this.item, 'metadata'), this.frames))
        break
      default:
        this.element.append(h('pre', { class: 'output-text output-unsupported' }, `[unknown output type ${type || '?'}]`))
    }
  }

  destroy (): void {
    this.stream?.unbind()
    for (const frame of this.frames) frame.destroy()
    if (this.item instanceof Y.Map) this.item.unobserve(this.onKeys)
    this.element.remove()
  }
}

/** All outputs of one cell, following the cell's `outputs` Y.Array. Nothing is rendered until
 * the cell is shown (`show()`): a cell far off screen only notes that its outputs changed. */
export class OutputArea {
  readonly element: HTMLElement
  private source: Y.Array<OutputItem> | null = null
  private views = new Map<OutputItem, OutputView>()
  private shown = false
  private readonly onChange = (): void => {
    if (this.shown) this.render()
    this.onRender?.()
  }

  onRender: (() => void) | null = null

  constructor () {
    this.element = h('div', { class: 'outputs empty' })
  }

  bind (outputs: unknown): void {
    if (outputs === this.source) return
    this.unbind()
    if (outputs instanceof Y.Array) {
      this.source = outputs as Y.Array<OutputItem>
      this.source.observe(this.onChange)
    }
    if (this.shown) this.render()
    this.onRender?.()
  }

  /** Render now and follow every change from here on. */
  show (): void {
    if (this.shown) return
    this.shown = true
    this.render()
  }

  private items (): OutputItem[] {
    return this.source ? this.source.toArray().filter((item) => item !== null && typeof item === 'object') : []
  }

  private render (): void {
    const items = this.items()
    const keep = new Set(items)
    for (const [item, view] of this.views) {
      if (!keep.has(item)) {
        view.destroy()
        this.views.delete(item)
      }
    }
    let cursor: ChildNode | null = this.element.firstChild
    for (const item of items) {
      let view = this.views.get(item)
      if (!view) {
        view = new OutputView(item)
        this.views.set(item, view)
      }
      if (view.element !== cursor) this.element.insertBefore(view.element, cursor)
      else cursor = cursor.nextSibling
    }
    this.element.classList.toggle('empty', items.length === 0)
  }

  get count (): number {
    return this.source ? this.source.length : 0
  }

  get hasExecuteResult (): boolean {
    return this.items().some((item) => field(item, 'output_type') === 'execute_result')
  }

  private unbind (): void {
    if (this.source) this.source.unobserve(this.onChange)
    this.source = null
    for (const view of this.views.values()) view.destroy()
    this.views.clear()
    this.element.classList.add('empty')
  }

  destroy (): void {
    this.unbind()
    this.element.remove()
  }
}
