"""Sharing models on the Hugging Face Hub: ``bedgen push`` and ``bedgen pull``.

Everything goes through huggingface_hub's own ``HfApi`` (``whoami``, ``create_repo``,
``create_branch``, ``create_commit``) at ``HF_ENDPOINT`` (read at call time, like
:mod:`bedgen.core.hub`), with the token from ``HF_TOKEN`` or ``hf auth login``.

A push is one commit: the checkpoint's diffusers folders (safetensors weights,
configs), its ``bedgen.json`` with secrets and local paths removed
(:mod:`bedgen.core.redact`), a sample grid, the loss curve of the run and the model card
(:mod:`bedgen.sharing.model_card`). The Hub applies a commit whole or not at all, so a push
that fails half-way (token, network, a cut connection) leaves the repo as it was and
the same command can simply be run again. Before anything is uploaded the token is
checked (present, accepted, allowed to write to the namespace) and the folder is
checked to be a checkpoint, so those mistakes cost one line and no half-made repo.
Re-pushing replaces the files bedgen publishes (files you added yourself stay), and
unchanged files are not uploaded again.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.version import __version__
from ..core.errors import BedgenError, one_line
from ..storage.run_folder import RunFolder, metric_curve

RepoFiles = dict[str, "bytes | Path"]  # path in the repo -> content (bytes) or a local file to upload as is
Progress = Callable[[int, int, str], None]  # (done, total, stage), like bedgen eval's progress

# Hub repo ids: [namespace/]name, letters, digits, '-', '_', '.', no '--' or '..', at most 96 characters.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"^(?:(?P<namespace>{_PART})/)?(?P<name>{_PART})$")
# A branch to push to (not a commit sha, not refs/pr/N).
BRANCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
_SHA40 = re.compile(r"^[0-9a-f]{40}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".cfg")
STATE_DIR = "training_state"
CARD_FILE, SAMPLES_FILE, LOSS_FILE = "README.md", "samples.png", "loss.png"
DEFAULT_SAMPLES = 4
DEFAULT_LICENSE = "apache-2.0"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
# What a re-push may delete when the new checkpoint no longer has it: the folders and
# root files bedgen publishes. Anything else in the repo was added by hand and stays.
MANAGED_FOLDERS = ("unet", "scheduler", "vqvae", "vae", STATE_DIR)
MANAGED_FILES = (CARD_FILE, SAMPLES_FILE, LOSS_FILE, "bedgen.json", "model_index.json", "config.json",
                 "scheduler_config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class PushResult:
    """What a push did. ``url`` is the repo page (``/tree/BRANCH`` for a branch other than main)."""

    repo_id: str
    revision: str
    url: str
    commit: str
    files: tuple[str, ...]  # every path the push wrote (unchanged ones included)
    changed: bool  # False when the repo already held exactly these files: no new commit
    private: bool

    @property
    def ref(self) -> str:
        """The model REF to load it with: ``org/name`` or ``org/name@branch``."""
        return self.repo_id + ("" if self.revision == "main" else f"@{self.revision}")


# --- arguments, token, errors ---------------------------------------------------------------


def check_repo_id(text: Any, flag: str = "--repo") -> str:
    """``ORG/NAME`` (or ``NAME``, then in the token's own namespace) as the Hub accepts it."""
    value = text.strip() if isinstance(text, str) else ""
    if not REPO_ID.match(value) or "--" in value or ".." in value or value.endswith(".git"):
        raise BedgenError(
            f"{flag} {text!r} is not a Hub repo id: use ORG/NAME made of letters, digits, '-', '_' and '.' "
            "(no '--' or '..', at most 96 characters each)"
        )
    return value


def check_branch(revision: Any) -> str:
    """The branch to push to (default main); commit shas and pull-request refs are refused."""
    if revision is None or (isinstance(revision, str) and not revision.strip()):
        return "main"
    value = revision.strip() if isinstance(revision, str) else ""
    if not BRANCH.match(value) or ".." in value or _SHA40.match(value) or value.startswith("refs/"):
        raise BedgenError(f"--revision {revision!r} is not a branch name (letters, digits, '-', '_', '.', '/')")
    return value


def find_token(token: str | None = None) -> str:
    """The token to write with: the argument, else HF_TOKEN, else the one saved by ``hf auth login``."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise BedgenError(
            f"no Hugging Face token: set HF_TOKEN or run 'hf auth login' with a token that has write access ({TOKENS_PAGE})"
        )
    return token


def hub_api(token: str):
    from huggingface_hub import HfApi

    from ..core.hub import hub_endpoint, hub_offline

    if hub_offline():
        raise BedgenError("offline mode is on (HF_HUB_OFFLINE=1); publishing needs the Hub: unset it to push")
    return HfApi(endpoint=hub_endpoint(), token=token)


@contextmanager
def hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub and network failures into one-line BedgenErrors (never with the token)."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except BedgenError:
        raise
    except RevisionNotFoundError as e:
        raise BedgenError(f"{action}: '{repo_id}' has no such revision") from e
    except RepositoryNotFoundError as e:
        raise BedgenError(f"{action}: '{repo_id}' was not found on the Hub, or the token cannot see it") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        if status == 401:
            raise BedgenError(
                f"the Hub did not accept the Hugging Face token (invalid or expired); set HF_TOKEN to a token with "
                f"write access ({TOKENS_PAGE})") from e
        if status == 403:
            raise BedgenError(f"{action}: the token may not write to '{repo_id}' ({_server_message(e)})") from e
        if status == 412:
            raise BedgenError(f"{action}: '{repo_id}' changed on the Hub during the push; run the same command again") from e
        raise BedgenError(f"{action} failed: HTTP {status}: {_server_message(e)}") from e
    except ValueError as e:  # e.g. card metadata the Hub refuses, checked before any upload
        raise BedgenError(f"{action} failed: {one_line(e)}") from e
    except Exception as e:
        reason = _network_failure(e)
        if reason is None:
            raise
        raise BedgenError(
            f"{action} failed: the connection to the Hub was lost ({reason}); a Hub commit is all or nothing, "
            "so run the same command again") from e


def _server_message(error: Exception) -> str:
    return getattr(error, "server_message", None) or one_line(error)


def _network_failure(error: BaseException) -> str | None:
    """The reason when `error` (or what caused it) is a network failure, else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) or type(seen).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11"):
            return f"{type(seen).__name__}: {one_line(seen)}" if str(seen).strip() else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def authorize(api, token: str, repo_id: str, repo_type: str = "model") -> str:
    """Check, before any upload, that ``token`` may write ``repo_id``; returns ``namespace/name``.

    ``whoami`` says whose token it is, its role (read, write, fineGrained with scoped
    permissions) and the user's organisations with their role in each.
    """
    with hub_errors("checking the token", repo_id):
        me = api.whoami(token=token)
    user = me.get("name") or ""
    namespace, _, name = repo_id.rpartition("/")
    namespace = namespace or user
    full = f"{namespace}/{name}"
    access = (me.get("auth") or {}).get("accessToken") or {}
    label = f"the token '{access['displayName']}'" if access.get("displayName") else "the token"
    role = access.get("role")
    if role == "read":
        raise BedgenError(f"{label} is read-only; create one with write access ({TOKENS_PAGE}) and set HF_TOKEN")
    if role == "fineGrained":
        if not _fine_grained_may_write(access.get("fineGrained") or {}, repo_type, full, namespace):
            raise BedgenError(f"{label} (fine-grained) has no write permission on '{full}'; add 'repo.write' for "
                              f"'{namespace}' or '{full}' to it ({TOKENS_PAGE})")
        return full
    if namespace != user:
        orgs = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs") or []}
        if namespace not in orgs:
            raise BedgenError(f"'{user}' is not a member of '{namespace}'; push to '{user}/{name}' instead, "
                              f"or join '{namespace}'")
        if orgs[namespace] == "read":
            raise BedgenError(f"'{user}' may only read in '{namespace}'; ask its admins for the write role")
    return full


def _fine_grained_may_write(grants: dict, repo_type: str, repo_id: str, namespace: str) -> bool:
    for scope in grants.get("scoped") or []:
        entity = scope.get("entity") or {}
        if "repo.write" not in (scope.get("permissions") or []):
            continue
        if entity.get("type") in ("user", "org") and entity.get("name") == namespace:
            return True
        if entity.get("type") == repo_type and entity.get("name") == repo_id:
            return True
    return False


# --- the one commit -------------------------------------------------------------------------


def publish_files(api, repo_id: str, files: RepoFiles, *, message: str, revision: str = "main",
                  repo_type: str = "model", private: bool = False, space_sdk: str | None = None,
                  managed: Callable[[str], bool] = lambda path: True) -> tuple[str, str, bool, bool]:
    """Create the repo (and branch) if needed and commit ``files`` in one commit.

    Files on the branch that are not in ``files`` and for which ``managed(path)`` is
    true are deleted in the same commit. Returns (url, commit, changed, private).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    with hub_errors(f"pushing to '{repo_id}'", repo_id):
        url = str(api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk))
        if revision != "main":
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
            url = f"{url}/tree/{revision}"
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision)
        head = info.sha
        existing = api.list_repo_files(repo_id, repo_type=repo_type, revision=head)
        operations = [CommitOperationAdd(path, content if isinstance(content, bytes) else str(content))
                      for path, content in sorted(files.items())]
        operations += [CommitOperationDelete(path) for path in existing if path not in files and managed(path)]
        # parent_commit: if someone else pushed meanwhile, fail instead of silently overwriting their commit
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type,
                                   revision=revision, parent_commit=head)
    return url, commit.oid, commit.oid != head, bool(getattr(info, "private", False))


def _managed(path: str) -> bool:
    return path in MANAGED_FILES or path.split("/")[0] in MANAGED_FOLDERS


# --- push -------------------------------------------------------------------------------------


def push_model(
    ref: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    include_training_state: bool = False,
    samples: int = DEFAULT_SAMPLES,
    license: str = DEFAULT_LICENSE,
    device: str = "auto",
    progress: Progress | None = None,
) -> PushResult:
    """Publish the checkpoint ``ref`` (a checkpoint folder, or a run folder: its latest EMA
    checkpoint) as the Hub model repo ``repo_id`` in one commit; see the module docstring.

    ``samples`` images (seeds 0..samples-1, the model's default sampler) make
    ``samples.png``; 0 skips it. ``progress(done, total, stage)`` follows the stages.
    """
    from ..storage.checkpoint import BEDGEN_JSON
    from .model_card import CardInputs, model_card
    from ..core.redact import redact_file, secrets_from_environment

    repo_id = check_repo_id(repo_id)
    branch = check_branch(revision)
    checkpoint, run_dir = checkpoint_folder(ref)
    sources = checkpoint_files(checkpoint, include_training_state)
    token = find_token(token)
    api = hub_api(token)
    _report(progress, 0, 1, "checking the token")
    repo_id = authorize(api, token, repo_id)

    secrets = secrets_from_environment([token])
    files: RepoFiles = {
        path: redact_file(path, source.read_bytes(), secrets) if source.suffix in TEXT_SUFFIXES else source
        for path, source in sources.items()
    }
    pipe = _load(checkpoint)
    grid = sample_grid(pipe, samples, device, progress)
    if grid is not None:
        files[SAMPLES_FILE] = grid[1]
    loss = loss_curve_png(RunFolder(run_dir).metrics()) if run_dir is not None else None
    if loss is not None:
        files[LOSS_FILE] = loss
    description = json.loads(files[BEDGEN_JSON]) if isinstance(files.get(BEDGEN_JSON), bytes) else {}
    card = model_card(CardInputs(
        repo_id=repo_id, revision=None if branch == "main" else branch, description=description,
        family=pipe.info.family, resolution=pipe.resolution, pipeline_class=_pipeline_class(checkpoint),
        samples=grid[0] if grid is not None else None, loss_curve=LOSS_FILE if loss is not None else None,
        training_state=include_training_state, license=license,
    ))
    files[CARD_FILE] = card.encode()

    _report(progress, 0, 1, "uploading")
    step = (description.get("training") or {}).get("step")
    message = message or (f"Upload {pipe.info.family} model" + (f" (step {step})" if step is not None else "")
                          + f" with bedgen {__version__}")
    url, commit, changed, is_private = publish_files(api, repo_id, files, message=message, revision=branch,
                                                     private=private, managed=_managed)
    _report(progress, 1, 1, "uploading")
    result = PushResult(repo_id, branch, url, commit, tuple(sorted(files)), changed, is_private)
    from ..storage.registry import remember_push

    remember_push(result, api.endpoint, source=checkpoint, family=pipe.info.family)
    return result


def checkpoint_folder(ref: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, its training run folder or None) for a checkpoint or run folder."""
    from ..storage.checkpoint import latest_in_run, looks_like_checkpoint

    path = Path(str(ref)).expanduser()
    if not path.is_dir():
        raise BedgenError(f"--model '{ref}' is not a local folder; push takes a checkpoint folder or a training "
                          "run folder (the --out of bedgen train)")
    run_dir = next((p for p in (path, path.parent, path.parent.parent) if RunFolder(p).is_run()), None)
    checkpoint = latest_in_run(path)
    if not looks_like_checkpoint(checkpoint):
        raise BedgenError(f"'{ref}' is not a checkpoint: expected model_index.json with unet/ and scheduler/ "
                          "(a diffusers pipeline), a vae/ folder, or a training run folder")
    return checkpoint, run_dir


def checkpoint_files(checkpoint: Path, include_training_state: bool) -> dict[str, Path]:
    """The files of a checkpoint to publish: everything but hidden files and (unless asked) training_state/."""
    has_state = (checkpoint / STATE_DIR).is_dir()
    if include_training_state and not has_state:
        raise BedgenError(f"'{checkpoint}' has no {STATE_DIR}/ to resume from (best-fid and exported checkpoints "
                          "have none); push the run folder, or leave out --include-training-state")
    files = {}
    for file in sorted(checkpoint.rglob("*")):
        path = file.relative_to(checkpoint).as_posix()
        parts = path.split("/")
        if not file.is_file() or any(p.startswith(".") for p in parts):
            continue
        if parts[0] == STATE_DIR and not include_training_state:
            continue
        if file.suffix in PICKLE_SUFFIXES:
            raise BedgenError(f"'{checkpoint}' holds pickled weights ({path}); bedgen publishes safetensors only: "
                              "load the model with bedgen and save it as a bedgen checkpoint first")
        files[path] = file
    return files


def _load(checkpoint: Path):
    from ..sampling.pipeline import load

    return load(str(checkpoint))


def _pipeline_class(checkpoint: Path) -> str | None:
    index = checkpoint / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def sample_grid(pipe, count: int, device: str = "auto", progress: Progress | None = None):
    """(SampleGrid, PNG bytes) of ``count`` images from seeds 0..count-1, or None (count 0, or a model
    that cannot sample, such as a VQ autoencoder)."""
    from ..core.images import grid
    from .model_card import SampleGrid

    if count < 1:
        return None
    try:
        result = pipe.sample(count, seed=0, device=device,
                             progress=(lambda done, total: progress(done, total, "sampling")) if progress else None)
    except BedgenError:
        return None
    buffer = io.BytesIO()
    grid(result.images).save(buffer, format="PNG")
    info = SampleGrid(SAMPLES_FILE, (result.seeds[0], result.seeds[-1]), result.sampler, result.steps, result.placement)
    return info, buffer.getvalue()


def loss_curve_png(records: list[dict[str, Any]]) -> bytes | None:
    """A PNG of the training loss (and the in-training FID, if any) from a run's metrics records."""
    loss, fid = metric_curve(records, "loss"), metric_curve(records, "fid")
    if not loss:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * (2 if fid else 1), 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if fid else 1, squeeze=False)[0]
    for ax, values, label in zip(axes, (loss, fid), ("training loss", "FID (during training)")):
        ax.plot([s for s, _ in values], [v for _, v in values], linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if min(v for _, v in values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _report(progress: Progress | None, done: int, total: int, stage: str) -> None:
    if progress is not None:
        progress(done, total, stage)


# --- pull ----------------------------------------------------------------------------------


def pull_model(ref: str, out: str | Path | None = None, include_training_state: bool = False) -> Path:
    """Download a pushed model (``org/name[@revision]``) into the Hub cache and return its folder;
    with ``out``, copy it there as a local model (a run folder to ``--resume`` with training state)."""
    from ..storage.checkpoint import BEDGEN_JSON
    from ..core.hub import SAFE_PATTERNS, download, parse_hub_ref

    hub = parse_hub_ref(ref) if isinstance(ref, str) else None
    if hub is None:
        raise BedgenError(f"--model {ref!r} is not a Hub id of the form org/name[@revision]")
    patterns = SAFE_PATTERNS + ["*.md", "*.png"] + ([f"{STATE_DIR}/*"] if include_training_state else [])
    snapshot = download(hub, needs_pickle=False, patterns=patterns)
    if include_training_state and not (snapshot / STATE_DIR).is_dir():
        raise BedgenError(f"'{ref}' was pushed without training state; push it with --include-training-state to resume")
    if out is None:
        return snapshot
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise BedgenError(f"--out '{out}' already exists and is not empty; choose a new folder")
    if not include_training_state:
        shutil.copytree(snapshot, out, dirs_exist_ok=True)  # the cache holds links to blobs: copy the content
        return out
    description = json.loads((snapshot / BEDGEN_JSON).read_text()) if (snapshot / BEDGEN_JSON).is_file() else {}
    step = int((description.get("training") or {}).get("step") or 0)
    run = RunFolder(out)
    latest = run.checkpoint_path(step)
    shutil.copytree(snapshot, latest)
    run.update_state(latest=latest.relative_to(out).as_posix(), status="stopped", step=step,
                     message=f"pulled from {ref}", config=description.get("config"))
    return out


__all__ = [
    "DEFAULT_LICENSE", "DEFAULT_SAMPLES", "PushResult", "authorize", "check_branch", "check_repo_id",
    "checkpoint_files", "checkpoint_folder", "find_token", "hub_errors", "loss_curve_png", "publish_files",
    "pull_model", "push_model", "sample_grid",
]
