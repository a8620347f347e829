// Completion and help from the kernel, for code cells (Tab and Shift+Tab).
//
// Tab asks the kernel (POST …/complete) for the names at the cursor and shows them in
// CodeMirror's completion list; when no kernel runs, or this user may not run code (the
// completer can evaluate code, so the server asks for the right to run it), the list holds
// the words of the notebook instead. Shift+Tab asks the kernel for the docstring (POST
// …/inspect) and shows it in a tooltip at the cursor. Positions cross the wire in Unicode
// code points, as the Jupyter protocol counts them; CodeMirror counts UTF-16 units.
import * as Y from 'yjs'
import type { Completion, CompletionContext, CompletionResult } from '@codemirror/autocomplete'
import { ApiError, complete, inspect } from './api'

/** What the editor of a code cell asks for. */
export interface EditorHelp {
  completions: (context: CompletionContext) => Promise<CompletionResult | null>
  /** the help text (plain, maybe with ANSI colours) for the name at `pos`, or why there is none */
  inspect: (code: string, pos: number) => Promise<{ found: boolean, text: string }>
}

/** UTF-16 offset -> code points before it. */
export function codePointsBefore (text: string, offset: number): number {
  let count = 0
  for (let i = 0; i < offset && i < text.length; i++) {
    const unit = text.charCodeAt(i)
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) i++
    count++
  }
  return count
}

/** Code points -> UTF-16 offset. */
export function offsetOfCodePoint (text: string, points: number): number {
  let offset = 0
  for (let n = 0; n < points && offset < text.length; n++) {
    const unit = text.charCodeAt(offset)
    offset += unit >= 0xd800 && unit <= 0xdbff ? 2 : 1
  }
  return offset
}

// The kernel's completion kinds (IPython's jedi types) as CodeMirror's icon types.
const TYPES: Record<string, string> = {
  function: 'function',
  builtin_function: 'function',
  method: 'method',
  class: 'class',
  type: 'type',
  module: 'namespace',
  keyword: 'keyword',
  statement: 'variable',
  instance: 'variable',
  param: 'variable',
  property: 'property',
  path: 'text',
  magic: 'keyword'
}

const WORD = /[A-Za-z_\u00c0-\uffff][\w\u00c0-\uffff]*/g
const WORD_BEFORE = /[A-Za-z_\u00c0-\uffff][\w\u00c0-\uffff]*$/

export class KernelHelp implements EditorHelp {
  /** false once the server said this user may not run code here */
  private mayExecute: boolean | null = null

  constructor (private readonly path: () => string, private readonly cells: Y.Array<unknown>) {}

  setMayExecute (may: boolean | null): void {
    if (may !== null) this.mayExecute = may
  }

  readonly completions = async (context: CompletionContext): Promise<CompletionResult | null> => {
    if (this.mayExecute !== false) {
      const code = context.state.doc.toString()
      try {
        const reply = await complete(this.path(), code, codePointsBefore(code, context.pos))
        if (context.aborted) return null
        if (reply.status === 'ok') {
          const types = reply.metadata?._jupyter_types_experimental ?? []
          const options: Completion[] = reply.matches.map((label, i) => ({
            label,
            type: TYPES[types[i]?.type ?? ''] ?? undefined
          }))
          if (!options.length) return null
          return {
            from: offsetOfCodePoint(code, reply.cursor_start),
            to: offsetOfCodePoint(code, reply.cursor_end),
            options,
            validFor: /^[\w\u00c0-\uffff]*$/
          }
        }
        // no kernel runs, or it is busy: the notebook's words
      } catch (error) {
        if (error instanceof ApiError && error.status === 403) this.mayExecute = false
        else if (context.aborted) return null
      }
    }
    return this.words(context)
  }

  /** Words of every cell that start like the word before the cursor. */
  private words (context: CompletionContext): CompletionResult | null {
    const before = context.matchBefore(WORD_BEFORE)
    if (!before) return null // after a dot, a bracket: only a kernel knows
    const prefix = before.text
    const seen = new Set<string>()
    for (const item of this.cells.toArray()) {
      if (!(item instanceof Y.Map)) continue
      const source = item.get('source')
      const text = source instanceof Y.Text ? source.toString() : typeof source === 'string' ? source : ''
      for (const match of text.matchAll(WORD)) {
        const word = match[0]
        if (word.length > 1 && word !== prefix && word.startsWith(prefix)) seen.add(word)
      }
    }
    if (!seen.size) return null
    return {
      from: before.from,
      options: [...seen].sort().map((label) => ({ label, type: 'text' })),
      validFor: /^[\w\u00c0-\uffff]*$/
    }
  }

  readonly inspect = async (code: string, pos: number): Promise<{ found: boolean, text: string }> => {
    if (this.mayExecute === false) return { found: false, text: 'Help comes from the kernel: you may not run code in this notebook.' }
    try {
      const reply = await inspect(this.path(), code, codePointsBefore(code, pos))
      if (reply.status === 'no_kernel') return { found: false, text: 'Help comes from the kernel: run a cell to start it.' }
      if (reply.status === 'timeout') return { found: false, text: 'The kernel is busy: try again when the cell is done.' }
      const text = reply.data['text/plain']
      if (!reply.found || typeof text !== 'string') return { found: false, text: 'No documentation found.' }
      return { found: true, text }
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        this.mayExecute = false
        return { found: false, text: 'Help comes from the kernel: you may not run code in this notebook.' }
      }
      return { found: false, text: `No help: ${error instanceof Error ? error.message : String(error)}` }
    }
  }
}
