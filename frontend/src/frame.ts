// Rich HTML outputs (pandas Styler, plotly, altair/vega, bokeh): HTML that carries <style> or
// <script> runs in a sandboxed frame instead of being stripped.
//
// The frame is `sandbox="allow-scripts"` without allow-same-origin: its document has an opaque
// origin, so its scripts cannot reach this page's DOM, cookies, storage or token, and a request
// they make to the API carries no credentials. Its document, /output-frame, is served by the
// daemon with a CSP of its own (a srcdoc frame would inherit this page's, which forbids inline
// script and style); the output's HTML is handed to it with postMessage, and the frame reports
// its content's height back so it is sized to fit.
import { basePath } from './api'
import { h } from './ui'

const RICH = /<(script|style)\b|<link\b[^>]*\bstylesheet\b/i

/** Whether HTML needs the frame (else it is shown inline, sanitized). */
export function needsFrame (html: string): boolean {
  return RICH.test(html)
}

const MAX_HEIGHT = 20000
const live = new Set<OutputFrame>()

function onMessage (event: MessageEvent): void {
  if (!event.source || typeof event.data !== 'object' || event.data === null) return
  // only our frames' own windows are listened to (the ready message may precede `load`)
  for (const frame of live) {
    if (frame.element.contentWindow === event.source) {
      frame.receive(event.data as Record<string, unknown>, event.source as Window)
      return
    }
  }
}

let listening = false

export class OutputFrame {
  readonly element: HTMLIFrameElement

  constructor (private readonly html: string) {
    if (!listening) {
      window.addEventListener('message', onMessage)
      listening = true
    }
    this.element = h('iframe', {
      class: 'output-frame',
      sandbox: 'allow-scripts',
      src: `${basePath()}output-frame`,
      title: 'Output',
      referrerpolicy: 'no-referrer',
      scrolling: 'no'
    })
    live.add(this)
  }

  receive (data: Record<string, unknown>, source: Window): void {
    if (data.type === 'crdtnb-frame-ready') {
      // the frame's origin is opaque: '*' is the only target that reaches it
      source.postMessage({ type: 'crdtnb-render', html: this.html }, '*')
    } else if (data.type === 'crdtnb-frame-size' && typeof data.height === 'number' && Number.isFinite(data.height)) {
      const height = Math.max(0, Math.min(MAX_HEIGHT, Math.ceil(data.height)))
      this.element.style.height = `${height}px`
    }
  }

  destroy (): void {
    live.delete(this)
    this.element.remove()
  }
}
