// Entry point of /: the notebooks under the root; open one, create one.
import {
  ApiError, basePath, createNotebook, forgetToken, listNotebooks, logout, notebookPageUrl,
  takeTokenFromUrl, type NotebookEntry
} from './api'
import { credentials, showTokenForm } from './auth'
import { icon } from './icons'
import { h, clear, formatBytes, formatTime, toast } from './ui'

takeTokenFromUrl()

function suggestName (existing: Set<string>): string {
  if (!existing.has('Untitled.ipynb')) return 'Untitled.ipynb'
  for (let i = 1; ; i++) if (!existing.has(`Untitled${i}.ipynb`)) return `Untitled${i}.ipynb`
}

function render (app: HTMLElement, notebooks: NotebookEntry[]): void {
  clear(app)
  const paths = new Set(notebooks.map((n) => n.path))
  const input = h('input', {
    type: 'text',
    class: 'new-name',
    name: 'path',
    value: suggestName(paths),
    'aria-label': 'New notebook path',
    spellcheck: 'false',
    required: true
  })
  const form = h('form', { class: 'new-notebook' }, input,
    h('button', { type: 'submit', class: 'btn btn-primary' }, icon('plus'), h('span', { class: 'btn-label' }, 'New notebook')))
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    let path = input.value.trim().replace(/^\/+/, '')
    if (!path) return
    if (!path.endsWith('.ipynb')) path += '.ipynb'
    try {
      const created = await createNotebook(path)
      window.location.assign(notebookPageUrl(created.path ?? path))
    } catch (error) {
      toast(error instanceof ApiError && error.status === 409 ? `${path} already exists` : `Cannot create ${path}: ${(error as Error).message}`, 'error')
    }
  })

  const rows = notebooks.map((nb) => {
    const dir = nb.path.includes('/') ? nb.path.slice(0, nb.path.lastIndexOf('/') + 1) : ''
    return h('tr', {},
      h('td', { class: 'nb-name' },
        h('a', { href: notebookPageUrl(nb.path), class: 'nb-link' }, icon('book'), h('span', { class: 'nb-title' }, h('span', { class: 'nb-dir' }, dir), nb.name))),
      h('td', { class: 'nb-size' }, formatBytes(nb.size)),
      h('td', { class: 'nb-modified' }, formatTime(nb.last_modified)))
  })
  const table = notebooks.length
    ? h('table', { class: 'notebook-list' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Size'), h('th', {}, 'Modified'))),
      h('tbody', {}, ...rows))
    : h('p', { class: 'muted' }, 'No notebooks yet: create one.')

  app.append(
    h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: basePath() }, h('span', { class: 'brand-mark' }), 'crdtnb'),
      h('span', { class: 'crumbs' }, h('span', { class: 'crumb crumb-last' }, 'Notebooks'))),
    h('main', { class: 'list-page' },
      h('section', { class: 'card' },
        h('div', { class: 'card-head' }, h('h1', {}, 'Notebooks'), form),
        table)))
}

async function load (): Promise<void> {
  const app = document.getElementById('app') ?? document.body
  const creds = await credentials('This notebook server needs the token printed by crdtnb serve.')
  try {
    render(app, await listNotebooks())
    if (creds.kind === 'session') {
      app.querySelector('.topbar')?.append(h('button', {
        type: 'button', class: 'btn btn-signout', title: `Signed in as ${creds.session.user}`, onclick: () => { void logout() }
      }, 'Sign out'))
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetToken()
      showTokenForm('The server did not accept the token.', () => { void load() })
      return
    }
    clear(app)
    app.append(h('p', { class: 'banner' }, `Cannot list notebooks: ${(error as Error).message}`))
  }
}

void load()
