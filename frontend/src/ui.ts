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

/** A modal dialog; resolves with the button chosen (null: dismissed with Esc or outside). */
export function dialog (title: string, body: Node | string, buttons: Array<{ label: string, value: string, primary?: boolean, danger?: boolean }>, wide = false): Promise<string | null> {
  const previous = document.activeElement instanceof HTMLElement ? document.activeElement : null
  return new Promise((resolve) => {
    const buttonRow = h('div', { class: 'dialog-buttons' })
    const box = h('div', { class: wide ? 'dialog dialog-wide' : 'dialog', role: 'dialog', 'aria-modal': 'true', 'aria-label': title, tabindex: -1 },
      h('h2', { class: 'dialog-title' }, title),
      typeof body === 'string' ? h('p', { class: 'dialog-body' }, body) : body,
      buttonRow)
    const backdrop = h('div', { class: 'overlay dialog-backdrop' }, box)
    const close = (value: string | null): void => {
      backdrop.remove()
      document.removeEventListener('keydown', onKey, true)
      previous?.focus({ preventScroll: true })
      resolve(value)
    }
    const onKey = (event: KeyboardEvent): void => {
      if (event.key === 'Escape') {
        event.preventDefault()
        event.stopPropagation()
        close(null)
      } else if (!box.contains(event.target as Node)) {
        // keys meant for the dialog never reach the notebook behind it
        event.stopPropagation()
      }
    }
    let focusTarget: HTMLElement = box
    for (const spec of buttons) {
      const button = h('button', { type: 'button', class: `btn dialog-${spec.value}${spec.primary ? ' btn-primary' : ''}${spec.danger ? ' btn-danger' : ''}` }, spec.label)
      button.addEventListener('click', () => close(spec.value))
      buttonRow.append(button)
      if (spec.primary) focusTarget = button
    }
    backdrop.addEventListener('mousedown', (event) => { if (event.target === backdrop) close(null) })
    document.addEventListener('keydown', onKey, true)
    document.body.append(backdrop)
    focusTarget.focus()
  })
}

/** Ask before something that cannot be undone (a restart). */
export async function confirmAction (title: string, message: string, action: string): Promise<boolean> {
  return await dialog(title, message, [{ label: 'Cancel', value: 'cancel' }, { label: action, value: 'ok', primary: true, danger: true }]) === 'ok'
}

/** Ask for a line of text (a new name); resolves with it, or null if cancelled. */
export async function promptText (title: string, label: string, initial: string, action: string): Promise<string | null> {
  const input = h('input', { type: 'text', class: 'dialog-input', value: initial, spellcheck: 'false', 'aria-label': label })
  const body = h('label', { class: 'dialog-field' }, h('span', { class: 'dialog-label' }, label), input)
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.isComposing) {
      event.preventDefault()
      input.closest('.dialog')?.querySelector<HTMLButtonElement>('.dialog-ok')?.click()
    }
  })
  const chosen = dialog(title, body, [{ label: 'Cancel', value: 'cancel' }, { label: action, value: 'ok', primary: true }])
  // the dialog focuses its primary button: the field is what one types in
  input.focus()
  const dot = initial.lastIndexOf('.')
  input.setSelectionRange(0, dot > 0 ? dot : initial.length)
  return await chosen === 'ok' ? input.value.trim() : null
}
