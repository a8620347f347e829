// Markdown cells and text/markdown outputs: math taken out, marked (GitHub flavour), math put
// back typeset, then DOMPurify over the whole result.
import { Marked } from 'marked'
import { sanitizeHtml } from './sanitize'
import { extractMath, latexToHtml, mathPending, mathReady, restoreMath, type Extracted } from './math'

const marked = new Marked({ gfm: true, breaks: false, async: false })

/** Markdown as sanitized HTML (math as its source while KaTeX is loading). */
export function renderMarkdown (source: string): string {
  return renderMarkdownWithMath(source).html
}

function renderMarkdownWithMath (source: string): { html: string, extracted: Extracted } {
  const extracted = extractMath(source)
  const html = marked.parse(extracted.text) as string
  return { html: sanitizeHtml(restoreMath(html, extracted)), extracted }
}

// What each element was last asked to show: a late KaTeX load re-renders only current content.
const current = new WeakMap<Element, string>()

function fill (el: Element, key: string, render: () => { html: string, extracted: Extracted }): void {
  current.set(el, key)
  const { html, extracted } = render()
  el.innerHTML = html
  if (mathPending(extracted)) {
    void mathReady().then(() => {
      if (current.get(el) === key) el.innerHTML = render().html
    })
  }
}

/** Render markdown into an element; math is typeset as soon as KaTeX is loaded. */
export function renderMarkdownInto (el: Element, source: string): void {
  fill(el, `md\u0000${source}`, () => renderMarkdownWithMath(source))
}

/** A text/latex output into an element. */
export function renderLatexInto (el: Element, latex: string): void {
  fill(el, `tex\u0000${latex}`, () => {
    const { html, extracted } = latexToHtml(latex)
    return { html: sanitizeHtml(html), extracted }
  })
}
