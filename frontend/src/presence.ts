// Presence: who I am (name and colour, kept in localStorage), who is here, and where.
//
// Awareness state of this page: { user: {name, color, colorLight}, cell: <active cell id>,
// cursor: … (set by y-codemirror.next for remote carets) }.
import type { Awareness } from 'y-protocols/awareness'
import { h, clear } from './ui'

const NAME_KEY = 'crdtnb-user-name'
const COLOR_KEY = 'crdtnb-user-color'

export const PALETTE = ['#d32f2f', '#1976d2', '#388e3c', '#f57c00', '#7b1fa2', '#00838f', '#c2185b', '#5d4037', '#455a64', '#827717', '#303f9f', '#00695c']

export interface UserInfo {
  name: string
  color: string
  colorLight: string
}

export interface Peer {
  clientId: number
  user: UserInfo
  cell: string | null
  self: boolean
}

function randomInt (n: number): number {
  const buf = new Uint32Array(1)
  crypto.getRandomValues(buf)
  return buf[0] % n
}

function storedName (accountName?: string | null): string {
  let name = localStorage.getItem(NAME_KEY)
  if (!name) {
    name = accountName || `Guest ${1000 + randomInt(9000)}`
    localStorage.setItem(NAME_KEY, name)
  }
  return name
}

function storedColor (): string {
  let color = localStorage.getItem(COLOR_KEY)
  if (!color || !/^#[0-9a-f]{6}$/i.test(color)) {
    color = PALETTE[randomInt(PALETTE.length)]
    localStorage.setItem(COLOR_KEY, color)
  }
  return color
}

/** This browser's name and colour (a signed-in account's name is the default name). */
export function localUser (accountName?: string | null): UserInfo {
  const color = storedColor()
  return { name: storedName(accountName), color, colorLight: color + '33' }
}

/** A colour is used in inline styles: accept only #rgb/#rrggbb from peers. */
export function safeColor (value: unknown, fallback = '#888888'): string {
  return typeof value === 'string' && /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(value) ? value : fallback
}

function initials (name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean)
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words
  return letters.map((w) => Array.from(w)[0] ?? '').join('').toUpperCase() || '?'
}

export class Presence {
  readonly element: HTMLElement
  readonly nameInput: HTMLInputElement
  private user: UserInfo
  private listeners: Array<(peers: Peer[]) => void> = []
  private renderedKey: string | null = null

  constructor (private readonly awareness: Awareness, accountName?: string | null) {
    this.user = localUser(accountName)
    awareness.setLocalStateField('user', this.user)
    this.nameInput = h('input', {
      class: 'user-name',
      type: 'text',
      maxlength: 40,
      value: this.user.name,
      title: 'Your name, as others see it',
      'aria-label': 'Your name',
      spellcheck: 'false'
    })
    this.nameInput.style.borderLeftColor = this.user.color
    this.nameInput.addEventListener('change', () => this.rename(this.nameInput.value))
    this.nameInput.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === 'Escape') {
        event.preventDefault()
        this.nameInput.blur()
      }
      event.stopPropagation()
    })
    this.element = h('div', { class: 'presence', 'aria-label': 'Who is here' })
    awareness.on('change', () => {
      this.avoidSameColour()
      this.render()
    })
    this.render()
  }

  /**
   * Two people in one colour cannot be told apart. Colours are picked at random and kept per
   * browser, so they collide: of two peers with one colour, the one with the higher client id
   * (both pages agree which) takes the first colour nobody here uses, for this session.
   */
  private avoidSameColour (): void {
    const mine = this.awareness.clientID
    const used = new Set<string>()
    let clash = false
    this.awareness.getStates().forEach((state, clientId) => {
      if (clientId === mine) return
      const color = safeColor(state?.user?.color, '').toLowerCase()
      if (!color) return
      used.add(color)
      if (color === this.user.color.toLowerCase() && clientId < mine) clash = true
    })
    if (!clash) return
    const free = PALETTE.find((color) => !used.has(color.toLowerCase()))
    if (!free) return // more people than colours
    this.user = { ...this.user, color: free, colorLight: free + '33' }
    this.nameInput.style.borderLeftColor = free
    this.awareness.setLocalStateField('user', this.user)
  }

  get me (): UserInfo {
    return this.user
  }

  rename (raw: string): void {
    const name = raw.trim().slice(0, 40) || this.user.name
    this.nameInput.value = name
    if (name === this.user.name) return
    localStorage.setItem(NAME_KEY, name)
    this.user = { ...this.user, name }
    this.awareness.setLocalStateField('user', this.user)
  }

  setActiveCell (cellId: string | null): void {
    const state = this.awareness.getLocalState()
    if (state && state.cell === cellId) return
    this.awareness.setLocalStateField('cell', cellId)
  }

  onChange (listener: (peers: Peer[]) => void): void {
    this.listeners.push(listener)
  }

  peers (): Peer[] {
    const peers: Peer[] = []
    this.awareness.getStates().forEach((state, clientId) => {
      const user = state?.user
      if (!user || typeof user.name !== 'string') return
      const color = safeColor(user.color)
      peers.push({
        clientId,
        user: { name: user.name.slice(0, 60), color, colorLight: color + '33' },
        cell: typeof state.cell === 'string' ? state.cell : null,
        self: clientId === this.awareness.clientID
      })
    })
    peers.sort((a, b) => Number(b.self) - Number(a.self) || a.user.name.localeCompare(b.user.name) || a.clientId - b.clientId)
    return peers
  }

  private render (): void {
    const peers = this.peers()
    // awareness changes with every caret move: rebuild only when who is here, or where, changed
    const key = peers.map((p) => `${p.clientId}\u0000${p.user.name}\u0000${p.user.color}\u0000${p.cell ?? ''}`).join('\u0001')
    if (key === this.renderedKey) return
    this.renderedKey = key
    clear(this.element)
    for (const peer of peers) {
      const label = peer.self ? `${peer.user.name} (you)` : peer.user.name
      const avatar = h('span', { class: 'avatar', title: label, 'data-client': peer.clientId }, initials(peer.user.name))
      avatar.style.backgroundColor = peer.user.color
      const item = h('span', { class: peer.self ? 'peer peer-self' : 'peer' }, avatar, h('span', { class: 'peer-name' }, label))
      this.element.append(item)
    }
    this.element.dataset.count = String(peers.length)
    for (const listener of this.listeners) listener(peers)
  }
}
