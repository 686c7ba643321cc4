"""A Hugging Face Space running this app for pushed models: ``bedgen space``.

The Space gets this very version of the app, self-contained: the ``bedgen`` package
source, ``app.py`` and ``requirements.txt`` as they are here, and a README whose
front matter says ``sdk: gradio`` with the installed gradio's version. Nothing is
installed from a git URL or a package index at a different version, so the Space
runs what was tested here. Its variables ``BEDGEN_DEFAULT_MODEL`` (the first model)
and ``BEDGEN_HUB_MODELS`` (all of them) make the pushed models the app's list; on a
Space the app is public (``SPACE_ID`` is set), so that list is also the only Hub
models it serves (see the README's "Security"). Like ``bedgen push``, an update is
one commit through ``HfApi``, after the token and the models were checked.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.version import __version__
from ..core.errors import BedgenError
from .publish import authorize, check_repo_id, find_token, hub_api, hub_errors, publish_files

DEFAULT_HARDWARE = "cpu-basic"
APP_PY = '''"""Entry point of the bedgen Gradio app (the Space's app_file)."""

from bedgen.ui import main

if __name__ == "__main__":
    main()
'''
SPACE_FILES = ("README.md", "app.py", "requirements.txt")


@dataclass(frozen=True)
class SpaceResult:
    space_id: str
    url: str  # the Space page
    commit: str
    files: tuple[str, ...]
    changed: bool
    models: tuple[str, ...]
    hardware: str | None  # requested hardware, None if not asked
    notes: tuple[str, ...]  # things the owner must still do (e.g. a secret for private models)


def hardware_choices() -> tuple[str, ...]:
    from huggingface_hub import SpaceHardware

    return tuple(h.value for h in SpaceHardware)


def deploy_space(
    space_id: str,
    models: list[str],
    *,
    hardware: str | None = None,
    private: bool = False,
    message: str | None = None,
    token: str | None = None,
) -> SpaceResult:
    """Create or update the Gradio Space ``space_id`` serving ``models`` (Hub ids ``org/name[@branch]``)."""
    from ..core.hub import parse_hub_ref

    space_id = check_repo_id(space_id)
    refs = [parse_hub_ref(m) if isinstance(m, str) else None for m in models or []]
    if not refs:
        raise BedgenError("--model is required: the Hub id of a pushed model (org/name), once per model")
    for given, ref in zip(models, refs):
        if ref is None:
            raise BedgenError(f"--model {given!r} is not a Hub id of the form org/name[@branch]")
    if hardware is not None and hardware not in hardware_choices():
        raise BedgenError(f"--hardware {hardware!r} is not Space hardware; choose from {', '.join(hardware_choices())}")
    token = find_token(token)
    api = hub_api(token)
    space_id = authorize(api, token, space_id, repo_type="space")
    notes = [_check_model(api, ref) for ref in refs]

    files = space_files(space_id, [str(ref) for ref in refs])
    variables = {"BEDGEN_DEFAULT_MODEL": str(refs[0]), "BEDGEN_HUB_MODELS": ",".join(str(ref) for ref in refs)}
    with hub_errors(f"creating the Space '{space_id}'", space_id):
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        for key, value in variables.items():  # before the commit, so the build starts with them
            api.add_space_variable(space_id, key, value, description="set by bedgen space")
    url, commit, changed, _ = publish_files(
        api, space_id, files, message=message or f"bedgen {__version__} app for {', '.join(variables['BEDGEN_HUB_MODELS'].split(','))}",
        repo_type="space", private=private, space_sdk="gradio", managed=_managed,
    )
    if hardware is not None:
        with hub_errors(f"requesting hardware for '{space_id}'", space_id):
            api.request_space_hardware(space_id, hardware)
    return SpaceResult(space_id, url, commit, tuple(sorted(files)), changed, tuple(str(r) for r in refs), hardware,
                       tuple(n for n in notes if n))


def _check_model(api, ref) -> str | None:
    """The model must exist on the Hub (same endpoint); a private one needs a token on the Space."""
    with hub_errors(f"checking the model '{ref}'", ref.repo_id):
        info = api.model_info(ref.repo_id, revision=ref.revision)
    if getattr(info, "private", False):
        return (f"'{ref.repo_id}' is private: add a read token as the Space secret HF_TOKEN "
                "(Settings -> Variables and secrets), or the Space cannot download it")
    return None


PACKAGE = Path(__file__).resolve().parents[1]  # bedgen/, whose source the Space runs


def _managed(path: str) -> bool:
    """A re-deploy replaces the app (old modules go), and keeps files added by hand."""
    return path in SPACE_FILES or path.startswith("bedgen/")


def space_files(space_id: str, models: list[str]) -> dict[str, bytes]:
    """The Space repo: README.md (front matter), app.py, requirements.txt and the bedgen package source."""
    package = PACKAGE
    files = {
        f"bedgen/{path.relative_to(package).as_posix()}": path.read_bytes()
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    app = package.parent / "app.py"
    files["app.py"] = app.read_bytes() if app.is_file() else APP_PY.encode()
    files["requirements.txt"] = requirements().encode()
    files["README.md"] = space_readme(space_id, models).encode()
    return files


def requirements() -> str:
    """The app's requirements as this checkout (or this installed package) declares them."""
    here = PACKAGE.parent / "requirements.txt"
    if here.is_file():
        return here.read_text()
    try:
        declared = importlib.metadata.requires("bedgen") or []
    except importlib.metadata.PackageNotFoundError as e:
        raise BedgenError("cannot find bedgen's requirements (no requirements.txt and no installed metadata)") from e
    return "\n".join(r for r in declared if "extra ==" not in r) + "\n"


def space_readme(space_id: str, models: list[str]) -> str:
    import gradio
    from huggingface_hub import SpaceCardData

    from ..storage.checkpoint import provenance

    data = SpaceCardData(
        title=space_id.split("/")[-1], emoji="🛏️", colorFrom="indigo", colorTo="yellow", sdk="gradio",
        sdk_version=gradio.__version__, python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py", pinned=False, license="apache-2.0",
        models=sorted({m.split("@")[0] for m in models}), tags=["bedgen", "diffusion", "unconditional-image-generation"],
        short_description="Generate bedrooms with diffusion models trained by bedgen",
    )
    commit = provenance().get("git_commit")
    version = f"bedgen {__version__}" + (f" (commit `{commit[:12]}`)" if commit else "")
    listed = "\n".join(f"- [{m}](https://huggingface.co/{m.split('@')[0]})" + (f" at `{m.split('@')[1]}`" if "@" in m else "")
                       for m in models)
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {space_id.split('/')[-1]}\n\n"
        f"The bedgen app ({version}) serving:\n\n{listed}\n\n"
        "Generate bedrooms from a seed, interpolate between two photos, and look for the nearest training images. "
        "The app runs in public mode here: it serves only the models above (the Space variables "
        "`BEDGEN_DEFAULT_MODEL` and `BEDGEN_HUB_MODELS`), and training is off unless `BEDGEN_ENABLE_TRAINING=1` and "
        "`BEDGEN_AUTH` are set. Made with `bedgen space`; run it again to update the app or the models.\n"
    )


__all__ = ["DEFAULT_HARDWARE", "SpaceResult", "deploy_space", "hardware_choices", "requirements", "space_files",
           "space_readme"]
