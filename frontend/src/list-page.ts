// Entry point of /: the folders and notebooks of one folder (?dir=…), with breadcrumbs; open,
// create, rename, move, duplicate, download, delete (after a confirmation), upload (a file
// picker, or files dropped on the list), new folders. The server checks every action.
import {
  ApiError, basePath, createNotebook, deleteNotebook, downloadNotebook, duplicateNotebook, forgetToken, listFolder,
  logout, makeFolder, notebookPageUrl, renameNotebook, takeTokenFromUrl, uploadNotebook, type FolderListing, type NotebookEntry
} from './api'
import { credentials, showTokenForm } from './auth'
import { icon } from './icons'
import { h, clear, confirmAction, formatBytes, formatTime, promptText, toast } from './ui'

takeTokenFromUrl()

function currentDir (): string {
  const dir = new URL(window.location.href).searchParams.get('dir') ?? ''
  return dir.replace(/^\/+|\/+$/g, '')
}

function dirUrl (dir: string): string {
  return dir ? `${basePath()}?dir=${encodeURIComponent(dir)}` : basePath()
}

function join (dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name
}

function suggestName (existing: Set<string>): string {
  if (!existing.has('Untitled.ipynb')) return 'Untitled.ipynb'
  for (let i = 1; ; i++) if (!existing.has(`Untitled${i}.ipynb`)) return `Untitled${i}.ipynb`
}

function failure (what: string, error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 403) return `Cannot ${what}: not allowed`
    if (error.status === 409) return `Cannot ${what}: ${error.message}`
  }
  return `Cannot ${what}: ${error instanceof Error ? error.message : String(error)}`
}

function actionButton (name: string, title: string, onClick: () => void): HTMLButtonElement {
  const button = h('button', { type: 'button', class: `btn btn-icon row-${name}`, title, 'aria-label': title }, icon(name))
  button.addEventListener('click', onClick)
  return button
}

class ListPage {
  private dir = currentDir()
  private listing: FolderListing | null = null
  private readonly picker = h('input', { type: 'file', accept: '.ipynb,application/x-ipynb+json,application/json', multiple: true, hidden: true, class: 'upload-picker' })

  constructor (private readonly app: HTMLElement, private readonly signOut: HTMLElement | null) {
    this.picker.addEventListener('change', () => {
      const files = [...(this.picker.files ?? [])]
      this.picker.value = ''
      void this.upload(files)
    })
    window.addEventListener('popstate', () => {
      this.dir = currentDir()
      void this.load()
    })
  }

  async load (): Promise<void> {
    try {
      this.listing = await listFolder(this.dir)
      this.render(this.listing)
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        forgetToken()
        showTokenForm('The server did not accept the token.', () => { void this.load() })
        return
      }
      if (error instanceof ApiError && (error.status === 404 || error.status === 400) && this.dir) {
        toast(`No folder ${this.dir}`, 'error')
        this.go('')
        return
      }
      clear(this.app)
      this.app.append(h('p', { class: 'banner' }, `Cannot list notebooks: ${(error as Error).message}`))
    }
  }

  private go (dir: string): void {
    this.dir = dir
    window.history.pushState(null, '', dirUrl(dir))
    void this.load()
  }

  private render (listing: FolderListing): void {
    clear(this.app)
    const names = new Set(listing.notebooks.map((n) => n.name))
    const input = h('input', {
      type: 'text', class: 'new-name', name: 'path', value: suggestName(names), 'aria-label': 'New notebook name', spellcheck: 'false', required: true
    })
    const form = h('form', { class: 'new-notebook' }, input,
      h('button', { type: 'submit', class: 'btn btn-primary' }, icon('plus'), h('span', { class: 'btn-label' }, 'New notebook')))
    form.addEventListener('submit', (event) => {
      event.preventDefault()
      let name = input.value.trim().replace(/^\/+/, '')
      if (!name) return
      if (!name.endsWith('.ipynb')) name += '.ipynb'
      void this.create(join(this.dir, name))
    })
    const actions = h('div', { class: 'list-actions' },
      h('button', { type: 'button', class: 'btn new-folder', title: 'New folder', onclick: () => { void this.newFolder() } }, icon('folderPlus'), h('span', { class: 'btn-label' }, 'Folder')),
      h('button', { type: 'button', class: 'btn upload', title: 'Upload .ipynb files (or drop them on the list)', onclick: () => this.picker.click() }, icon('upload'), h('span', { class: 'btn-label' }, 'Upload')),
      this.picker)

    const rows: HTMLElement[] = []
    if (listing.path) {
      const parent = listing.path.includes('/') ? listing.path.slice(0, listing.path.lastIndexOf('/')) : ''
      rows.push(h('tr', { class: 'folder-row parent-row' },
        h('td', { class: 'nb-name' }, this.folderLink(parent, '..')), h('td', {}), h('td', {}), h('td', {})))
    }
    for (const folder of listing.folders) {
      rows.push(h('tr', { class: 'folder-row', 'data-path': folder.path },
        h('td', { class: 'nb-name' }, this.folderLink(folder.path, folder.name)),
        h('td', { class: 'nb-size' }, ''),
        h('td', { class: 'nb-modified' }, formatTime(folder.last_modified)),
        h('td', { class: 'nb-actions' })))
    }
    for (const nb of listing.notebooks) rows.push(this.notebookRow(nb))
    const table = rows.length
      ? h('table', { class: 'notebook-list' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Size'), h('th', {}, 'Modified'), h('th', { class: 'nb-actions' }, ''))),
        h('tbody', {}, ...rows))
      : h('p', { class: 'muted' }, 'No notebooks here yet: create one, or drop .ipynb files here.')

    const card = h('section', { class: 'card drop-zone' },
      h('div', { class: 'card-head' }, h('h1', {}, listing.path ? listing.path.split('/').pop() ?? '' : 'Notebooks'), actions, form),
      table)
    this.acceptDrops(card)
    this.app.append(
      h('header', { class: 'topbar' },
        h('a', { class: 'brand', href: basePath() }, h('span', { class: 'brand-mark' }), 'crdtnb'),
        this.breadcrumbs(listing.path),
        this.signOut),
      h('main', { class: 'list-page' }, card))
  }

  private breadcrumbs (path: string): HTMLElement {
    const parts = path ? path.split('/') : []
    const crumbs: Array<HTMLElement | null> = [
      parts.length ? this.crumbLink('', 'Notebooks') : h('span', { class: 'crumb crumb-last' }, 'Notebooks')
    ]
    parts.forEach((part, i) => {
      crumbs.push(h('span', { class: 'crumb-sep' }, '/'))
      const target = parts.slice(0, i + 1).join('/')
      crumbs.push(i === parts.length - 1 ? h('span', { class: 'crumb crumb-last' }, part) : this.crumbLink(target, part))
    })
    return h('nav', { class: 'crumbs', 'aria-label': 'Folder' }, ...crumbs)
  }

  private crumbLink (dir: string, label: string): HTMLElement {
    const link = h('a', { class: 'crumb', href: dirUrl(dir) }, label)
    link.addEventListener('click', (event) => {
      event.preventDefault()
      this.go(dir)
    })
    return link
  }

  private folderLink (dir: string, label: string): HTMLElement {
    const link = h('a', { href: dirUrl(dir), class: 'nb-link folder-link' }, icon('folder'), h('span', { class: 'nb-title' }, label))
    link.addEventListener('click', (event) => {
      event.preventDefault()
      this.go(dir)
    })
    return link
  }

  private notebookRow (nb: NotebookEntry): HTMLElement {
    return h('tr', { class: 'notebook-row', 'data-path': nb.path },
      h('td', { class: 'nb-name' },
        h('a', { href: notebookPageUrl(nb.path), class: 'nb-link' }, icon('book'), h('span', { class: 'nb-title' }, nb.name))),
      h('td', { class: 'nb-size' }, formatBytes(nb.size)),
      h('td', { class: 'nb-modified' }, formatTime(nb.last_modified)),
      h('td', { class: 'nb-actions' },
        actionButton('rename', `Rename ${nb.name}`, () => { void this.rename(nb) }),
        actionButton('move', `Move ${nb.name} to another folder`, () => { void this.move(nb) }),
        actionButton('copy', `Duplicate ${nb.name}`, () => { void this.duplicate(nb) }),
        actionButton('download', `Download ${nb.name}`, () => { void this.download(nb) }),
        actionButton('trash', `Delete ${nb.name}`, () => { void this.remove(nb) })))
  }

  // -- actions ----------------------------------------------------------------------------

  private async create (path: string): Promise<void> {
    try {
      const created = await createNotebook(path)
      window.location.assign(notebookPageUrl(created.path ?? path))
    } catch (error) {
      toast(error instanceof ApiError && error.status === 409 ? `${path} already exists` : failure(`create ${path}`, error), 'error')
    }
  }

  private async newFolder (): Promise<void> {
    const name = await promptText('New folder', `Name of the new folder in ${this.dir || 'the top folder'}`, 'Untitled Folder', 'Create')
    if (!name) return
    try {
      await makeFolder(join(this.dir, name))
      await this.load()
    } catch (error) {
      toast(failure(`create the folder ${name}`, error), 'error')
    }
  }

  private async rename (nb: NotebookEntry): Promise<void> {
    let name = await promptText(`Rename ${nb.name}`, 'New name', nb.name, 'Rename')
    if (!name || name === nb.name) return
    if (!name.endsWith('.ipynb')) name += '.ipynb'
    await this.moveTo(nb, join(this.dir, name), 'rename')
  }

  private async move (nb: NotebookEntry): Promise<void> {
    const folder = await promptText(`Move ${nb.name}`, 'To the folder (empty: the top folder; a new one is created)', this.dir, 'Move')
    if (folder === null) return
    const target = join(folder.replace(/^\/+|\/+$/g, ''), nb.name)
    if (target === nb.path) return
    await this.moveTo(nb, target, 'move')
  }

  private async moveTo (nb: NotebookEntry, to: string, what: string): Promise<void> {
    try {
      const moved = await renameNotebook(nb.path, to)
      toast(`${nb.path} is now ${moved.path}`)
      await this.load()
    } catch (error) {
      toast(failure(`${what} ${nb.name}`, error), 'error')
    }
  }

  private async duplicate (nb: NotebookEntry): Promise<void> {
    try {
      const copy = await duplicateNotebook(nb.path)
      toast(`Copied to ${copy.path}`)
      await this.load()
    } catch (error) {
      toast(failure(`duplicate ${nb.name}`, error), 'error')
    }
  }

  private async download (nb: NotebookEntry): Promise<void> {
    try {
      const blob = await downloadNotebook(nb.path)
      const url = URL.createObjectURL(blob)
      const link = h('a', { href: url, download: nb.name, hidden: true })
      document.body.append(link)
      link.click()
      link.remove()
      window.setTimeout(() => URL.revokeObjectURL(url), 10_000)
    } catch (error) {
      toast(failure(`download ${nb.name}`, error), 'error')
    }
  }

  private async remove (nb: NotebookEntry): Promise<void> {
    const sure = await confirmAction(`Delete ${nb.name}?`,
      `${nb.path} is deleted with its history; its kernel is stopped and the pages open on it are closed. This cannot be undone.`, 'Delete')
    if (!sure) return
    try {
      await deleteNotebook(nb.path)
      toast(`Deleted ${nb.path}`)
      await this.load()
    } catch (error) {
      toast(failure(`delete ${nb.name}`, error), 'error')
    }
  }

  private async upload (files: File[]): Promise<void> {
    let uploaded = 0
    for (const file of files) {
      if (!file.name.endsWith('.ipynb')) {
        toast(`${file.name} is not a notebook (.ipynb)`, 'error')
        continue
      }
      const path = join(this.dir, file.name)
      try {
        await uploadNotebook(path, file)
        uploaded++
      } catch (error) {
        if (error instanceof ApiError && error.status === 409) {
          const replace = await confirmAction(`Replace ${file.name}?`,
            `${path} exists. Its open pages take the upload in as an edit made outside.`, 'Replace')
          if (!replace) continue
          try {
            await uploadNotebook(path, file, true)
            uploaded++
          } catch (again) {
            toast(failure(`upload ${file.name}`, again), 'error')
          }
        } else {
          toast(failure(`upload ${file.name}`, error), 'error')
        }
      }
    }
    if (uploaded) {
      toast(uploaded === 1 ? 'Uploaded 1 notebook' : `Uploaded ${uploaded} notebooks`)
      await this.load()
    }
  }

  private acceptDrops (zone: HTMLElement): void {
    const hasFiles = (event: DragEvent): boolean => [...(event.dataTransfer?.types ?? [])].includes('Files')
    zone.addEventListener('dragover', (event) => {
      if (!hasFiles(event)) return
      event.preventDefault()
      zone.classList.add('dragging')
    })
    zone.addEventListener('dragleave', (event) => {
      if (!zone.contains(event.relatedTarget as Node | null)) zone.classList.remove('dragging')
    })
    zone.addEventListener('drop', (event) => {
      if (!hasFiles(event)) return
      event.preventDefault()
      zone.classList.remove('dragging')
      void this.upload([...(event.dataTransfer?.files ?? [])])
    })
  }
}

async function start (): Promise<void> {
  const app = document.getElementById('app') ?? document.body
  const creds = await credentials('This notebook server needs the token printed by crdtnb serve.')
  const signOut = creds.kind === 'session'
    ? h('button', { type: 'button', class: 'btn btn-signout', title: `Signed in as ${creds.session.user}`, onclick: () => { void logout() } }, 'Sign out')
    : null
  await new ListPage(app, signOut).load()
  document.body.dataset.ready = 'true'
}

void start()
