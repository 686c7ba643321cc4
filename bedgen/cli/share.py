"""``bedgen push``, ``bedgen space`` and ``bedgen pull``: the sharing subcommands of the CLI.

Thin wrappers over :mod:`bedgen.sharing.publish` and :mod:`bedgen.sharing.space`; registered in
``bedgen.cli.main.SUBCOMMANDS``. The token comes from ``HF_TOKEN`` or ``hf auth login`` and is
never printed; ``HF_ENDPOINT`` selects another Hub.
"""

from __future__ import annotations

import argparse
import sys

from ..core.errors import BedgenError
from .arguments import whole_in

ENVIRONMENT = ("environment: HF_TOKEN (a token with write access; else the one saved by 'hf auth login'), "
               "HF_ENDPOINT (another Hub), HF_HOME (where the token, the cache and the list of pushed models live)")


def add_push(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES
    from ..sharing.publish import DEFAULT_LICENSE, DEFAULT_SAMPLES

    p = sub.add_parser(
        "push", help="publish a checkpoint or training run on the Hugging Face Hub (diffusers layout + model card)",
        description="Uploads the checkpoint (a run folder: its latest EMA checkpoint) as a diffusers-loadable model "
                    "repo in one commit: safetensors weights, configs, bedgen.json without secrets or local paths, "
                    "samples.png, loss.png and a model card with the metrics. Re-pushing makes one new commit "
                    "(none if nothing changed). " + ENVIRONMENT,
    )
    p.add_argument("--model", required=True, help="checkpoint folder or training run folder (bedgen train --out)")
    p.add_argument("--repo", required=True, help="Hub repo id ORG/NAME (created if it does not exist)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision", default=None, help="branch to push to, created from main if new (default: main)")
    p.add_argument("--message", default=None, help="commit message (default: what and which step)")
    p.add_argument("--include-training-state", action="store_true",
                   help="also upload training_state/, so the run can be resumed from the Hub (bedgen pull --include-training-state)")
    p.add_argument("--samples", type=whole_in(0, 64), default=DEFAULT_SAMPLES,
                   help=f"images in samples.png, seeds 0..N-1 with the model's default sampler; 0 = none (default {DEFAULT_SAMPLES})")
    p.add_argument("--license", default=DEFAULT_LICENSE, help=f"license id for the model card (default {DEFAULT_LICENSE})")
    p.add_argument("--device", choices=DEVICES, default="auto", help="for the sample grid")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    from .progress import StageProgress
    from ..sharing.publish import push_model

    with StageProgress(unit="step") as progress:
        result = push_model(
            args.model, args.repo, private=args.private, revision=args.revision, message=args.message,
            include_training_state=args.include_training_state, samples=args.samples, license=args.license,
            device=args.device, progress=progress,
        )
    if result.changed:
        print(f"pushed {len(result.files)} files to {result.repo_id} ({result.revision}) in commit {result.commit[:12]}",
              file=sys.stderr)
    else:
        print(f"{result.repo_id} ({result.revision}) already holds these files: no new commit", file=sys.stderr)
    print(f"load it with: bedgen sample --model {result.ref} --out samples/", file=sys.stderr)
    print(result.url)
    return 0


def add_space(sub: argparse._SubParsersAction) -> None:
    from ..sharing.space import hardware_choices

    p = sub.add_parser(
        "space", help="create or update a Gradio Space running this app for pushed models",
        description="Uploads this version of the app (the bedgen package, app.py, requirements.txt) to a Gradio "
                    "Space in one commit, with README front matter for the installed gradio, and sets the Space "
                    "variables BEDGEN_DEFAULT_MODEL and BEDGEN_HUB_MODELS to the models. Prints the Space URL. "
                    + ENVIRONMENT,
    )
    p.add_argument("--repo", required=True, help="Space id ORG/NAME (created if it does not exist)")
    p.add_argument("--model", required=True, action="append",
                   help="Hub id of a pushed model, org/name[@branch]; repeat for several (the first is the default)")
    p.add_argument("--hardware", choices=hardware_choices(), default=None,
                   help="request this Space hardware (default: leave it as it is; new Spaces start on cpu-basic)")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=cmd_space)


def cmd_space(args: argparse.Namespace) -> int:
    from ..sharing.space import deploy_space

    result = deploy_space(args.repo, args.model, hardware=args.hardware, private=args.private, message=args.message)
    what = f"commit {result.commit[:12]}" if result.changed else "app unchanged"
    print(f"Space {result.space_id}: {what}; models {', '.join(result.models)}"
          + (f"; hardware {result.hardware} requested" if result.hardware else ""), file=sys.stderr)
    for note in result.notes:
        print(f"bedgen: note: {note}", file=sys.stderr)
    print(result.url)
    return 0


def add_pull(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "pull", help="download a Hub model (org/name[@revision]) into the cache, or into a local folder",
        description="Downloads the model's configs, safetensors weights, card and images through huggingface_hub "
                    "(cache, token, HF_HUB_OFFLINE) and prints the folder. With --out it becomes a local model; "
                    "with --include-training-state a run folder that 'bedgen train --resume --out DIR' continues.",
    )
    p.add_argument("--model", required=True, help="Hub id org/name[@revision] (a branch, tag or commit)")
    p.add_argument("--out", type=Path, default=None, help="copy it here (a new or empty folder)")
    p.add_argument("--include-training-state", action="store_true", help="also fetch training_state/ to resume training")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    from ..sharing.publish import pull_model

    if args.include_training_state and args.out is None:
        raise BedgenError("--include-training-state needs --out DIR: the run folder that 'bedgen train --resume' continues")
    path = pull_model(args.model, args.out, include_training_state=args.include_training_state)
    if args.include_training_state:
        print(f"resume with: bedgen train --resume --out {path} --data DATA", file=sys.stderr)
    print(path)
    return 0


SHARE_SUBCOMMANDS = (add_push, add_space, add_pull)

__all__ = ["SHARE_SUBCOMMANDS", "BedgenError", "cmd_pull", "cmd_push", "cmd_space"]
