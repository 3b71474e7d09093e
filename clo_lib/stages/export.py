"""`clo export RUN --to DIR`: a trained run as a folder ready to upload, which `from_pretrained` loads on its own;
`clo export RUN --gguf FILE`: the same model as one GGUF file for llama.cpp and Ollama (Llama-family models).

    clo export outputs/toy/toy-sw-clo-n32-s0 --to exported/toy-sw-clo
    huggingface-cli upload you/toy-sw-clo exported/toy-sw-clo        (the upload is yours: it needs the network)
    clo export outputs/toy/toy-sw-clo-n32-s0 --gguf exported/toy-sw-clo.q8_0.gguf --gguf-type q8_0
    llama-cli -m exported/toy-sw-clo.q8_0.gguf -p "..."                (llama.cpp; not run here: see the README)

The run's model/ may hold the whole model, only the trained tensors, or a LoRA adapter (clo_lib.modeling.models):
the export is always the full weights, the adapter merged and trained tensors filled into their base, in
`--dtype` (default: the dtype the run loaded its model in), with the tokenizer, the generation config and the run's
model card as README.md. A run that wrote its prompts with the base-model template (model.prompt_format: template)
and whose tokenizer has no chat template gets that template as its chat template, so `apply_chat_template` gives
the tokens the run trained and was evaluated on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clo_lib.artifacts.card import CARD
from clo_lib.common.errors import InputError, MissingInputError
from clo_lib.config.load import load_config
from clo_lib.modeling.gguf_writer import QTYPES, write_gguf
from clo_lib.modeling.models import MANIFEST, load_model_and_tokenizer, torch_dtype


def template_chat(template: str, adds_bos: bool) -> str:
    """A Jinja chat template that writes the last user message into a base-model `template` ({prompt} slot); the
    template's own text is kept raw, so braces in it are not read as Jinja."""
    before, _, after = template.partition("{prompt}")
    raw = "{% raw %}" + before + "{% endraw %}{{ messages[-1]['content'] }}{% raw %}" + after + "{% endraw %}"
    return ("{{ bos_token }}" if adds_bos else "") + raw


def check_run(run_dir: Path) -> None:
    """One sentence when `run_dir` is not a trained run with its model."""
    if not (run_dir / "config.yaml").is_file():
        raise MissingInputError(f"{run_dir} is not a run folder (no config.yaml); expected a trained run's folder, "
                                "such as outputs/toy/toy-sw-clo-n32-s0")
    if not (run_dir / "model" / MANIFEST).is_file():
        raise MissingInputError(f"{run_dir}/model holds no trained model ({MANIFEST} is missing); train the run "
                                "first (clo train, or its grid)")


def export_folder(run_dir: str | Path, to: str | Path, dtype: str | None = None) -> Path:
    """Write the run's model as a self-contained folder at `to` (see the module docstring); returns `to`."""
    run_dir, to = Path(run_dir), Path(to)
    check_run(run_dir)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise InputError(f"--to {to} exists and is not an empty folder; give a new folder, so nothing is overwritten")
    cfg, model, tokenizer = _load_run(run_dir)
    model = model.to(torch_dtype(dtype or cfg.model.dtype))
    for name in ("clo_base_model", "clo_base_revision", "clo_base_gguf_file", "clo_trained_names"):
        model.__dict__.pop(name, None)  # the kit's marks on the loaded model; the export is a plain model
    staging = to.with_name(to.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (run_dir / CARD).is_file():
        shutil.copyfile(run_dir / CARD, staging / "README.md")
    (staging / "clo_export.json").write_text(json.dumps({"run": str(run_dir), "prompt_format": cfg.model.prompt_format,
                                                        "prompt_template": cfg.model.prompt_template}, indent=1))
    if to.exists():
        to.rmdir()
    staging.rename(to)  # whole or not at all
    return to


def export_gguf(run_dir: str | Path, path: str | Path, qtype: str = "f16") -> Path:
    """Write the run's model as one GGUF file (clo_lib.modeling.gguf_writer: Llama-family models) in `qtype`, for
    llama.cpp and Ollama; transformers reads it back with `gguf_file=`."""
    run_dir, path = Path(run_dir), Path(path)
    check_run(run_dir)
    if path.exists():
        raise InputError(f"--gguf {path} exists; give a new file name, so nothing is overwritten")
    _, model, tokenizer = _load_run(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    write_gguf(model, tokenizer, staging, qtype, name=run_dir.name)
    staging.rename(path)
    return path


def _load_run(run_dir: Path):
    """The run's config, its model in full (any form of model/) and its tokenizer, which, for a template run
    without a chat template, gets the run's template as one."""
    cfg = load_config(run_dir / "config.yaml")
    model, tokenizer = load_model_and_tokenizer(cfg, run_dir / "model", backend="hf")
    if cfg.model.prompt_format == "template" and not getattr(tokenizer, "chat_template", None):
        adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
        tokenizer.chat_template = template_chat(cfg.model.prompt_template, adds_bos)
    return cfg, model, tokenizer


def add_arguments(parser) -> None:
    """`clo export RUN --to DIR [--dtype bfloat16]` (a folder `from_pretrained` loads alone) and/or
    `clo export RUN --gguf FILE [--gguf-type q8_0]` (one GGUF file for llama.cpp and Ollama; Llama-family models)."""
    parser.add_argument("run", help="a trained run's folder (with config.yaml and model/)")
    parser.add_argument("--to", help="a new folder for the export")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the run's model.dtype")
    parser.add_argument("--gguf", help="a new .gguf file")
    parser.add_argument("--gguf-type", choices=QTYPES, default="f16", help="f16 (default), q8_0 or f32")


def command(args) -> int:
    if not args.to and not args.gguf:
        raise InputError("clo export needs --to DIR, --gguf FILE or both")
    if args.to:
        print(export_folder(args.run, args.to, args.dtype))
    if args.gguf:
        print(export_gguf(args.run, args.gguf, args.gguf_type))
    return 0
