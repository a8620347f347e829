// Kernel status, and cells just sent to run.
//
// The server writes the kernel status into the doc (`state` map, key `kernel_status`) and
// marks queued and running cells `execution_state: "running"`, so every page sees both live.
// Between a click on Run and the server's change reaching the page, the cell is shown as
// pending locally; GET …/kernel (asked when the status changes, and once a second while
// something is pending) says when the kernel has taken it.
import * as Y from 'yjs'
import { ApiError, kernelInfo, type KernelInfo } from './api'
import { h } from './ui'

export type KernelDisplay = 'starting' | 'idle' | 'busy' | 'dead' | 'none' | 'unavailable' | 'unknown' | 'offline'

const LABELS: Record<KernelDisplay, string> = {
  starting: 'Kernel starting',
  idle: 'Kernel idle',
  busy: 'Kernel busy',
  dead: 'Kernel dead',
  none: 'Kernel not started',
  unavailable: 'No kernel API',
  unknown: 'Kernel …',
  offline: 'Kernel unknown (disconnected)'
}

function statusFromState (value: unknown): KernelDisplay | null {
  const raw = value instanceof Y.Map ? value.get('status') : (value && typeof value === 'object' ? (value as any).status : value)
  if (typeof raw !== 'string') return null
  return raw in LABELS ? raw as KernelDisplay : 'unknown'
}

export class KernelMonitor {
  readonly element: HTMLElement
  private status: KernelDisplay = 'unknown'
  /** while the page is not connected, the last status it saw says nothing about now */
  private connected: boolean | null = null
  private available = true
  private timer = 0
  private inflight = false
  private again = false
  private localPending = new Set<string>()
  private listeners: Array<(cells: Set<string>) => void> = []
  private permissionListeners: Array<(mayExecute: boolean | null) => void> = []
  /** whether this user may run code here, as the server last said (null: not asked yet) */
  mayExecute: boolean | null = null
  private readonly onState = (event: Y.YMapEvent<unknown>): void => {
    if (event.keysChanged.has('kernel_status')) this.fromDoc()
  }

  constructor (private readonly state: Y.Map<unknown>, private readonly path: string) {
    this.element = h('span', { class: 'pill kernel-status', role: 'status', title: 'Kernel status' })
    state.observe(this.onState)
    this.render()
  }

  /** Cells just sent to the kernel and not yet reported on, by id. */
  onPending (listener: (cells: Set<string>) => void): void {
    this.listeners.push(listener)
  }

  /** Called when the server says whether this user may run code here. */
  onPermissions (listener: (mayExecute: boolean | null) => void): void {
    this.permissionListeners.push(listener)
  }

  get pending (): Set<string> {
    return new Set(this.localPending)
  }

  get isAvailable (): boolean {
    return this.available
  }

  /** The connection to the server went up (synced) or down. */
  setConnected (connected: boolean): void {
    if (connected === this.connected) return
    this.connected = connected
    if (connected) this.fromDoc()
    else this.render()
  }

  /** Call once the document has synced. */
  start (): void {
    this.connected = true
    this.fromDoc()
    void this.refresh()
  }

  /** Cells just sent to the kernel: shown as pending until the kernel has reported on them. */
  submitted (ids: string[]): void {
    for (const id of ids) this.localPending.add(id)
    this.emit()
    void this.refresh()
  }

  rejected (ids: string[]): void {
    for (const id of ids) this.localPending.delete(id)
    this.emit()
  }

  private fromDoc (): void {
    const status = statusFromState(this.state.get('kernel_status'))
    if (status) {
      this.status = status
      this.render()
    }
    // the doc says the status; the API is asked only to settle cells sent from this page (a
    // run of all cells flips busy/idle hundreds of times: no request for each)
    if (this.localPending.size > 0 || !status) void this.refresh()
  }

  async refresh (): Promise<void> {
    if (!this.available) return
    if (this.inflight) {
      this.again = true
      return
    }
    this.inflight = true
    const sentBefore = new Set(this.localPending)
    try {
      const info: KernelInfo = await kernelInfo(this.path)
      if (typeof info.status !== 'string') throw new ApiError(404, 'not a kernel answer')
      // The kernel has now reported on what was sent before the request.
      for (const id of sentBefore) this.localPending.delete(id)
      if (typeof info.may_execute === 'boolean' && info.may_execute !== this.mayExecute) {
        this.mayExecute = info.may_execute
        for (const listener of this.permissionListeners) listener(this.mayExecute)
      }
      if (!statusFromState(this.state.get('kernel_status'))) this.status = statusFromState(info.status) ?? 'unknown'
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 405 || error.status === 400)) {
        this.available = false
        this.status = 'unavailable'
        this.localPending.clear()
      }
    } finally {
      this.inflight = false
    }
    this.render()
    this.emit()
    window.clearTimeout(this.timer)
    if (this.again) {
      this.again = false
      void this.refresh()
    } else if (this.available && this.localPending.size > 0) {
      this.timer = window.setTimeout(() => { void this.refresh() }, 1000)
    }
  }

  private emit (): void {
    const pending = this.pending
    for (const listener of this.listeners) listener(pending)
  }

  private render (): void {
    const shown: KernelDisplay = this.connected === false && this.status !== 'unavailable' ? 'offline' : this.status
    this.element.textContent = LABELS[shown]
    this.element.dataset.status = shown
  }

  destroy (): void {
    window.clearTimeout(this.timer)
    this.state.unobserve(this.onState)
  }
}
