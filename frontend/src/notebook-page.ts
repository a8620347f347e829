// Entry point of /notebooks/{path}: header, toolbar, the notebook, presence, connection status.
import { basePath, forgetToken, logout, notebookPageUrl, notebookPathFromLocation, takeTokenFromUrl } from './api'
import { credentials, showTokenForm, type Credentials } from './auth'
import { Connection, CLOSE_MESSAGES, type ConnectionStatus } from './provider'
import { Presence } from './presence'
import { NotebookView } from './notebook'
import { KernelMonitor } from './kernel'
import { SaveStatus } from './save'
import type { CellType } from './keyboard'
import { icon } from './icons'
import { h, clear } from './ui'

takeTokenFromUrl()

function button (name: string, label: string, title: string, onClick: () => void, extra = ''): HTMLButtonElement {
  const b = h('button', { type: 'button', class: `btn tb-${name} ${extra}`.trim(), title, 'aria-label': title }, icon(name), label ? h('span', { class: 'btn-label' }, label) : null)
  b.addEventListener('click', onClick)
  return b
}

/** A drop-down of less frequent actions. */
function menu (label: string, title: string, items: Array<[string, string, () => void] | null>): HTMLElement {
  const list = h('div', { class: 'menu', role: 'menu', hidden: true })
  const toggle = h('button', { type: 'button', class: 'btn tb-more', title, 'aria-label': title, 'aria-haspopup': 'menu', 'aria-expanded': 'false' }, icon('more'), h('span', { class: 'btn-label' }, label))
  const close = (): void => {
    list.hidden = true
    toggle.setAttribute('aria-expanded', 'false')
    document.removeEventListener('mousedown', outside, true)
  }
  const outside = (event: MouseEvent): void => {
    if (!wrapper.contains(event.target as Node)) close()
  }
  for (const item of items) {
    if (!item) {
      list.append(h('div', { class: 'menu-sep', role: 'separator' }))
      continue
    }
    const [name, text, action] = item
    const entry = h('button', { type: 'button', class: `menu-item menu-${name}`, role: 'menuitem' }, text)
    entry.addEventListener('click', () => { close(); action() })
    list.append(entry)
  }
  toggle.addEventListener('click', () => {
    if (!list.hidden) {
      close()
      return
    }
    list.hidden = false
    toggle.setAttribute('aria-expanded', 'true')
    document.addEventListener('mousedown', outside, true)
  })
  list.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      close()
      toggle.focus()
    }
  })
  const wrapper = h('div', { class: 'menu-wrap' }, toggle, list)
  return wrapper
}

function connectionLabel (status: ConnectionStatus, wasConnected: boolean): string {
  if (status.state === 'closed') return 'Disconnected'
  if (status.state === 'connected') return status.synced ? (status.readOnly ? 'Connected (read-only)' : 'Connected') : 'Syncing…'
  return wasConnected ? 'Offline: reconnecting…' : 'Connecting…'
}

function start (path: string, creds: Credentials): void {
  const app = document.getElementById('app') ?? document.body
  clear(app)
  const connection = new Connection(path, creds.kind === 'token' ? creds.token : null)
  const account = creds.kind === 'session' ? (creds.session.display_name || creds.session.user) : null
  const presence = new Presence(connection.awareness, account)
  const kernel = new KernelMonitor(connection.doc.getMap('state'), path)
  const saveStatus = new SaveStatus(connection.doc.getMap('state'), path)
  const notebook = new NotebookView(connection.doc, connection.awareness, path, presence, kernel, {
    save: () => { void saveStatus.saveNow() }
  })

  const connPill = h('span', { class: 'pill connection-status', role: 'status', title: 'Connection to the server' })
  const name = path.split('/').pop() ?? path
  document.title = `${name} · crdtnb`
  const typeSelect = h('select', { class: 'toolbar-type', title: 'Cell type', 'aria-label': 'Cell type of the active cell' },
    h('option', { value: 'code' }, 'Code'),
    h('option', { value: 'markdown' }, 'Markdown'),
    h('option', { value: 'raw' }, 'Raw'))
  typeSelect.addEventListener('change', () => notebook.changeType(typeSelect.value as CellType))
  notebook.onActive((cell) => { if (cell) typeSelect.value = cell.type })

  const focusBack = (fn: () => void) => () => {
    fn()
    if (notebook.activeCell && !notebook.activeCell.element.contains(document.activeElement)) {
      notebook.activeCell.element.focus({ preventScroll: true })
    }
  }

  const header = h('header', { class: 'topbar' },
    h('a', { class: 'brand', href: basePath(), title: 'All notebooks' }, h('span', { class: 'brand-mark' }), 'crdtnb'),
    h('nav', { class: 'crumbs', 'aria-label': 'Notebook path' },
      ...path.split('/').flatMap((part, i, parts) => [
        i ? h('span', { class: 'crumb-sep' }, '/') : null,
        h('span', { class: i === parts.length - 1 ? 'crumb crumb-last' : 'crumb' }, part)
      ])),
    h('div', { class: 'topbar-right' }, saveStatus.element, connPill, kernel.element, presence.element, presence.nameInput,
      creds.kind === 'session'
        ? h('button', { type: 'button', class: 'btn btn-signout', title: `Signed in as ${creds.session.user}`, onclick: () => { void logout() } }, 'Sign out')
        : null))

  const toolbar = h('div', { class: 'toolbar', role: 'toolbar', 'aria-label': 'Notebook actions' },
    button('plus', 'Code', 'Insert a code cell below (b)', () => notebook.insert('below', 'code', true)),
    button('plus', 'Markdown', 'Insert a markdown cell below', () => notebook.insert('below', 'markdown', true)),
    h('span', { class: 'sep' }),
    button('cut', '', 'Cut the selected cells (x)', focusBack(() => notebook.cutCells())),
    button('copy', '', 'Copy the selected cells (c)', focusBack(() => notebook.copyCells())),
    button('paste', '', 'Paste cells below (v)', focusBack(() => { void notebook.pasteCells('below') })),
    h('span', { class: 'sep' }),
    button('up', '', 'Move the selected cells up (Shift+K)', focusBack(() => notebook.move(-1))),
    button('down', '', 'Move the selected cells down (Shift+J)', focusBack(() => notebook.move(1))),
    button('trash', '', 'Delete the selected cells (d d)', focusBack(() => notebook.deleteSelected())),
    button('undo', '', 'Undo my last cell operation (z)', focusBack(() => notebook.undoCells())),
    button('redo', '', 'Redo my last cell operation (Shift+Z)', focusBack(() => notebook.redoCells())),
    h('span', { class: 'sep' }),
    button('run', 'Run', 'Run the cell and select the next (Shift+Enter)', focusBack(() => notebook.run('advance')), 'btn-run'),
    button('runAll', 'Run all', 'Run all cells', focusBack(() => notebook.runAll())),
    button('stop', '', 'Interrupt the kernel (i i)', focusBack(() => notebook.interrupt())),
    button('restart', '', 'Restart the kernel (0 0)', focusBack(() => notebook.restart())),
    h('span', { class: 'sep' }),
    typeSelect,
    menu('More', 'More actions', [
      ['run-above', 'Run all above', focusBack(() => notebook.runAbove())],
      ['run-below', 'Run selected and all below', focusBack(() => notebook.runBelow())],
      ['restart-run-all', 'Restart kernel and run all…', focusBack(() => notebook.restartAndRunAll())],
      null,
      ['clear-outputs', 'Clear outputs of the selected cells', focusBack(() => notebook.clearSelectedOutputs())],
      ['clear-all-outputs', 'Clear all outputs', focusBack(() => notebook.clearOutputs())],
      ['toggle-outputs', 'Hide/show outputs of the selected cells (o)', focusBack(() => notebook.toggleOutputs())],
      ['line-numbers', 'Line numbers in every cell (Shift+L)', focusBack(() => notebook.toggleLineNumbers(true))],
      null,
      ['save', 'Save now (Ctrl+S)', () => { void saveStatus.saveNow() }],
      ['shortcuts', 'Keyboard shortcuts (h)', () => notebook.showHelp()]
    ]),
    h('span', { class: 'toolbar-hint' }, 'Esc: command mode · Enter: edit · Shift+Enter: run · h: shortcuts'))

  // A rename: the server sets `state.moved_to`, then closes the socket with 4410. The page
  // goes to the new path (the server's document is the same room).
  const state = connection.doc.getMap('state')
  let moving = false
  const follow = (moved: unknown): void => {
    if (moving || typeof moved !== 'string' || !moved || moved === path) return
    moving = true
    document.body.dataset.movedTo = moved
    window.location.replace(notebookPageUrl(moved))
  }
  state.observe((event) => { if (event.keysChanged.has('moved_to')) follow(state.get('moved_to')) })

  window.addEventListener('beforeunload', (event) => {
    // Offline edits exist only in this tab: leaving now would lose them.
    if (!moving && connection.unsent && !connection.status.readOnly) event.preventDefault()
  })

  const banner = h('div', { class: 'banner', hidden: true, role: 'alert' })
  const loading = h('div', { class: 'loading' }, 'Loading notebook…')
  app.append(header, toolbar, banner, loading, notebook.element)

  let started = false
  let wasConnected = false
  connection.onStatus((status) => {
    wasConnected ||= status.state === 'connected'
    const offline = wasConnected && status.state === 'connecting'
    connPill.textContent = connectionLabel(status, wasConnected)
    connPill.dataset.state = offline ? 'disconnected' : status.state
    document.body.dataset.connection = offline ? 'disconnected' : status.state
    document.body.dataset.synced = String(status.synced)
    notebook.setReadOnly(status.readOnly)
    if (status.synced && !started) {
      started = true
      loading.remove()
      kernel.start()
      document.body.dataset.ready = 'true'
    } else if (started) {
      // the kernel's status is only known while connected
      kernel.setConnected(status.state === 'connected' && status.synced)
    }
    if (status.state === 'closed' && status.closeCode === 4410) {
      follow(state.get('moved_to') ?? status.closeReason.replace(/^moved to /, ''))
    }
    if (status.state === 'closed' && status.closeCode !== null) {
      const reason = CLOSE_MESSAGES[status.closeCode] ?? status.closeReason
      banner.hidden = false
      banner.textContent = `The server closed the connection: ${reason}.`
      if (status.closeCode === 4401) {
        forgetToken()
        connection.destroy()
        notebook.destroy()
        kernel.destroy()
        saveStatus.destroy()
        showTokenForm('The server did not accept the token. Enter the token printed by crdtnb serve.',
          (next) => start(path, { kind: 'token', token: next }))
      }
    } else {
      banner.hidden = true
    }
  })
}

const path = notebookPathFromLocation()
void credentials('This notebook server needs the token printed by crdtnb serve.').then((creds) => start(path, creds))
