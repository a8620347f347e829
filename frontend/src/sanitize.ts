// Everything that becomes HTML from document content goes through here (DOMPurify).
//
// Outputs and markdown come from other users and from kernels: treat them as hostile.
// Scripts, event handlers, javascript: URLs, forms, frames and <style> elements are removed;
// links open in a new tab without a referrer or an opener. The page's CSP is the second wall.
import DOMPurify from 'dompurify'

let hooked = false

function installHooks (): void {
  if (hooked) return
  hooked = true
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node instanceof HTMLAnchorElement && node.hasAttribute('href')) {
      const href = node.getAttribute('href') || ''
      if (!href.startsWith('#')) {
        node.setAttribute('target', '_blank')
        node.setAttribute('rel', 'noopener noreferrer nofollow')
      }
    }
  })
}

const HTML_CONFIG = {
  // <style> would restyle the whole page (and is blocked by the CSP anyway);
  // forms could post to the origin; <base> would retarget relative URLs.
  FORBID_TAGS: ['style', 'form', 'base', 'link', 'meta', 'iframe', 'frame', 'object', 'embed', 'input', 'button', 'textarea', 'select'],
  FORBID_ATTR: ['action', 'formaction', 'srcset', 'ping'],
  // KaTeX's MathML (for screen readers) keeps the TeX source in <semantics><annotation>.
  ADD_TAGS: ['semantics', 'annotation'],
  ALLOW_DATA_ATTR: false
}

/** Sanitized HTML for output (text/html, markdown, ANSI-coloured text). */
export function sanitizeHtml (html: string): string {
  installHooks()
  return DOMPurify.sanitize(html, HTML_CONFIG) as unknown as string
}

/** Sanitized SVG markup (image/svg+xml outputs). */
export function sanitizeSvg (svg: string): string {
  installHooks()
  return DOMPurify.sanitize(svg, {
    USE_PROFILES: { svg: true, svgFilters: true },
    FORBID_TAGS: ['style', 'foreignObject', 'script', 'a'],
    ALLOW_DATA_ATTR: false
  }) as unknown as string
}

/** Put sanitized HTML into an element. */
export function setSafeHtml (el: Element, html: string): void {
  el.innerHTML = sanitizeHtml(html)
}
