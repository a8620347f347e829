// Small DOM helpers: no framework, just typed element creation and a toast area.

type Child = Node | string | null | undefined | false
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>

/** Create an element: attributes (on* keys become listeners), then children (strings become text). */
export function h<K extends keyof HTMLElementTagNameMap> (
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value)
    } else if (key === 'class') {
      el.className = String(value)
    } else {
      el.setAttribute(key, value === true ? '' : String(value))
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    el.append(child)
  }
  return el
}

export function clear (el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild)
}

let toastArea: HTMLElement | null = null

/** A short message in the bottom corner (errors stay longer). */
export function toast (message: string, kind: 'info' | 'error' = 'info'): void {
  if (!toastArea) {
    toastArea = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' })
    document.body.append(toastArea)
  }
  const el = h('div', { class: `toast toast-${kind}` }, message)
  toastArea.append(el)
  window.setTimeout(() => el.remove(), kind === 'error' ? 8000 : 3500)
}

/** A random id in nbformat's style (8 hex digits); works outside secure contexts too. */
export function randomCellId (): string {
  const bytes = new Uint8Array(4)
  crypto.getRandomValues(bytes)
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
}

export function formatBytes (size: number): string {
  if (size < 1024) return `${size} B`
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`
  return `${(size / 1024 / 1024).toFixed(1)} MB`
}

export function formatTime (epochSeconds: number): string {
  const date = new Date(epochSeconds * 1000)
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' })
}
