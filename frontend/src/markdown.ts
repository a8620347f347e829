// Markdown cells and text/markdown outputs: marked (GitHub flavour), then DOMPurify.
import { Marked } from 'marked'
import { sanitizeHtml } from './sanitize'

const marked = new Marked({ gfm: true, breaks: false, async: false })

export function renderMarkdown (source: string): string {
  const html = marked.parse(source) as string
  return sanitizeHtml(html)
}
