"""Change what a layer does by changing its class, keeping its parameters and state-dict keys.

A method that must alter a frozen layer's forward (BatchNorm that keeps its statistics, a
norm whose affine carries an SSF) makes the instance a member of a subclass (mixin, plain
class). Its tensors, names and `isinstance` checks stay those of the plain layer, so the
state dict is still the backbone's, and merging gives the plain class back.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

_CLASSES: dict[tuple[tuple[type, ...], type], type] = {}


def plain_class(module: nn.Module) -> type:
    return getattr(type(module), "plain_class", type(module))


def _mixins(module: nn.Module) -> tuple[type, ...]:
    return getattr(type(module), "mixins", ())


def _set_mixins(module: nn.Module, mixins: tuple[type, ...]) -> None:
    plain = plain_class(module)
    if not mixins:
        module.__class__ = plain
        return
    key = (mixins, plain)
    if key not in _CLASSES:
        name = "".join(m.__name__ for m in mixins) + plain.__name__
        _CLASSES[key] = type(name, (*mixins, plain), {"plain_class": plain, "mixins": mixins})
    module.__class__ = _CLASSES[key]


def with_mixin(module: nn.Module, mixin: type) -> None:
    """Put `mixin` in front of the module's class (once). torch's parametrizations also change the
    class, so mixins must come first: a parametrized module is refused."""
    if parametrize.is_parametrized(module):
        raise TypeError(f"{type(module).__name__} is parametrized: give it its mixins before its parametrizations")
    if mixin not in _mixins(module):
        _set_mixins(module, (mixin, *_mixins(module)))
        module.train(module.training)


def without_mixin(module: nn.Module, mixin: type) -> None:
    _set_mixins(module, tuple(m for m in _mixins(module) if m is not mixin))


def restore_plain_classes(model: nn.Module) -> None:
    """Every layer back to the class it was created with (after a merge)."""
    for module in model.modules():
        module.__class__ = plain_class(module)
