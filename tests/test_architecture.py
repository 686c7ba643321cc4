"""The package's layers, read from the folder list, and the one-way rule between them.

Each folder of ``bedgen`` is a layer; a module may import modules of its own layer and of
layers below it, never above, and no group of modules may import each other in a circle.
Imports inside functions count too: hiding an import in a function does not change which
way the dependency points. docs/architecture.md explains each layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bedgen"

# Lower number = lower layer. Layers with the same number are siblings and may not import each other.
LAYERS = {
    "core": 0, "config": 1, "maths": 2, "models": 3, "data": 4, "storage": 5, "sampling": 6,
    "evaluation": 7, "families": 7, "training": 8, "sweeps": 9, "sharing": 9, "cli": 10, "ui": 10,
}
# The package's front door: re-exports the public API; nothing inside imports it.
FACADE = {"bedgen", "bedgen.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every bedgen module ``path`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bedgen"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "bedgen":
                target = node.module
            else:
                continue
            # `from pkg import mod` imports the module pkg.mod where there is one.
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
    return {t for t in found if t != name}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_every_module_lies_in_a_layer_folder():
    loose = [n for n in all_modules() if n not in FACADE and layer_of(n) is None]
    assert not loose, f"modules outside any layer folder (add them to a layer): {loose}"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, targets in graph.items():
        if name in FACADE:
            continue
        for target in targets:
            if target in FACADE:
                wrong.append(f"{name} imports the package front door {target}")
                continue
            mine, theirs = layer_of(name), layer_of(target)
            if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    return sorted(wrong)


def test_imports_point_down_or_sideways_within_a_layer_only():
    wrong = layer_violations(import_graph())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_an_upward_import_added_to_the_real_graph_is_caught():
    """The checks are not vacuous: one deliberate upward import (core -> ui), and a sibling import
    (evaluation -> families), each fail them; the upward one also closes a cycle."""
    graph = import_graph()
    graph["bedgen.core.errors"] = graph["bedgen.core.errors"] | {"bedgen.ui.app"}
    graph["bedgen.evaluation.metrics"] = graph["bedgen.evaluation.metrics"] | {"bedgen.families.ddpm"}
    assert layer_violations(graph) == [
        "bedgen.core.errors (core) imports bedgen.ui.app (ui)",
        "bedgen.evaluation.metrics (evaluation) imports bedgen.families.ddpm (families)",
    ]
    assert any("bedgen.core.errors" in cycle and "bedgen.ui.app" in cycle for cycle in _cycles(graph))


def test_sampling_loads_nothing_of_training():
    """The inference path (what the app's Generate and Interpolate tabs import) needs no trainer,
    family, evaluation or sweep code."""
    code = ("import sys, bedgen.sampling.pipeline, bedgen.sampling.interpolate; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('bedgen.') and m.split('.')[1] in "
            "('training', 'families', 'evaluation', 'sweeps', 'sharing', 'cli', 'ui'))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ""


# Where inference may call the UNet: every sampler, trajectory, interpolation (and so FID sampling
# and fine-tuning's class images, which call Pipeline.sample) reaches it through the Denoiser.
DENOISER = "sampling/denoiser.py"
# Training objectives call the network on noised data with gradients; that is not inference.
TRAINING_SIDE = ("families", "training")


def unet_calls(source: str) -> list[int]:
    """Lines that call a UNet: ``unet(...)``, ``x.unet(...)``, ``unet.forward(...)``, or any call whose
    ``.sample`` is read (a diffusers model output, however the network was named), autoencoders'
    ``.decode(...).sample`` / ``.encode(...)`` excepted. Strings and comments do not count."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            owner = func.value if isinstance(func, ast.Attribute) else None
            owner_name = (owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute)
                          else None)
            if name == "unet" or (name in ("forward", "__call__") and owner_name == "unet"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "sample" and isinstance(node.value, ast.Call):
            func = node.value.func
            if not (isinstance(func, ast.Attribute) and func.attr in ("decode", "encode")):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_inference_calls_the_unet_in_one_place():
    """bedgen/sampling/denoiser.py holds the one UNet call of inference (autocast, channels_last,
    learned variance); bedgen/families and bedgen/training are left out: their calls are training
    objectives, not inference."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] not in TRAINING_SIDE and unet_calls(path.read_text()):
            found[relative] = unet_calls(path.read_text())
    assert list(found) == [DENOISER], f"UNet calls outside {DENOISER}: {found}"
    assert len(found[DENOISER]) == 1, f"{DENOISER} calls the UNet on several lines: {found[DENOISER]}"


def test_the_unet_call_finder_finds_calls():
    source = (
        "out = self.pipe.unet(model_in, ts).sample\n"
        "y = unet(x, t)\n"
        "z = model.unet.forward(x, t)\n"
        "w = net(x, t).sample\n"
        "image = vae.decode(z).sample\n"
        "text = 'unet(x).sample'  # unet(x)\n"
        "u = build_unet(config)\n"
    )
    assert unet_calls(source) == [1, 2, 3, 4]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected
