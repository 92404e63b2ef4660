"""The pluggy markers every fcos plugin uses.

A plugin module marks its registration functions with :data:`hookimpl`::

    from fcos_core import hookimpl

    @hookimpl
    def register_backbones(register):
        register("mynet", factory="my_pkg.mynet:MyNet", schema=MyNetArgs)
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "fcos"
#: entry-point group that third-party distributions use to announce a plugin module
ENTRY_POINT_GROUP = "fcos"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
