// The shared document and its connection: y-websocket's provider, unchanged protocol.
//
// The provider reconnects with backoff and catches up by itself (step1/step2 on every
// connect); it stops on the server's 44xx close codes (auth, missing notebook, bad path).
// BroadcastChannel sync between tabs is off: every byte goes through the server, which
// enforces each connection's permissions (a read-only tab must not feed a writer tab).
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { encodePath, syncServerUrl } from './api'

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed'

export interface ConnectionStatus {
  state: ConnectionState
  synced: boolean
  /** set when the server closed for good (44xx) */
  closeCode: number | null
  closeReason: string
  readOnly: boolean
}

export const CLOSE_MESSAGES: Record<number, string> = {
  4400: 'not a notebook path under the root',
  4401: 'not authenticated: the token is missing or wrong',
  4403: 'you may not open this notebook',
  4404: 'no such notebook (or it was deleted)',
  4410: 'the notebook was renamed',
  4422: 'the file is not a valid notebook'
}

export class Connection {
  readonly doc = new Y.Doc()
  readonly provider: WebsocketProvider
  private listeners: Array<(status: ConnectionStatus) => void> = []
  status: ConnectionStatus = { state: 'connecting', synced: false, closeCode: null, closeReason: '', readOnly: false }
  /** local edits made while not synced (they reach the server on the next sync) */
  unsent = false

  /** `token` null: a signed-in session, whose cookie the browser sends with the handshake. */
  constructor (path: string, token: string | null) {
    this.provider = new WebsocketProvider(syncServerUrl(), encodePath(path), this.doc, {
      params: token ? { token } : {},
      disableBc: true,
      maxBackoffTime: 2500
    })
    this.provider.on('status', ({ status }: { status: string }) => {
      this.update({ state: status as ConnectionState })
    })
    this.provider.on('sync', (synced: boolean) => this.update({ synced }))
    // A close for good (44xx): emitted after the provider's own "disconnected", so it is the
    // last word on the connection.
    this.provider.on('closed', (event: { code: number, reason: string }) => {
      this.update({ state: 'closed', synced: false, closeCode: event.code, closeReason: event.reason || CLOSE_MESSAGES[event.code] || '' })
    })
    // Edits made while offline live only in this tab until the next sync.
    this.doc.on('update', (_update: Uint8Array, origin: unknown) => {
      if (origin !== this.provider && !this.status.synced) this.unsent = true
    })
    // y-protocols' auth message: the server took this connection as read-only.
    this.provider.messageHandlers[2] = (_encoder, decoder) => {
      const kind = decoderReadVarUint(decoder)
      if (kind === 0) this.update({ readOnly: true })
    }
  }

  get awareness () {
    return this.provider.awareness
  }

  onStatus (listener: (status: ConnectionStatus) => void): void {
    this.listeners.push(listener)
    listener(this.status)
  }

  private update (change: Partial<ConnectionStatus>): void {
    this.status = { ...this.status, ...change }
    if (change.synced) this.unsent = false
    if (change.state === 'connecting' || change.state === 'connected') {
      this.status.closeCode = null
    }
    for (const listener of this.listeners) listener(this.status)
  }

  destroy (): void {
    this.provider.destroy()
    this.doc.destroy()
  }
}

// lib0's decoder is a plain object with `arr` and `pos`; read one varUint without importing lib0 twice.
function decoderReadVarUint (decoder: { arr: Uint8Array, pos: number }): number {
  let num = 0
  let mult = 1
  while (decoder.pos < decoder.arr.length) {
    const byte = decoder.arr[decoder.pos++]
    num += (byte & 0x7f) * mult
    mult *= 128
    if (byte < 0x80) return num
  }
  return num
}
