// The daemon's REST API, the token, and the URLs the page talks to.
//
// The token arrives once as ?token=… (the URL `crdtnb serve` prints). It is moved to
// sessionStorage and removed from the address bar right away, so it does not stay in the
// history, in bookmarks or in screenshots. API calls send it as `Authorization: token …`;
// the websocket passes it as a query parameter (browsers cannot set websocket headers).

const TOKEN_KEY = 'crdtnb-token'

/** The URL prefix the app is served under ("/" unless mounted), from the page shell. */
export function basePath (): string {
  const meta = document.querySelector<HTMLMetaElement>('meta[name="crdtnb-base"]')
  let base = meta?.content || '/'
  if (!base.endsWith('/')) base += '/'
  return base
}

/** Move ?token= from the address bar into sessionStorage. Call first thing on load. */
export function takeTokenFromUrl (): void {
  const url = new URL(window.location.href)
  const token = url.searchParams.get('token')
  if (token === null) return
  if (token) sessionStorage.setItem(TOKEN_KEY, token)
  url.searchParams.delete('token')
  window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash)
}

export function getToken (): string | null {
  return sessionStorage.getItem(TOKEN_KEY)
}

export function setToken (token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token)
}

export function forgetToken (): void {
  sessionStorage.removeItem(TOKEN_KEY)
}

/** Each path segment percent-encoded, slashes kept. */
export function encodePath (path: string): string {
  return path.split('/').map(encodeURIComponent).join('/')
}

/** The notebook path of a /notebooks/{path} page. */
export function notebookPathFromLocation (): string {
  const prefix = basePath() + 'notebooks/'
  const pathname = window.location.pathname
  const raw = pathname.startsWith(prefix) ? pathname.slice(prefix.length) : pathname.replace(/^.*?\/notebooks\//, '')
  return raw.split('/').map((part) => {
    try { return decodeURIComponent(part) } catch { return part }
  }).join('/')
}

export function notebookPageUrl (path: string): string {
  return `${basePath()}notebooks/${encodePath(path)}`
}

/** The y-websocket server URL (the provider appends "/" + room). */
export function syncServerUrl (): string {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${scheme}//${window.location.host}${basePath()}api/sync`
}

/** Cookie sessions (a signed-in user): the CSRF token to send with every non-GET request. */
let csrfToken: string | null = null

export interface Session {
  user: string
  display_name: string | null
  csrf: string | null
}

/** The signed-in user, if the browser has a session cookie (GET /api/session); else null. */
export async function fetchSession (): Promise<Session | null> {
  try {
    const response = await fetch(`${basePath()}api/session`, {
      headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store'
    })
    if (!response.ok) return null
    const session = await response.json() as Session
    csrfToken = typeof session.csrf === 'string' ? session.csrf : null
    return session
  } catch {
    return null
  }
}

/** End a signed-in session (POST /logout with the CSRF token), then show the sign-in page. */
export async function logout (): Promise<void> {
  await fetch(`${basePath()}logout`, {
    method: 'POST',
    headers: csrfToken ? { 'X-CSRF-Token': csrfToken } : {},
    credentials: 'same-origin',
    redirect: 'manual'
  })
  window.location.assign(`${basePath()}login?next=${encodeURIComponent(window.location.pathname)}`)
}

/** Where a user signs in with a password, if this server has accounts (HEAD /login answers). */
export async function loginPageUrl (): Promise<string | null> {
  const url = `${basePath()}login?next=${encodeURIComponent(window.location.pathname)}`
  try {
    const response = await fetch(`${basePath()}login`, { method: 'HEAD', credentials: 'same-origin', cache: 'no-store' })
    return response.ok ? url : null
  } catch {
    return null
  }
}

export class ApiError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

function authHeaders (method: string): Record<string, string> {
  const headers: Record<string, string> = { Accept: 'application/json' }
  const token = getToken()
  if (token) headers.Authorization = `token ${token}`
  else if (csrfToken && method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken
  return headers
}

async function request<T> (method: string, route: string, body?: unknown, raw?: Blob): Promise<T> {
  const headers = authHeaders(method)
  if (body !== undefined || raw !== undefined) headers['Content-Type'] = 'application/json'
  const response = await fetch(`${basePath()}api/${route}`, {
    method,
    headers,
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
    credentials: 'same-origin',
    cache: 'no-store'
  })
  return await readResponse<T>(response)
}

async function readResponse<T> (response: Response): Promise<T> {
  let payload: any = null
  const text = await response.text()
  if (text) {
    try { payload = JSON.parse(text) } catch { payload = { error: text } }
  }
  if (!response.ok) {
    const message = (payload && typeof payload.error === 'string') ? payload.error : `${response.status} ${response.statusText}`
    throw new ApiError(response.status, message)
  }
  return payload as T
}

export interface NotebookEntry {
  path: string
  name: string
  size: number
  last_modified: number
}

export type KernelStatus = 'starting' | 'idle' | 'busy' | 'dead' | 'none'

export interface InputRequest {
  id: string
  cell_id: string
  prompt: string
  password: boolean
}

export interface KernelInfo {
  status: KernelStatus
  queue: string[]
  running: string | null
  input_request?: InputRequest | null
  /** whether the caller may run code here (completions from the kernel, answering input) */
  may_execute?: boolean
}

export interface CompleteReply {
  status: string
  matches: string[]
  cursor_start: number
  cursor_end: number
  metadata: { _jupyter_types_experimental?: Array<{ text?: string, type?: string, start?: number, end?: number }> } & Record<string, unknown>
}

export interface InspectReply {
  status: string
  found: boolean
  data: Record<string, unknown>
}

export interface FolderEntry {
  path: string
  name: string
  last_modified: number
}

export interface FolderListing {
  path: string
  folders: FolderEntry[]
  notebooks: NotebookEntry[]
}

export async function listNotebooks (): Promise<NotebookEntry[]> {
  const result = await request<{ notebooks: NotebookEntry[] }>('GET', 'notebooks')
  return result.notebooks
}

export async function createNotebook (path: string): Promise<{ path: string }> {
  return await request<{ path: string }>('POST', `notebooks/${encodePath(path)}`)
}

export async function execute (path: string, cellIds: string[]): Promise<void> {
  await request('POST', `notebooks/${encodePath(path)}/execute`, { cell_ids: cellIds })
}

export async function kernelAction (path: string, action: 'interrupt' | 'restart' | 'shutdown'): Promise<void> {
  await request('POST', `notebooks/${encodePath(path)}/${action}`)
}

export async function kernelInfo (path: string): Promise<KernelInfo> {
  return await request<KernelInfo>('GET', `notebooks/${encodePath(path)}/kernel`)
}

/** Save the notebook to its .ipynb now (needs write): the time of the save, Unix seconds. */
export async function saveNotebook (path: string): Promise<{ saved_at: number }> {
  return await request<{ saved_at: number }>('POST', `notebooks/${encodePath(path)}/save`)
}

/** The kernel's completions at `cursorPos` (Unicode code points, as the Jupyter protocol counts). */
export async function complete (path: string, code: string, cursorPos: number): Promise<CompleteReply> {
  return await request<CompleteReply>('POST', `notebooks/${encodePath(path)}/complete`, { code, cursor_pos: cursorPos })
}

/** The kernel's help on the name at `cursorPos`. */
export async function inspect (path: string, code: string, cursorPos: number, detailLevel = 0): Promise<InspectReply> {
  return await request<InspectReply>('POST', `notebooks/${encodePath(path)}/inspect`, { code, cursor_pos: cursorPos, detail_level: detailLevel })
}

/** Answer a running cell's input request (409: someone answered first, or the cell ended). */
export async function answerInput (path: string, id: string, value: string): Promise<void> {
  await request('POST', `notebooks/${encodePath(path)}/input`, { id, value })
}

// -- files and folders ---------------------------------------------------------------

/** The folders and notebooks of one folder ("" is the root). */
export async function listFolder (dir: string): Promise<FolderListing> {
  return await request<FolderListing>('GET', dir ? `contents/${encodePath(dir)}` : 'contents')
}

export async function makeFolder (path: string): Promise<void> {
  await request('POST', `folders/${encodePath(path)}`)
}

/** Rename or move a notebook; its open pages follow it. */
export async function renameNotebook (path: string, to: string): Promise<{ path: string }> {
  return await request<{ path: string }>('POST', `notebooks/${encodePath(path)}/rename`, { to })
}

export async function deleteNotebook (path: string): Promise<void> {
  await request('DELETE', `notebooks/${encodePath(path)}`)
}

/** A copy with its outputs ("name-Copy1.ipynb" unless `to` is given). */
export async function duplicateNotebook (path: string, to?: string): Promise<{ path: string }> {
  return await request<{ path: string }>('POST', `notebooks/${encodePath(path)}/duplicate`, to === undefined ? {} : { to })
}

/** Upload an .ipynb (409 if it exists, unless `overwrite`: then it is merged as an outside edit). */
export async function uploadNotebook (path: string, file: Blob, overwrite = false): Promise<{ path: string, created: boolean }> {
  return await request<{ path: string, created: boolean }>('PUT', `notebooks/${encodePath(path)}${overwrite ? '?overwrite=1' : ''}`, undefined, file)
}

/** The notebook as its server holds it now, as a file: fetched with the page's credentials. */
export async function downloadNotebook (path: string): Promise<Blob> {
  const response = await fetch(`${basePath()}api/notebooks/${encodePath(path)}/download`, {
    headers: authHeaders('GET'), credentials: 'same-origin', cache: 'no-store'
  })
  if (!response.ok) await readResponse(response)
  return await response.blob()
}
