"""Registration of the ``scaled_absmax`` observer (torch-free)."""

import attrs

from fcos_core import hookimpl
from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class ScaledAbsMaxArgs:
    """Clip activations at a fixed fraction of their running max |x|."""

    factor: float = arg(0.5, help="fraction of max |x| kept, in (0, 1]")


@hookimpl
def register_observers(register):
    register(
        "scaled_absmax",
        factory="fcos_plugin_scaled_observer.observer:ScaledAbsMaxObserver",
        schema=ScaledAbsMaxArgs,
    )
