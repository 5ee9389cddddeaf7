"""The method protocol: everything sinklab does to a model is a ``Method`` that attaches to its attention sites.

A method is a small config object (usually a ``@dataclass``) that is also a context manager factory, kvpress
style::

    with Observe(keep_pattern=64)(model) as obs:     # attach ... detach
        model(ids)
    patch_method.apply(model)                        # persistent: stays until detach()

Subclasses set ``kind`` ("measure", "exploit" or "remove") and ``name`` and implement ``install(sites)``, which
adds hooks, statistics requests or a variant through ``sinklab.hf.ModelSites`` with ``self`` as owner; ``detach``
removes all of it. Methods attach to sites; the sites import no method.

``methods()`` is the registry of every method sinklab ships (the modules listed in ``METHOD_MODULES``), by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.hf.site import ModelSites, sites

KINDS = ("measure", "exploit", "remove")
# a new method is one module here plus its class (it is found by its ``name``)
METHOD_MODULES = (
    "sinklab.measure.engine",
    "sinklab.measure.detect",
    "sinklab.remove.variant",
    "sinklab.exploit.cache.presses.knorm",
    "sinklab.exploit.cache.presses.h2o",
    "sinklab.exploit.cache.quant",
    "sinklab.exploit.stream_eval",
    "sinklab.exploit.redistribute.act",
    "sinklab.exploit.redistribute.zerotuning",
    "sinklab.exploit.prefix.slots",
)


class Method:
    """Base class of every method: ``with method(model): ...``, ``method.apply(model)``, ``method.detach()``."""

    kind: ClassVar[str] = "measure"
    name: ClassVar[str] = ""

    def install(self, model_sites: ModelSites) -> None:
        """Add this method's hooks, requests or variant to ``model_sites`` (owner: ``self``)."""
        raise NotImplementedError

    def uninstall(self, model_sites: ModelSites) -> None:
        """Undo what ``install`` did beyond the sites (parameters added to modules, say); the sites drop the hooks."""

    @property
    def model(self) -> nn.Module | None:
        found = self.__dict__.get("_sites")
        return None if found is None else found.model

    def attach(self, model: nn.Module) -> Method:
        if self.__dict__.get("_sites") is not None:
            raise SinklabInputError(f"{type(self).__name__} is attached to a model already; detach it first")
        model_sites = sites(model)
        model_sites.attach(self)
        try:
            self.install(model_sites)
        except BaseException:
            model_sites.release(self)
            raise
        self.__dict__["_sites"] = model_sites
        return self

    def detach(self) -> None:
        model_sites = self.__dict__.pop("_sites", None)
        if model_sites is None:
            return
        try:
            self.uninstall(model_sites)
        finally:
            model_sites.release(self)

    def apply(self, model: nn.Module) -> nn.Module:
        """Attach for good (until ``detach``); returns the model."""
        self.attach(model)
        return model

    @contextmanager
    def __call__(self, model: nn.Module) -> Iterator[Method]:
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()

    def __enter__(self) -> Method:  # for methods built with their model (``Observer(model)``)
        bound = self.__dict__.get("_bound")
        if bound is None:
            raise SinklabInputError(f"use `with {type(self).__name__}(...)(model):`")
        return self.attach(bound)

    def __exit__(self, *exc) -> None:
        self.detach()


def methods() -> dict[str, type[Method]]:
    """Every method sinklab ships, by name."""
    found: dict[str, type[Method]] = {}
    for module_name in METHOD_MODULES:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Method) and value.name and value.__module__ == module_name:
                found[value.name] = value
    return found


def get_method(name: str) -> type[Method]:
    found = methods()
    if name not in found:
        raise SinklabInputError(f"unknown method {name!r}; accepted: {', '.join(sorted(found))}")
    return found[name]
