"""The extensions a full gateway runs with: the composition root's one list.

This is the one place `gateway` names `login_ui` (whose pages depend on gateway
services): the arrow stays `login_ui → gateway` everywhere else.
"""

from __future__ import annotations

from gateway.runtime import identity_extension
from gateway.server import Extension


def default_extensions() -> list[Extension]:
    from login_ui.install import login_ui_extension

    return [identity_extension, login_ui_extension]
