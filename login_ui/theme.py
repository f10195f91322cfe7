"""A tenant's colour theme, computed from its brand colour so every pair is WCAG 2.1 AA.

Pure: no I/O, no Jinja2. The palette (50…900) is built in OKLCH, where equal steps
of lightness look equal, with the brand colour itself kept as the step nearest its
own lightness. The colours that carry meaning (button, links, focus ring, muted
text, errors) are not picked from the palette by hand: each starts at the brand
hue and is darkened until its WCAG contrast ratio against every background it is
drawn on holds, measured on the rounded hex value that is actually emitted. If the
search ever fails, black is used — so the guarantee never depends on the search.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "AA_NON_TEXT",
    "AA_TEXT",
    "PALETTE_STEPS",
    "Theme",
    "contrast_ratio",
    "oklch_of",
    "parse_hex",
    "relative_luminance",
    "theme_for",
]

AA_TEXT = 4.5  # WCAG 2.1 SC 1.4.3, normal-size text
AA_NON_TEXT = 3.0  # WCAG 2.1 SC 1.4.11, focus indicators and component boundaries

PALETTE_STEPS: tuple[int, ...] = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900)
# OKLCH lightness of each step, and how much of the brand's chroma it keeps
# (pale and deep ends carry less colour, as in hand-made palettes).
_STEP_LIGHTNESS = (0.975, 0.94, 0.88, 0.80, 0.71, 0.62, 0.54, 0.46, 0.38, 0.30)
_STEP_CHROMA = (0.20, 0.35, 0.55, 0.75, 0.90, 1.0, 1.0, 0.90, 0.80, 0.70)

_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")

RGB = tuple[float, float, float]  # sRGB, gamma-encoded, each 0..1
LCH = tuple[float, float, float]  # OKLCH: lightness 0..1, chroma, hue in degrees

WHITE = "#ffffff"
BLACK = "#000000"


# --- hex <-> sRGB -------------------------------------------------------------------


def parse_hex(value: str) -> str:
    """Normalise `#RGB`/`#RRGGBB` (case-insensitive, '#' optional) to `#rrggbb`."""
    match = _HEX.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a #RRGGBB or #RGB colour: {value!r}")
    digits = match.group(1).lower()
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return "#" + digits


def _hex_to_rgb(value: str) -> RGB:
    digits = parse_hex(value)[1:]
    return (
        int(digits[0:2], 16) / 255.0,
        int(digits[2:4], 16) / 255.0,
        int(digits[4:6], 16) / 255.0,
    )


def _rgb_to_hex(rgb: RGB) -> str:
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in rgb)


# --- WCAG 2.1 ----------------------------------------------------------------------


def _wcag_linear(channel: float) -> float:
    # The threshold WCAG 2.1 states (0.03928); it differs from sRGB's 0.04045 only
    # in values no 8-bit channel can take.
    return channel / 12.92 if channel <= 0.03928 else ((channel + 0.055) / 1.055) ** 2.4


def relative_luminance(color: str) -> float:
    """WCAG 2.1 relative luminance of a hex colour (0 black … 1 white)."""
    r, g, b = _hex_to_rgb(color)
    return 0.2126 * _wcag_linear(r) + 0.7152 * _wcag_linear(g) + 0.0722 * _wcag_linear(b)


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2.1 contrast ratio of two hex colours, 1.0 … 21.0 (order does not matter)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    light, dark = max(la, lb), min(la, lb)
    return (light + 0.05) / (dark + 0.05)


# --- OKLab / OKLCH (Björn Ottosson, 2020) --------------------------------------------


def _to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _from_linear(c: float) -> float:
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def _rgb_to_oklch(rgb: RGB) -> LCH:
    r, g, b = (_to_linear(c) for c in rgb)
    lms = (
        0.4122214708 * r + 0.5363325363 * g + 0.0514459929 * b,
        0.2119034982 * r + 0.6806995451 * g + 0.1073969566 * b,
        0.0883024619 * r + 0.2817188376 * g + 0.6299787005 * b,
    )
    l_, m_, s_ = (math.copysign(abs(v) ** (1 / 3), v) for v in lms)
    lightness = 0.2104542553 * l_ + 0.7936177850 * m_ - 0.0040720468 * s_
    a = 1.9779984951 * l_ - 2.4285922050 * m_ + 0.4505937099 * s_
    bb = 0.0259040371 * l_ + 0.7827717662 * m_ - 0.8086757660 * s_
    chroma = math.hypot(a, bb)
    hue = math.degrees(math.atan2(bb, a)) % 360.0
    return (lightness, chroma, hue)


def _oklch_to_linear_rgb(lch: LCH) -> RGB:
    lightness, chroma, hue = lch
    a = chroma * math.cos(math.radians(hue))
    b = chroma * math.sin(math.radians(hue))
    l_ = lightness + 0.3963377774 * a + 0.2158037573 * b
    m_ = lightness - 0.1055613458 * a - 0.0638541728 * b
    s_ = lightness - 0.0894841775 * a - 1.2914855480 * b
    lc, mc, sc = l_**3, m_**3, s_**3
    return (
        4.0767416621 * lc - 3.3077115913 * mc + 0.2309699292 * sc,
        -1.2684380046 * lc + 2.6097574011 * mc - 0.3413193965 * sc,
        -0.0041960863 * lc - 0.7034186147 * mc + 1.7076147010 * sc,
    )


def _in_gamut(linear: RGB, eps: float = 1e-6) -> bool:
    return all(-eps <= c <= 1.0 + eps for c in linear)


def _oklch_to_hex(lch: LCH) -> str:
    """OKLCH to hex, reducing chroma (never lightness or hue) until the colour fits sRGB."""
    lightness = min(1.0, max(0.0, lch[0]))
    chroma, hue = max(0.0, lch[1]), lch[2]
    linear = _oklch_to_linear_rgb((lightness, chroma, hue))
    if not _in_gamut(linear):
        lo, hi = 0.0, chroma
        for _ in range(14):  # chroma to within 1/16384 of the gamut edge
            mid = (lo + hi) / 2
            if _in_gamut(_oklch_to_linear_rgb((lightness, mid, hue))):
                lo = mid
            else:
                hi = mid
        linear = _oklch_to_linear_rgb((lightness, lo, hue))
    r, g, b = (_from_linear(min(1.0, max(0.0, c))) for c in linear)
    return _rgb_to_hex((r, g, b))


def oklch_of(color: str) -> LCH:
    """OKLCH (lightness 0..1, chroma, hue in degrees) of a hex colour."""
    return _rgb_to_oklch(_hex_to_rgb(color))


# --- contrast search -----------------------------------------------------------------


def _darken_until(start: LCH, ok: Callable[[str], bool], *, exact: str | None = None) -> str:
    """The lightest colour of `start`'s hue (at or below its lightness) for which `ok` holds.

    Every background here is light, so darker means more contrast; the search is a
    bisection on lightness (contrast is monotonic in it to within rounding), checked
    again on the emitted hex and backed by a short walk down and then by black.
    """
    if exact is not None and ok(exact):
        return exact
    lightness, chroma, hue = start
    if ok(_oklch_to_hex(start)):
        return _oklch_to_hex(start)
    lo, hi = 0.0, lightness  # ok(lo) assumed, not ok(hi)
    for _ in range(18):
        mid = (lo + hi) / 2
        if ok(_oklch_to_hex((mid, chroma, hue))):
            lo = mid
        else:
            hi = mid
    candidate = lo
    while candidate > 0.0:
        found = _oklch_to_hex((candidate, chroma, hue))
        if ok(found):
            return found
        candidate -= 0.01
    return BLACK


def _meets(ratio: float, backgrounds: Sequence[str]) -> Callable[[str], bool]:
    return lambda color: all(contrast_ratio(color, bg) >= ratio for bg in backgrounds)


# --- the theme -----------------------------------------------------------------------


@dataclass(frozen=True)
class Theme:
    """Every colour a page uses, as `#rrggbb`; text pairs ≥ 4.5:1, boundaries ≥ 3:1."""

    primary: str  # the brand colour as configured (normalised)
    secondary: str  # the configured secondary colour, or the primary
    palette: tuple[tuple[int, str], ...]  # (step, colour) for 50…900
    page_background: str
    card_background: str
    text: str
    text_muted: str
    input_border: str  # ≥ 3:1 against the card (SC 1.4.11)
    button_background: str  # ≥ 3:1 against card and page
    button_text: str  # ≥ 4.5:1 against button_background
    button_hover: str  # same guarantees as button_background
    link_on_page: str
    link_on_card: str
    focus_ring: str  # ≥ 3:1 against card and page
    error_text: str  # ≥ 4.5:1 against card and error_background
    error_background: str

    def shade(self, step: int) -> str:
        """The palette colour of a step (50, 100, …, 900)."""
        for key, color in self.palette:
            if key == step:
                return color
        raise KeyError(step)

    def text_pairs(self) -> tuple[tuple[str, str, str], ...]:
        """(what, foreground, background) for every text the pages draw; each must be ≥ 4.5:1."""
        return (
            ("text on page", self.text, self.page_background),
            ("text on card", self.text, self.card_background),
            ("muted text on page", self.text_muted, self.page_background),
            ("muted text on card", self.text_muted, self.card_background),
            ("button text", self.button_text, self.button_background),
            ("button text on hover", self.button_text, self.button_hover),
            ("link on page", self.link_on_page, self.page_background),
            ("link on card", self.link_on_card, self.card_background),
            ("error on card", self.error_text, self.card_background),
            ("error on its box", self.error_text, self.error_background),
            ("text in error box", self.text, self.error_background),
        )

    def boundary_pairs(self) -> tuple[tuple[str, str, str], ...]:
        """(what, colour, background) for non-text elements that must be ≥ 3:1."""
        return (
            ("focus ring on card", self.focus_ring, self.card_background),
            ("focus ring on page", self.focus_ring, self.page_background),
            ("button on card", self.button_background, self.card_background),
            ("button on page", self.button_background, self.page_background),
            ("hovered button on card", self.button_hover, self.card_background),
            ("input border on card", self.input_border, self.card_background),
        )

    def css_variables(self) -> str:
        """A `:root{…}` block of custom properties (`--ag-…`) that authgate.css uses."""
        pairs = [("--ag-primary", self.primary), ("--ag-secondary", self.secondary)]
        pairs += [(f"--ag-primary-{step}", color) for step, color in self.palette]
        pairs += [
            ("--ag-page-bg", self.page_background),
            ("--ag-card-bg", self.card_background),
            ("--ag-text", self.text),
            ("--ag-text-muted", self.text_muted),
            ("--ag-input-border", self.input_border),
            ("--ag-button-bg", self.button_background),
            ("--ag-button-text", self.button_text),
            ("--ag-button-hover", self.button_hover),
            ("--ag-link", self.link_on_card),
            ("--ag-link-on-page", self.link_on_page),
            ("--ag-focus-ring", self.focus_ring),
            ("--ag-error-text", self.error_text),
            ("--ag-error-bg", self.error_background),
        ]
        body = "".join(f"  {name}: {value};\n" for name, value in pairs)
        return ":root {\n" + body + "}\n"


def _palette(brand: str, brand_lch: LCH) -> tuple[tuple[int, str], ...]:
    lightness, chroma, hue = brand_lch
    nearest = min(range(len(PALETTE_STEPS)), key=lambda i: abs(_STEP_LIGHTNESS[i] - lightness))
    steps: list[tuple[int, str]] = []
    for i, step in enumerate(PALETTE_STEPS):
        if i == nearest:
            steps.append((step, brand))
        else:
            lch = (_STEP_LIGHTNESS[i], chroma * _STEP_CHROMA[i], hue)
            steps.append((step, _oklch_to_hex(lch)))
    return tuple(steps)


def _button(brand: str, brand_lch: LCH, backgrounds: Sequence[str], ink: str) -> tuple[str, str]:
    """Button colour (≥ 3:1 against where it sits) and its label colour (≥ 4.5:1 on it)."""

    def label_for(color: str) -> str:
        return max((WHITE, ink), key=lambda text: contrast_ratio(text, color))

    def ok(color: str) -> bool:
        return _meets(AA_NON_TEXT, backgrounds)(color) and (
            contrast_ratio(label_for(color), color) >= AA_TEXT
        )

    background = _darken_until(brand_lch, ok, exact=brand)
    return background, label_for(background)


def _hover(button: str, label: str, backgrounds: Sequence[str]) -> str:
    """A visibly different shade of the button that keeps both of its guarantees."""
    lightness, chroma, hue = oklch_of(button)
    direction = -1.0 if label == WHITE else 1.0  # move away from the label colour
    for delta in (0.06, 0.04, -0.06, -0.04):
        candidate = _oklch_to_hex((lightness + direction * delta, chroma, hue))
        if (
            candidate != button
            and contrast_ratio(label, candidate) >= AA_TEXT
            and _meets(AA_NON_TEXT, backgrounds)(candidate)
        ):
            return candidate
    return button


def theme_for(primary: str, secondary: str | None = None) -> Theme:
    """Compute the theme of a brand colour (and an optional secondary used for links).

    Raises ValueError if a colour is not `#RGB` or `#RRGGBB`.
    """
    brand = parse_hex(primary)
    accent = parse_hex(secondary) if secondary is not None else brand
    brand_lch = oklch_of(brand)
    accent_lch = oklch_of(accent)
    hue = brand_lch[2]
    tint = min(brand_lch[1], 0.008)  # greys stay grey; colours give the page a faint tint

    card = WHITE
    page = _oklch_to_hex((0.975, tint, hue))
    surfaces = (page, card)
    error_background = _oklch_to_hex((0.965, 0.02, 25.0))

    text = _darken_until((0.25, tint * 2, hue), _meets(AA_TEXT, (*surfaces, error_background)))
    muted = _darken_until((0.52, tint * 2, hue), _meets(AA_TEXT, surfaces))
    border = _darken_until((0.65, tint * 2, hue), _meets(AA_NON_TEXT, (card,)))
    button, button_text = _button(brand, brand_lch, surfaces, text)
    link_on_page = _darken_until(accent_lch, _meets(AA_TEXT, (page,)), exact=accent)
    link_on_card = _darken_until(accent_lch, _meets(AA_TEXT, (card,)), exact=accent)
    focus = _darken_until(brand_lch, _meets(AA_NON_TEXT, surfaces), exact=brand)
    error_text = _darken_until((0.55, 0.2, 27.0), _meets(AA_TEXT, (card, error_background)))

    return Theme(
        primary=brand,
        secondary=accent,
        palette=_palette(brand, brand_lch),
        page_background=page,
        card_background=card,
        text=text,
        text_muted=muted,
        input_border=border,
        button_background=button,
        button_text=button_text,
        button_hover=_hover(button, button_text, surfaces),
        link_on_page=link_on_page,
        link_on_card=link_on_card,
        focus_ring=focus,
        error_text=error_text,
        error_background=error_background,
    )
