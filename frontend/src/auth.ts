// The token form, shown when the page has no token (or the server refused it).
import { fetchSession, getToken, loginPageUrl, setToken, type Session } from './api'
import { h } from './ui'

export type Credentials = { kind: 'token', token: string } | { kind: 'session', session: Session }

/** A token (from ?token= or this tab's storage), else a signed-in session, else ask. */
export async function credentials (message: string): Promise<Credentials> {
  const token = getToken()
  if (token) return { kind: 'token', token }
  const session = await fetchSession()
  if (session) return { kind: 'session', session }
  return await new Promise((resolve) => {
    showTokenForm(message, (next) => resolve({ kind: 'token', token: next }))
  })
}

export function showTokenForm (message: string, onToken: (token: string) => void): void {
  const input = h('input', {
    type: 'password',
    class: 'token-input',
    name: 'token',
    autocomplete: 'current-password',
    placeholder: 'Token printed by crdtnb serve',
    'aria-label': 'Access token',
    required: true
  })
  const login = h('p', { class: 'login-link', hidden: true })
  const form = h('form', { class: 'token-form' },
    h('h2', {}, 'Sign in'),
    h('p', {}, message),
    input,
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Continue'),
    login)
  void loginPageUrl().then((url) => {
    if (!url) return
    login.append('or ', h('a', { href: url }, 'sign in with a user name and password'))
    login.hidden = false
  })
  const overlay = h('div', { class: 'overlay' }, form)
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const token = input.value.trim()
    if (!token) return
    setToken(token)
    overlay.remove()
    onToken(token)
  })
  document.body.append(overlay)
  input.focus()
}
