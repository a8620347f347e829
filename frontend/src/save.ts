// Saving made visible: "saved hh:mm", or the reason the file cannot be written, in the header;
// Ctrl+S saves now.
//
// The server keeps both in the doc's `state` map: `saved_at` (Unix seconds of the last
// successful save of the .ipynb) and `file_error` (present while the file cannot be written).
import * as Y from 'yjs'
import { ApiError, saveNotebook } from './api'
import { h, toast } from './ui'

/** hh:mm, 24-hour, local time. */
export function clockTime (epochSeconds: number): string {
  const date = new Date(epochSeconds * 1000)
  return `${String(date.getHours()).padStart(2, '0')}:${String(date.getMinutes()).padStart(2, '0')}`
}

export class SaveStatus {
  readonly element: HTMLElement
  private savedAt: number | null = null
  private saving = false
  private readonly onState = (event: Y.YMapEvent<unknown>): void => {
    if (event.keysChanged.has('saved_at') || event.keysChanged.has('file_error')) this.render()
  }

  constructor (private readonly state: Y.Map<unknown>, private readonly path: string) {
    this.element = h('span', { class: 'pill save-status', role: 'status', title: 'When the notebook file was last saved (Ctrl+S saves now)' })
    state.observe(this.onState)
    this.render()
  }

  private render (): void {
    const error = this.state.get('file_error')
    const saved = this.state.get('saved_at')
    if (typeof saved === 'number' && Number.isFinite(saved)) this.savedAt = Math.max(this.savedAt ?? 0, saved)
    if (typeof error === 'string' && error) {
      this.element.textContent = 'Not saved'
      this.element.title = `The file cannot be written: ${error}`
      this.element.dataset.state = 'error'
      this.element.hidden = false
    } else if (this.saving) {
      this.element.textContent = 'Saving…'
      this.element.dataset.state = 'saving'
      this.element.hidden = false
    } else if (this.savedAt !== null) {
      this.element.textContent = `saved ${clockTime(this.savedAt)}`
      this.element.title = `Saved to the .ipynb at ${new Date(this.savedAt * 1000).toLocaleString()} (Ctrl+S saves now)`
      this.element.dataset.state = 'saved'
      this.element.hidden = false
    } else {
      this.element.textContent = ''
      this.element.dataset.state = 'unknown'
      this.element.hidden = true
    }
  }

  /** Ctrl+S: ask the server to write the .ipynb now. */
  async saveNow (): Promise<void> {
    if (this.saving) return
    this.saving = true
    this.render()
    try {
      const result = await saveNotebook(this.path)
      if (typeof result?.saved_at === 'number') this.savedAt = Math.max(this.savedAt ?? 0, result.saved_at)
    } catch (error) {
      const reason = error instanceof ApiError
        ? (error.status === 404 || error.status === 405 ? 'this server has no save route' : error.status === 403 ? 'not allowed' : error.message)
        : String(error)
      toast(`Cannot save: ${reason}`, 'error')
    } finally {
      this.saving = false
      this.render()
    }
  }

  destroy (): void {
    this.state.unobserve(this.onState)
  }
}
