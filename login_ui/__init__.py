"""authgate: login_ui — the pages a person sees under the reserved prefix.

Public surface: `PageRenderer` (built once at start-up), `BrandingView`,
`security_headers`, and the pure theme function `theme_for`.
"""

from login_ui.branding import BrandingAsset, BrandingView
from login_ui.headers import security_headers
from login_ui.pages import STATIC_DIR, PageRenderer
from login_ui.theme import Theme, theme_for

__all__ = [
    "STATIC_DIR",
    "BrandingAsset",
    "BrandingView",
    "PageRenderer",
    "Theme",
    "security_headers",
    "theme_for",
]
