"""Theme generation: every computed pair meets WCAG 2.1 AA, for any brand colour."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from login_ui.theme import (
    AA_NON_TEXT,
    AA_TEXT,
    PALETTE_STEPS,
    Theme,
    contrast_ratio,
    oklch_of,
    parse_hex,
    relative_luminance,
    theme_for,
)

SPREAD = [
    "#2563EB",  # the default blue
    "#FF6B6B",  # a light coral
    "#10B981",  # a mid green
    "#FFFF00",  # yellow: almost no contrast with white
    "#F0F0F0",  # a near-white grey
    "#FFFFFF",  # white itself
    "#000000",  # black
    "#0B0B2B",  # a very dark navy
    "#7C3AED",  # a saturated violet
    "#00FFFF",  # cyan, out at the gamut edge
    "#888",  # short form, mid grey
]


def assert_accessible(theme: Theme) -> None:
    for what, fg, bg in theme.text_pairs():
        assert contrast_ratio(fg, bg) >= AA_TEXT, f"{what}: {fg} on {bg}"
    for what, fg, bg in theme.boundary_pairs():
        assert contrast_ratio(fg, bg) >= AA_NON_TEXT, f"{what}: {fg} on {bg}"


def test_wcag_contrast_matches_the_published_reference_values() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#ffffff", "#ffffff") == pytest.approx(1.0)
    # #767676 on white is the well-known lightest grey that passes AA (4.54:1).
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert relative_luminance("#ff0000") == pytest.approx(0.2126)


def test_hex_colours_are_normalised_and_bad_ones_refused() -> None:
    assert parse_hex("#ABC") == "#aabbcc"
    assert parse_hex("2563EB") == "#2563eb"
    for bad in ("", "#12345", "blue", "#GGGGGG", "#1234567", "#123;}body{"):
        with pytest.raises(ValueError):
            parse_hex(bad)
    with pytest.raises(ValueError):
        theme_for("red")


@pytest.mark.parametrize("primary", SPREAD)
def test_every_text_pair_and_boundary_meets_aa_for_a_spread_of_brand_colours(
    primary: str,
) -> None:
    assert_accessible(theme_for(primary))


@pytest.mark.parametrize("primary", SPREAD)
def test_the_palette_is_ordered_light_to_dark_and_keeps_the_brand_colour(primary: str) -> None:
    theme = theme_for(primary)
    assert tuple(step for step, _ in theme.palette) == PALETTE_STEPS
    assert parse_hex(primary) in {color for _, color in theme.palette}
    lightness = [oklch_of(color)[0] for _, color in theme.palette]
    assert lightness == sorted(lightness, reverse=True)


def test_the_brand_colour_sits_at_the_step_nearest_its_lightness() -> None:
    assert theme_for("#FFFF00").shade(50) == "#ffff00"
    assert theme_for("#000000").shade(900) == "#000000"
    assert theme_for("#2563EB").shade(600) == "#2563eb"


def test_a_brand_colour_that_already_passes_is_used_unchanged_for_button_and_links() -> None:
    theme = theme_for("#2563EB")
    assert theme.button_background == "#2563eb"
    assert theme.button_text == "#ffffff"
    assert theme.link_on_card == "#2563eb"
    assert theme.focus_ring == "#2563eb"


def test_a_very_light_brand_colour_is_darkened_in_its_own_hue() -> None:
    theme = theme_for("#FFFF00")
    assert theme.button_background != "#ffff00"
    assert contrast_ratio(theme.button_background, theme.card_background) >= AA_NON_TEXT
    # still a yellow (hue of #FFFF00 is ~110° in OKLCH), not a grey or another colour
    _, chroma, hue = oklch_of(theme.button_background)
    assert chroma > 0.05
    assert abs(hue - oklch_of("#ffff00")[2]) < 5


def test_white_and_black_brands_get_grey_and_black_buttons() -> None:
    assert theme_for("#FFFFFF").button_background == "#767676"
    black = theme_for("#000000")
    assert black.button_background == "#000000"
    assert black.button_text == "#ffffff"


def test_the_secondary_colour_drives_the_links() -> None:
    theme = theme_for("#2563EB", "#047857")
    assert theme.secondary == "#047857"
    assert theme.link_on_card == "#047857"
    assert theme.button_background == "#2563eb"
    assert_accessible(theme_for("#2563EB", "#FFFF00"))


def test_css_variables_is_a_root_block_with_the_computed_colours() -> None:
    theme = theme_for("#FF6B6B")
    css = theme.css_variables()
    assert css.startswith(":root {")
    assert css.rstrip().endswith("}")
    assert "--ag-primary: #ff6b6b;" in css
    assert f"--ag-button-bg: {theme.button_background};" in css
    assert f"--ag-focus-ring: {theme.focus_ring};" in css
    for step, color in theme.palette:
        assert f"--ag-primary-{step}: {color};" in css


def test_the_theme_is_a_frozen_value() -> None:
    theme = theme_for("#2563EB")
    assert theme == theme_for("#2563eb")
    with pytest.raises(AttributeError):
        theme.primary = "#000000"  # type: ignore[misc]


colours = st.integers(min_value=0, max_value=0xFFFFFF).map(lambda n: f"#{n:06x}")


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(primary=colours, secondary=st.none() | colours)
def test_any_brand_colour_gives_aa_text_and_visible_focus_rings(
    primary: str, secondary: str | None
) -> None:
    assert_accessible(theme_for(primary, secondary))
