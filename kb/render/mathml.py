"""`$…$` and `$$…$$` to MathML on the server: no JavaScript, no CDN, safe under the CSP.

The MathML is serialised here from latex2mathml's element tree, not by its own `convert()`,
which unescapes the text it produced (`\\text{<script>}` would come out as markup): only
presentation elements and attributes are kept, and `tostring` escapes text and attribute values.
The tree is corrected first (`_typeset`): primes, function names and accents as TeX sets them.
"""
from __future__ import annotations

import functools
import html
import logging
import re
from xml.etree.ElementTree import Element, tostring

from latex2mathml.converter import convert_to_element

log = logging.getLogger(__name__)

_MATHML_TAGS = {
    "math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup", "msubsup", "munder",
    "mover", "munderover", "mfrac", "msqrt", "mroot", "mstyle", "merror", "mpadded", "mphantom",
    "menclose", "mtable", "mtr", "mtd", "mlabeledtr", "mmultiscripts", "mprescripts", "none",
    "semantics", "annotation", "mfenced", "maligngroup", "malignmark",
}
_MATHML_ATTRS = {  # presentation attributes; never style, class, href or event handlers
    "xmlns", "display", "mathvariant", "mathsize", "mathcolor", "mathbackground", "stretchy",
    "fence", "separator", "separators", "form", "lspace", "rspace", "largeop", "movablelimits",
    "accent", "accentunder", "symmetric", "minsize", "maxsize", "width", "height", "depth",
    "voffset", "linethickness", "scriptlevel", "displaystyle", "notation", "columnalign",
    "rowalign", "columnlines", "rowlines", "columnspacing", "rowspacing", "frame", "framespacing",
    "columnspan", "rowspan", "equalrows", "equalcolumns", "linebreak", "open", "close",
    "bevelled", "numalign", "denomalign", "encoding",
}
_CHAR_REF = re.compile(r"&#(x[0-9a-fA-F]+|[0-9]+);")


def _chars(text: str) -> str:
    """latex2mathml stores symbols as `&#x…;` text; make them characters so escaping is exact."""
    return _CHAR_REF.sub(lambda m: chr(int(m[1][1:], 16) if m[1][0] == "x" else int(m[1])), text)


@functools.lru_cache(maxsize=4096)
def to_mathml(latex: str, display: str) -> str:
    """MathML for one formula, or the escaped source in <code class="math-error"> if it fails."""
    try:
        root = convert_to_element(latex, display=display)
        for el in root.iter():
            if el.tag not in _MATHML_TAGS:
                raise ValueError(f"unexpected element <{el.tag}>")
            el.attrib = {k: _chars(v) for k, v in el.attrib.items() if k in _MATHML_ATTRS}
            el.text = el.text and _chars(el.text)
            el.tail = el.tail and _chars(el.tail)
        _typeset(root)
        mathml = tostring(root, encoding="unicode")
        # A display formula wider than the column scrolls in its own box (a <span>: it sits in a <p>).
        return f'<span class="math-display">{mathml}</span>' if display == "block" else mathml  # escapes text and attribute values
    except Exception as exc:  # noqa: BLE001 - any LaTeX latex2mathml rejects, however it fails
        delim = "$$" if display == "block" else "$"
        log.warning("cannot convert LaTeX %s%s%s: %r", delim, latex, delim, exc)
        return (f'<code class="math-error" title="{html.escape(f"LaTeX error: {str(exc) or type(exc).__name__}")}">'
                f"{html.escape(delim + latex + delim)}</code>")


PRIMES = set("′″‴⁗")
FUNCTIONS = {"arg", "cos", "cosh", "det", "dim", "exp", "inf", "lg", "lim", "ln", "log", "max", "min",
             "sgn", "sin", "sinh", "sup", "tan", "tanh"}
ACCENTS = {"^": "ˆ", "~": "˜", "¯": "¯", "˙": "˙", "¨": "¨", "→": "→", "ˇ": "ˇ", "´": "´", "`": "`"}
_SCRIPTS = {"msub", "msup", "msubsup", "munder", "mover", "munderover"}
_OPENING = set("([{|‖⟨")


def _typeset(root: Element) -> None:
    """Correct latex2mathml's tree where it sets a formula differently from TeX.

    - A prime (`g'`, `\\sigma'`) comes out as `<msup><mi>g</mi><mi>′</mi></msup>`, but a Unicode math
      font draws U+2032 already raised at full size: as a superscript it is shrunk and lifted
      again into a faint tick above the letter. It becomes `<mi>g</mi><mo>′</mo>` at full size.
    - Function names (`\\log`, `\\exp`, `\\tanh`) are plain `<mi>`s run into their neighbours
      (`−ylog a`); TeX puts a thin space on each side unless a bracket or operator is there.
    - Accents (`\\hat`, `\\bar`, `\\tilde`) are marked as accents with their spacing glyphs, so they
      sit on the letter instead of floating above it as an over-script.
    """
    for parent in list(root.iter()):
        children = list(parent)
        for el in children:
            if el.tag == "msup" and len(el) == 2 and el[1].tag == "mi" and el[1].text and set(el[1].text) <= PRIMES:
                el.tag, el.attrib = "mrow", {}
                el[1].tag, el[1].attrib = "mo", {"lspace": "0", "rspace": "0"}
            elif el.tag == "mi" and el.text and set(el.text) <= PRIMES:
                el.tag = "mo"
            elif el.tag == "mo" and el.text in FUNCTIONS:  # \\max comes out as an operator: "max (0, z)"
                el.tag = "mi"
            elif el.tag == "mover" and len(el) == 2 and el[1].tag == "mo" and el[1].text in ACCENTS:
                el.attrib, el[1].text = {"accent": "true"}, ACCENTS[el[1].text]
                el[1].attrib = {"stretchy": "false"} if el[1].text != "¯" else {}
        if parent.tag in _SCRIPTS:
            continue  # a function name as a base or a script keeps its scripts' own spacing
        for i in reversed(range(len(children))):
            if not _is_function(children[i]):
                continue
            after = children[i + 1] if i + 1 < len(children) else None
            before = children[i - 1] if i else None
            if after is not None and not (after.tag == "mo" and (after.text or "") in _OPENING | PRIMES):
                parent.insert(i + 1, _thin_space())
            if before is not None and (before.tag != "mo" or (before.text or "") in set(")]}")):
                parent.insert(i, _thin_space())


def _is_function(el: Element) -> bool:
    base = el[0] if el.tag in _SCRIPTS and len(el) else el
    if base.tag == "mrow" and len(base) and base[-1].tag == "mo" and base[-1].text in PRIMES:
        base = base[0]  # \\tanh'
    return base.tag == "mi" and base.text in FUNCTIONS


def _thin_space() -> Element:
    return Element("mspace", {"width": "0.1667em"})
