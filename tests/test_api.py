"""The public package surface: lazy, complete, and free of submodule clashes."""

import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys

import fgjax


def test_every_public_name_resolves_to_what_it_names():
    for name in fgjax.__all__:
        value = getattr(fgjax, name)
        if name == "__version__":
            assert value == importlib.metadata.version("fgjax")
        else:
            assert callable(value) and value.__name__ == name, name


def test_no_public_name_is_shadowed_by_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(fgjax.__path__)}
    assert not (set(fgjax.__all__) & submodules)


def test_importing_fgjax_is_light():
    code = "import sys, fgjax; print(sorted(m for m in ('jax', 'flax', 'fgjax.training.loop') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_kernels_import_nothing_from_fgjax():
    import fgjax.kernels as kernels

    for info in pkgutil.iter_modules(kernels.__path__):
        source = importlib.util.find_spec(f"fgjax.kernels.{info.name}").origin
        text = open(source).read()
        assert "import fgjax" not in text and "from fgjax" not in text and "flax" not in text, info.name


def test_the_analyze_command_imports_no_training_or_checkpoint_library():
    """``fgjax analyze`` starts without Flax, Optax, Orbax or the training code (about 1.5 s of imports)."""
    code = ("import sys, fgjax.analysis_job; print(sorted(m for m in ('flax', 'optax', 'orbax.checkpoint', "
            "'fgjax.training', 'fgjax.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
