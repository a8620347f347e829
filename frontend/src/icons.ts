// A few inline SVG icons, built with DOM calls (no innerHTML, nothing for the CSP to object to).

const PATHS: Record<string, string> = {
  run: 'M8 5v14l11-7z',
  runAll: 'M4 5v14l8-7zM12 5v14l8-7z',
  stop: 'M6 6h12v12H6z',
  restart: 'M17.65 6.35A7.96 7.96 0 0 0 12 4a8 8 0 1 0 7.73 10h-2.08A6 6 0 1 1 12 6c1.66 0 3.14.69 4.22 1.78L13 11h7V4z',
  up: 'M7.41 15.41 12 10.83l4.59 4.58L18 14l-6-6-6 6z',
  down: 'M7.41 8.59 12 13.17l4.59-4.58L18 10l-6 6-6-6z',
  trash: 'M6 19a2 2 0 0 0 2 2h8a2 2 0 0 0 2-2V7H6zM19 4h-3.5l-1-1h-5l-1 1H5v2h14z',
  plus: 'M19 13h-6v6h-2v-6H5v-2h6V5h2v6h6z',
  undo: 'M12.5 8c-2.65 0-5.05.99-6.9 2.6L2 7v9h9l-3.62-3.62A7.95 7.95 0 0 1 20.1 16l2.37-.78C21.08 11.03 17.15 8 12.5 8z',
  redo: 'M18.4 10.6A10.45 10.45 0 0 0 11.5 8C6.85 8 2.92 11.03 1.54 15.22L3.9 16A7.95 7.95 0 0 1 16.62 12.38L13 16h9V7z',
  book: 'M18 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V4a2 2 0 0 0-2-2zM6 4h5v8l-2.5-1.5L6 12z'
}

const SVG_NS = 'http://www.w3.org/2000/svg'

export function icon (name: keyof typeof PATHS | string): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg')
  svg.setAttribute('viewBox', '0 0 24 24')
  svg.setAttribute('width', '16')
  svg.setAttribute('height', '16')
  svg.setAttribute('aria-hidden', 'true')
  svg.setAttribute('class', 'icon')
  const path = document.createElementNS(SVG_NS, 'path')
  path.setAttribute('d', PATHS[name] ?? '')
  path.setAttribute('fill', 'currentColor')
  svg.append(path)
  return svg
}
