"""House rules that hold for the whole package: no module is shadowed by a name its package exports, no script shadows
a package its libraries import, and importing sinklab changes nothing (no attention function registered, no backend
chosen)."""

import gc
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
import weakref
from pathlib import Path

import transformers.utils.import_utils

import sinklab

ROOT = Path(__file__).resolve().parents[2]


def modules() -> list[str]:
    """Every module of the package but the ``python -m`` entry points (importing those runs them)."""
    found = pkgutil.walk_packages(sinklab.__path__, "sinklab.")
    return [info.name for info in found if not info.name.endswith(".__main__")]


def test_no_module_is_shadowed():
    shadowed = []
    for full in modules():
        module = importlib.import_module(full)
        parent, _, name = full.rpartition(".")
        if getattr(sys.modules[parent], name) is not module:
            shadowed.append(full)
    assert not shadowed, f"a package attribute hides these modules: {shadowed}"


def test_no_script_shadows_a_package():
    """``python benchmarks/X.py`` puts ``benchmarks/`` first on ``sys.path``, so a script named like a package hides it
    from every library in that process. benchmarks/kernels.py did that to the Hugging Face ``kernels`` package: on the
    H200 (transformers 5.17) importing LlamaConfig imported it, and gu_study could not load a checkpoint."""
    probed = set(
        re.findall(r'_is_package_available\(\s*"([\w.]+)"', Path(transformers.utils.import_utils.__file__).read_text())
    )
    assert {"kernels", "peft", "accelerate"} <= probed  # what transformers looks for when it imports
    clashes = []
    for folder in ("benchmarks", "scripts", "tests/gpu"):
        for script in sorted(p for p in (ROOT / folder).glob("*.py") if p.stem not in ("conftest", "__init__")):
            spec = importlib.util.find_spec(script.stem)
            installed = spec is not None and spec.origin is not None and Path(spec.origin).resolve() != script.resolve()
            if script.stem in probed or installed:
                clashes.append(f"{folder}/{script.name}")
    assert not clashes, f"these scripts share a name with a package: {clashes}"


def test_importing_sinklab_registers_nothing():
    """In a fresh interpreter: importing every module leaves transformers' registries as they were."""
    code = (
        "import importlib, pkgutil, sinklab\n"
        "from transformers import AttentionInterface\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "before = (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping))\n"
        "for i in pkgutil.walk_packages(sinklab.__path__, 'sinklab.'):\n"
        "    i.name.endswith('__main__') or importlib.import_module(i.name)\n"
        "after = (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping))\n"
        "assert before == after, (before, after)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_dropped_patched_model_leaves_no_registration():
    from transformers import AttentionInterface

    from sinklab.models.tiny import tiny_arch
    from sinklab.remove import patch

    model = patch(tiny_arch("llama")[0], "sink")
    name = model.__dict__["_sinklab_sites"].name
    ref = weakref.ref(model)
    assert name in AttentionInterface._global_mapping
    del model
    gc.collect()
    assert ref() is None and name not in AttentionInterface._global_mapping
