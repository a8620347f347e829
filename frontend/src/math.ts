// Math in markdown and in text/latex outputs, typeset by KaTeX.
//
// As JupyterLab does, math is taken out of the text before markdown sees it (else markdown
// eats `\,`, `_` and `*`), replaced by tokens, and put back, typeset, into the HTML markdown
// made. Delimiters: $…$, $$…$$, \(…\), \[…\] and \begin{env}…\end{env}; nothing inside code
// spans or fenced code blocks is math; `\$` is a dollar sign. An inline $…$ follows pandoc's
// rule (no space after the opening or before the closing $, no digit right after it) and holds
// no backtick, so "$5 and $10" stays text.
//
// KaTeX (about 270 KB of script) is loaded on first use, in its own chunk: until then math
// shows as its TeX source, and whoever rendered it is called back to render again.
// Its fonts come from /static (the CSP allows fonts from 'self' only).

export interface MathSpan {
  /** the TeX inside the delimiters (environments keep theirs: KaTeX reads them) */
  tex: string
  display: boolean
  /** the original text, delimiters included (shown until KaTeX is loaded, or on error) */
  raw: string
}

export interface Extracted {
  text: string
  spans: MathSpan[]
  token: (index: number) => string
}

function findUnescaped (text: string, needle: string, from: number, stopAtBlankLine: boolean): number {
  for (let i = from; i <= text.length - needle.length; i++) {
    const c = text[i]
    if (c === '\\') {
      i++ // skip the escaped character
      continue
    }
    if (stopAtBlankLine && c === '\n' && /^\n[ \t]*\n/.test(text.slice(i, i + 64))) return -1
    if (text.startsWith(needle, i)) return i
  }
  return -1
}

const FENCE = /^ {0,3}(`{3,}|~{3,})/

/** Take the math out of markdown (or LaTeX text), leaving unique tokens in its place. */
export function extractMath (source: string): Extracted {
  const nonce = Math.random().toString(36).slice(2, 8)
  const token = (index: number): string => `MATH${nonce}X${index}X`
  const spans: MathSpan[] = []
  const out: string[] = []
  const lines = source.split('\n')
  // Fenced code blocks are copied verbatim; the rest is scanned paragraph by paragraph.
  let buffer: string[] = []
  let fence: string | null = null
  const flush = (): void => {
    if (buffer.length) out.push(scan(buffer.join('\n'), spans, token))
    buffer = []
  }
  const verbatim: string[] = []
  for (const line of lines) {
    const match = FENCE.exec(line)
    if (fence === null && match) {
      flush()
      fence = match[1][0].repeat(match[1].length)
      verbatim.push(line)
    } else if (fence !== null) {
      verbatim.push(line)
      if (line.trim().startsWith(fence) && line.trim().replace(/[`~]/g, '') === '') {
        out.push(verbatim.join('\n'))
        verbatim.length = 0
        fence = null
      }
    } else {
      buffer.push(line)
    }
  }
  flush()
  if (verbatim.length) out.push(verbatim.join('\n'))
  return { text: out.join('\n'), spans, token }
}

function scan (text: string, spans: MathSpan[], token: (i: number) => string): string {
  let result = ''
  let i = 0
  const take = (end: number, tex: string, display: boolean): void => {
    const raw = text.slice(i, end)
    result += token(spans.length)
    spans.push({ tex, display, raw })
    i = end
  }
  while (i < text.length) {
    const c = text[i]
    if (c === '`') {
      // a code span: as many backticks close it as opened it
      let run = 1
      while (text[i + run] === '`') run++
      const close = text.indexOf('`'.repeat(run), i + run)
      const end = close < 0 ? i + run : close + run
      result += text.slice(i, end)
      i = end
      continue
    }
    if (c === '\\') {
      const next = text[i + 1]
      if (next === '(' || next === '[') {
        const closer = next === '(' ? '\\)' : '\\]'
        const close = text.indexOf(closer, i + 2)
        if (close >= 0) {
          take(close + 2, text.slice(i + 2, close), next === '[')
          continue
        }
      } else if (text.startsWith('\\begin{', i)) {
        const env = /^\\begin\{([A-Za-z*]+)\}/.exec(text.slice(i, i + 40))
        if (env) {
          const endTag = `\\end{${env[1]}}`
          const close = text.indexOf(endTag, i)
          if (close >= 0) {
            const end = close + endTag.length
            take(end, text.slice(i, end), true)
            continue
          }
        }
      }
      result += text.slice(i, i + 2) // an escape (\$ stays for markdown to unescape)
      i += 2
      continue
    }
    if (c === '$') {
      if (text[i + 1] === '$') {
        const close = findUnescaped(text, '$$', i + 2, false)
        if (close > i + 2) {
          take(close + 2, text.slice(i + 2, close), true)
          continue
        }
      } else {
        const close = findUnescaped(text, '$', i + 1, true)
        const inner = close > i + 1 ? text.slice(i + 1, close) : ''
        // (no backtick inside: a code span that follows is not math's business)
        if (inner && !/^\s/.test(inner) && !/\s$/.test(inner) && !inner.includes('`') && !/[0-9]/.test(text[close + 1] ?? '')) {
          take(close + 1, inner, false)
          continue
        }
      }
    }
    result += c
    i++
  }
  return result
}

// -- KaTeX, loaded on first use ------------------------------------------------------------

type Katex = typeof import('katex').default
let katex: Katex | null = null
let loading: Promise<Katex> | null = null

/** KaTeX, once loaded (null until then; the first call starts loading it). */
export function loadedKatex (): Katex | null {
  if (!katex && !loading) void mathReady()
  return katex
}

export function mathReady (): Promise<Katex> {
  loading ??= import('katex').then((module) => {
    katex = module.default
    return katex
  })
  return loading
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** One span as HTML: KaTeX's if it is loaded (errors shown in place), else its source. */
export function typeset (span: MathSpan): string {
  const engine = loadedKatex()
  if (!engine) return `<span class="math-pending">${escapeHtml(span.raw)}</span>`
  return engine.renderToString(span.tex, {
    displayMode: span.display,
    throwOnError: false,
    trust: false, // no \href, \url, \includegraphics, \htmlClass…: the TeX comes from anyone
    strict: 'ignore',
    maxSize: 50,
    maxExpand: 1000,
    output: 'htmlAndMathml'
  })
}

/** Put typeset math back where the tokens are. */
export function restoreMath (html: string, extracted: Extracted): string {
  if (!extracted.spans.length) return html
  return html.replace(new RegExp(`${extracted.token(0).replace(/X0X$/, '')}X(\\d+)X`, 'g'), (_m, n: string) => {
    const span = extracted.spans[Number(n)]
    return span ? typeset(span) : ''
  })
}

/** Whether text has math that is still waiting for KaTeX. */
export function mathPending (extracted: Extracted): boolean {
  return extracted.spans.length > 0 && katex === null
}

/** A text/latex output as HTML: its math typeset, the rest as text (a bare formula is display math). */
export function latexToHtml (latex: string): { html: string, extracted: Extracted } {
  let extracted = extractMath(latex)
  if (!extracted.spans.length && latex.trim()) {
    extracted = { text: extracted.token(0), spans: [{ tex: latex, display: true, raw: latex }], token: extracted.token }
  }
  const text = escapeHtml(extracted.text).replace(/\n/g, '<br>')
  return { html: restoreMath(text, extracted), extracted }
}
