"""The model card (README.md) of a pushed model: Hub metadata plus what a reader needs.

Written only from the *redacted* ``bedgen.json`` (see :mod:`bedgen.core.redact`), so it can
hold no local path or secret. The YAML front matter is made by huggingface_hub's own
``ModelCardData`` (``library_name: diffusers``, ``pipeline_tag:
unconditional-image-generation``, tags, datasets, license, and a ``model-index`` with
the FID/KID results), so the Hub shows the widget, the filters and the results.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..core.version import __version__

PIPELINE_TAG = "unconditional-image-generation"
FAMILY_TEXT = {
    "ddpm": "denoising diffusion probabilistic model (DDPM, Ho et al. 2020)",
    "iddpm": "improved DDPM with learned variances (Nichol & Dhariwal 2021)",
    "ldm": "latent diffusion model (Rombach et al. 2022): a UNet denoising the latents of an autoencoder",
    "smld": "score-based model trained by denoising score matching (Song & Ermon 2019)",
    "vae": "variational autoencoder (Kingma & Welling 2013)",
    "consistency": "consistency model (Song et al. 2023)",
    "progressive": "progressively distilled diffusion model (Salimans & Ho 2022)",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class SampleGrid:
    """How ``samples.png`` was made (shown under it)."""

    file: str
    seeds: tuple[int, int]
    sampler: str
    steps: int
    placement: str


@dataclass(frozen=True)
class CardInputs:
    repo_id: str
    revision: str | None
    description: dict[str, Any]  # the redacted bedgen.json ({} for a foreign checkpoint)
    family: str
    resolution: int
    pipeline_class: str | None  # from model_index.json; None for a bare autoencoder (vae/)
    samples: SampleGrid | None
    loss_curve: str | None  # file name of the loss plot, if the run had a metrics log
    training_state: bool
    license: str


def metadata(inputs: CardInputs):
    """The card's YAML metadata as a ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    config = inputs.description.get("config") or {}
    tags = ["bedgen", inputs.family, "diffusion" if inputs.family != "vae" else "autoencoder", "bedroom",
            "unconditional-image-generation"]
    # The model this one was made from: a fine-tuning's start or a distillation's teacher.
    base = (config.get("finetune") or {}).get("init_from") or (config.get("distill") or {}).get("teacher")
    results = [
        EvalResult(task_type=PIPELINE_TAG, dataset_type=_dataset_id(r) or "custom", dataset_name=_reference_name(r),
                   metric_type=name, metric_value=float(r[name]), metric_name=label)
        for r in metric_records(inputs.description)
        for name, label in (("fid", f"FID ({r.get('num_samples', '?')} samples)"),
                            ("kid", f"KID ({r.get('num_samples', '?')} samples)"))
        if isinstance(r.get(name), (int, float))
    ]
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag=PIPELINE_TAG,
        license=inputs.license,
        tags=tags,
        datasets=training_datasets(inputs.description) or None,
        base_model=base.split("@")[0] if isinstance(base, str) and _HUB_ID.match(base.split("@")[0]) else None,
        model_name=inputs.repo_id if results else None,
        eval_results=results or None,
    )


def model_card(inputs: CardInputs) -> str:
    """The full README.md: front matter, then the sections below."""
    sections = [
        _intro(inputs), _results(inputs), _usage(inputs), _preprocessing(inputs), _training(inputs),
        _resume(inputs), _provenance(inputs),
    ]
    body = "\n\n".join(s for s in sections if s)
    return f"---\n{metadata(inputs).to_yaml()}\n---\n\n{body}\n"


# --- what the card says ---------------------------------------------------------------


def metric_records(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluations stored in bedgen.json ("metrics": a list; older checkpoints hold one dict)."""
    records = description.get("metrics")
    if isinstance(records, dict):
        records = [records] if records else []
    return [r for r in records or [] if isinstance(r, dict) and ("fid" in r or "kid" in r or "is" in r)]


def training_datasets(description: dict[str, Any]) -> list[str]:
    """Hub dataset ids the model was trained on (a local folder or LMDB is not one)."""
    data = description.get("data") or {}
    source = data.get("source")
    if data.get("kind") == "shards":  # prepared shards remember what they were made from
        prepared = data.get("prepared") or {}
        data, source = prepared, prepared.get("source")
    if data.get("kind") == "huggingface" and isinstance(source, str) and _HUB_ID.match(source):
        return [source]
    return []


def _dataset_id(record: dict[str, Any]) -> str | None:
    source = (record.get("reference") or {}).get("source")
    return source if isinstance(source, str) and _HUB_ID.match(source) else None


def _reference_name(record: dict[str, Any]) -> str:
    reference = record.get("reference") or {}
    source = reference.get("source") or reference.get("path") or "reference statistics"
    return str(source)


def _intro(inputs: CardInputs) -> str:
    config = inputs.description.get("config") or {}
    kind = FAMILY_TEXT.get(inputs.family, f"{inputs.family} model")
    preset = f" from the `{config['preset']}` preset" if config.get("preset") else ""
    lines = [
        f"# {inputs.repo_id.split('/')[-1]}",
        "",
        f"An unconditional {kind} of bedroom scenes at {inputs.resolution}×{inputs.resolution} px, "
        f"trained with bedgen{preset}.",
    ]
    distill = config.get("distill") or {}
    teacher = distill.get("teacher") if inputs.family in ("consistency", "progressive") else None
    if teacher and inputs.family == "consistency":
        lines.append(f"It was distilled from the diffusion model `{teacher}` by consistency distillation "
                     "(Song et al. 2023) and samples in 1-4 steps (`bedgen sample --steps 2`, or diffusers' "
                     "`ConsistencyModelPipeline`).")
    elif teacher:
        steps = distill.get("final_steps", 1)
        lines.append(f"It was distilled from the diffusion model `{teacher}` by progressive distillation "
                     f"(Salimans & Ho 2022, from {distill.get('start_steps')} DDIM steps) and samples in {steps} "
                     f"DDIM step{'s' if steps != 1 else ''} (`bedgen sample --steps {steps}`, or diffusers' "
                     "`DDIMPipeline` / `LDMPipeline`).")
    training = inputs.description.get("training") or {}
    if training.get("step") is not None:
        lines.append(f"This is the EMA checkpoint of step {training['step']}"
                     + (f" ({training['images_seen']:,} images seen)." if training.get("images_seen") else "."))
    if inputs.samples is not None:
        s = inputs.samples
        lines += ["", f"![samples]({s.file})", "",
                  f"*Seeds {s.seeds[0]}–{s.seeds[1]}, sampler `{s.sampler}`, {s.steps} steps ({s.placement}).*"]
    return "\n".join(lines)


def _results(inputs: CardInputs) -> str:
    records = metric_records(inputs.description)
    if not records:
        ref = _ref(inputs)
        return ("## Results\n\nNot evaluated. Measure FID/KID against reference statistics of the training data "
                f"and push again:\n\n```bash\nbedgen ref-stats --data DATA --resolution {inputs.resolution} "
                f"--out ref.npz\nbedgen eval --model CHECKPOINT --ref ref.npz -n 10000\nbedgen push --model CHECKPOINT "
                f"--repo {ref}\n```")
    header = ("| FID | KID × 10³ | IS | precision / recall | samples | measured against | sampler | steps | "
              "resolution | step |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [_result_row(r) for r in records]
    return "## Results\n\n" + header + "\n" + "\n".join(rows) + (
        "\n\nFID and KID use the standard Inception network (torch-fidelity's `inception-v3-compat`); lower is "
        "better. Numbers are comparable only with the same reference statistics, sample count and preprocessing.")


def _result_row(r: dict[str, Any]) -> str:
    def num(value: Any, fmt: str, scale: float = 1.0) -> str:
        return format(value * scale, fmt) if isinstance(value, (int, float)) else "–"

    kid = num(r.get("kid"), ".2f", 1e3) + (f" ± {num(r.get('kid_std'), '.2f', 1e3)}" if "kid_std" in r else "")
    pr = f"{num(r.get('precision'), '.3f')} / {num(r.get('recall'), '.3f')}" if "precision" in r else "–"
    reference = r.get("reference") or {}
    ref_text = _reference_name(r)
    details = [f"{reference['count']:,} images" if isinstance(reference.get("count"), int) else None,
               f"{reference['resolution']} px" if reference.get("resolution") else None,
               f"square={reference['square']}" if reference.get("square") else None,
               f"Inception {reference['feature_layer']}" if reference.get("feature_layer") else None]
    details_text = ", ".join(d for d in details if d)
    ref_cell = f"`{ref_text}`" + (f" ({details_text})" if details_text else "")
    return (f"| {num(r.get('fid'), '.2f')} | {kid} | {num(r.get('is'), '.2f')} | {pr} | {r.get('num_samples', '–')} | "
            f"{ref_cell} | {r.get('sampler', '–')} | {r.get('steps', '–')} | {r.get('resolution', '–')} | "
            f"{r.get('checkpoint_step', '–')} |")


def _ref(inputs: CardInputs) -> str:
    return inputs.repo_id + (f" --revision {inputs.revision}" if inputs.revision else "")


def _usage(inputs: CardInputs) -> str:
    rev_arg = f', revision="{inputs.revision}"' if inputs.revision else ""
    ref = inputs.repo_id + (f"@{inputs.revision}" if inputs.revision else "")
    config = inputs.description.get("config") or {}
    steps = (config.get("sampling") or {}).get("steps", 20)
    if inputs.pipeline_class is None:  # a vae: no diffusers pipeline, the network in vae/
        diffusers_code = (f'import torch\nfrom diffusers import AutoencoderKL\n\nvae = AutoencoderKL.from_pretrained('
                          f'"{inputs.repo_id}", subfolder="vae"{rev_arg})\nz = torch.randn(1, vae.config.latent_channels, '
                          f'{inputs.resolution // 4}, {inputs.resolution // 4})  # f = 4 here; see vae/config.json\n'
                          f'image = vae.decode(z).sample  # in [-1, 1]')
    else:
        if inputs.pipeline_class == "DDPMPipeline":  # ancestral sampling over the whole training schedule
            steps = (config.get("diffusion") or {}).get("num_train_timesteps", 1000)
        steps_arg = f"num_inference_steps={steps}"
        diffusers_code = (f'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained('
                          f'"{inputs.repo_id}"{rev_arg})  # {inputs.pipeline_class}\nimage = pipe({steps_arg}).images[0]')
    return "\n".join([
        "## How to use",
        "",
        "With diffusers (no bedgen needed):",
        "",
        "```python",
        diffusers_code,
        "```",
        "",
        "With bedgen (any of its samplers, per-image seeds, the app):",
        "",
        "```bash",
        f"bedgen sample --model {ref} -n 4 --seed 0 --out samples/",
        f"BEDGEN_DEFAULT_MODEL={ref} python app.py",
        "```",
        "",
        "```python",
        "import bedgen",
        "",
        f'pipe = bedgen.load("{ref}")',
        "images = pipe.generate(4, seed=0)  # PIL images; image i comes from seed 0 + i",
        "```",
    ])


def _preprocessing(inputs: CardInputs) -> str:
    config = inputs.description.get("config") or {}
    data = config.get("data") or {}
    square = data.get("square", "crop")
    how = "center-cropped to a square" if square == "crop" else "padded with white to a square"
    lines = [
        "## Preprocessing the model expects",
        "",
        f"Images (training data, and inputs of interpolation or reconstruction) are turned upright from EXIF, "
        f"converted to RGB (transparency composited on white), {how}, resized to {inputs.resolution}×{inputs.resolution} "
        "with bicubic filtering and scaled to [-1, 1] (`x / 127.5 - 1`). Outputs are in the same range.",
    ]
    if data:
        lines.append(f"Training used random horizontal flips: {'yes' if data.get('flip', True) else 'no'}.")
    latent = config.get("latent") or {}
    if inputs.family == "ldm":
        lines.append(f"The diffusion runs on the latents of the autoencoder in `vqvae/` (downsampling "
                     f"f = {latent.get('downsample_factor', '?')}), multiplied by its `scaling_factor`.")
    return "\n".join(lines)


def _training(inputs: CardInputs) -> str:
    description = inputs.description
    config = description.get("config")
    if not config:
        return "## Training\n\nThis checkpoint carries no bedgen training description."
    data = description.get("data") or {}
    train = config.get("train") or {}
    facts = [
        ("family / preset", f"{config.get('family')} / {config.get('preset')}"),
        ("data", f"{data.get('kind', '?')} `{(config.get('data') or {}).get('source', '?')}`"
                 + (f", {data['images']:,} images" if isinstance(data.get("images"), int) else "")
                 + (f" (fraction {data['fraction']})" if data.get("fraction") not in (None, 1, 1.0) else "")),
        ("steps", (description.get("training") or {}).get("step")),
        ("batch size × accumulation", f"{train.get('batch_size')} × {train.get('grad_accum')}"),
        ("optimizer", f"{train.get('optimizer')}, lr {train.get('lr')}, {train.get('lr_schedule')} schedule, "
                      f"{train.get('warmup_steps')} warm-up steps"),
        ("EMA decay", train.get("ema_decay")),
        ("mixed precision", train.get("mixed_precision")),
    ]
    lines = ["## Training", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts if value not in (None, "")]
    if inputs.loss_curve:
        lines += ["", f"![training loss]({inputs.loss_curve})"]
    lines += ["", "<details><summary>Full training configuration (also in <code>bedgen.json</code>)</summary>", "",
              "```json", json.dumps(config, indent=2), "```", "", "</details>"]
    return "\n".join(lines)


def _resume(inputs: CardInputs) -> str:
    if not inputs.training_state:
        return ""
    ref = inputs.repo_id + (f"@{inputs.revision}" if inputs.revision else "")
    return ("## Resuming training\n\nThis repo includes `training_state/` (optimizer, EMA and schedule state, step, "
            "data position), so training continues exactly where it stopped:\n\n```bash\n"
            f"bedgen pull --model {ref} --out runs/resumed --include-training-state\n"
            "bedgen train --resume --out runs/resumed --data DATA\n```")


def _provenance(inputs: CardInputs) -> str:
    prov = inputs.description.get("provenance") or {}
    parts = [f"bedgen {prov.get('bedgen_version', __version__)}"]
    if prov.get("git_commit"):
        parts.append(f"commit `{prov['git_commit'][:12]}`")
    for name in ("torch_version", "diffusers_version"):
        if prov.get(name):
            parts.append(f"{name.split('_')[0]} {prov[name]}")
    created = f", saved {prov['created']}" if prov.get("created") else ""
    return "## Provenance\n\n" + ", ".join(parts) + created + ". Pushed with `bedgen push`."


__all__ = ["CardInputs", "SampleGrid", "metadata", "metric_records", "model_card", "training_datasets"]
