"""Math in markdown cells and in text/latex and text/markdown outputs (KaTeX, fonts from 'self')."""

from __future__ import annotations

import nbformat
import pytest

from tests.conftest import Daemon

from .browser import Browser

pytestmark = pytest.mark.timeout(60)

MARKDOWN = r"""# Euler

Inline $e^{i\pi}+1=0$ and display:

$$\int_0^1 x\,dx = \frac{1}{2}$$

Subscripts and stars survive: $a_1 * b_2 * c_3$, and \(x_{n+1}\) too.

\begin{align}
f(x) &= x^2 \\
g(x) &= \sqrt{x}
\end{align}

Not math: it costs $5 and $10, `$x$` is code, and \$ is a dollar.

```
$$ not math in a fence $$
```
"""


def make_notebook(web: Daemon) -> None:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("from IPython.display import Math, Markdown\ndisplay(Math(...), Markdown(...))")
    code.outputs = [
        nbformat.v4.new_output("display_data", data={"text/latex": r"$\displaystyle \sum_{k=1}^{n} k = \frac{n(n+1)}{2}$",
                                                    "text/plain": "<IPython.core.display.Math object>"}),
        nbformat.v4.new_output("display_data", data={"text/markdown": r"**Area**: $\pi r^2$, with $r_0 = 1$",
                                                    "text/plain": "<IPython.core.display.Markdown object>"}),
        nbformat.v4.new_output("execute_result", execution_count=1,
                               data={"text/latex": r"\begin{equation}E = mc^2\end{equation}", "text/plain": "E = mc**2"}),
    ]
    code.execution_count = 1
    nb.cells = [nbformat.v4.new_markdown_cell(MARKDOWN), code]
    nbformat.write(nb, str(web.root / "math.ipynb"))


async def tex_sources(locator: object) -> list[str]:
    # KaTeX keeps each formula's TeX in its MathML annotation (what a screen reader reads)
    return await locator.locator("annotation").evaluate_all("els => els.map(e => e.textContent)")  # type: ignore[attr-defined]


async def test_math_in_markdown_and_outputs(web: Daemon, browser: Browser) -> None:
    make_notebook(web)
    page = await browser.open(web, "math.ipynb")
    md, code = await page.cell_ids()
    rendered = page.cell(md).locator(".rendered")
    await rendered.locator(".katex").first.wait_for()
    await page.page.wait_for_function("(el) => el.querySelectorAll('.katex').length === 5", arg=await rendered.element_handle())
    assert await tex_sources(rendered) == [
        r"e^{i\pi}+1=0",
        r"\int_0^1 x\,dx = \frac{1}{2}",
        r"a_1 * b_2 * c_3",
        r"x_{n+1}",
        "\\begin{align}\nf(x) &= x^2 \\\\\ng(x) &= \\sqrt{x}\n\\end{align}",
    ]
    assert await rendered.locator(".katex-display").count() == 2  # $$…$$ and the environment
    text = await rendered.text_content() or ""
    assert "x,dx" not in text  # markdown did not eat \,
    assert "it costs $5 and $10" in text
    assert await rendered.locator("code", has_text="$x$").count() == 1
    assert "and $ is a dollar" in text
    assert await rendered.locator("pre code", has_text="$$ not math in a fence $$").count() == 1
    assert await rendered.locator("em").count() == 0  # the stars between $…$ were not emphasis
    # outputs: text/latex typeset, text/markdown with its math
    outputs = page.cell(code).locator(".outputs")
    await page.page.wait_for_function("(el) => el.querySelectorAll('.katex').length === 4", arg=await outputs.element_handle())
    assert await tex_sources(outputs.locator(".output-latex").first) == [r"\displaystyle \sum_{k=1}^{n} k = \frac{n(n+1)}{2}"]
    assert await tex_sources(outputs.locator(".output-markdown")) == [r"\pi r^2", "r_0 = 1"]
    assert await outputs.locator(".output-markdown strong").text_content() == "Area"
    assert await tex_sources(outputs.locator(".output-latex").nth(1)) == [r"\begin{equation}E = mc^2\end{equation}"]
    # KaTeX's fonts come from this server, within the CSP
    await page.page.evaluate("() => document.fonts.ready")
    assert await page.page.evaluate("() => document.fonts.check('16px KaTeX_Main')")
    assert await page.page.evaluate(
        "() => [...document.fonts].some(f => f.family.includes('KaTeX_Main') && f.status === 'loaded')"
    )
    assert await page.csp_violations() == []
    # typing new math into a markdown cell renders it
    await rendered.dblclick()
    await page.page.keyboard.press("Control+End")
    await page.page.keyboard.type("\n\nNew: $\\alpha_i$")
    await page.page.keyboard.press("Control+Enter")
    await page.page.wait_for_function("(el) => el.querySelectorAll('.katex').length === 6", arg=await rendered.element_handle())
    await page.screenshot("math")
    page.assert_no_errors()
