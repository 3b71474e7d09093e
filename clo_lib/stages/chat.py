"""`clo chat RUN`: talk to a trained run (or a base model) in the terminal, in the run's own prompt format.

    clo chat outputs/toy/toy-sw-clo-n32-s0                 # a run folder (its config.yaml and model/)
    clo chat outputs/toy/toy-sw-clo-n32-s0 --max-new-tokens 64

Each message is one turn, written as the run trained and was evaluated (its chat template, or the base-model
template); answers stream token by token and end with the language lingua hears in them, among English and the
run's target language (clo_lib.common.langid), the question CLO is about. Commands:
    /system TEXT     a system message for chat-format runs (/system alone clears it)
    /quit            leave (so do Ctrl-D and Ctrl-C)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from clo_lib.common.errors import InputError, MissingInputError
from clo_lib.common.langid import detect
from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.config.load import load_config
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import format_prompt
from clo_lib.stages.generate import continue_texts, load_for_eval

GREETING = "Type a message ({lang} or English); /system TEXT sets a system message, /quit leaves."


def prompt_text(message: str, tokenizer, cfg: RunConfig, system: str | None) -> str:
    """The text the model continues: the run's format, with the system message where the format has one."""
    if system and cfg.model.prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "system", "content": system},
                                              {"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return format_prompt(message, tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)


def answer(model, tokenizer, cfg: RunConfig, message: str, system: str | None = None, streamer=None,
           max_new_tokens: int | None = None) -> str:
    """One answer to `message` (streamed to `streamer` when given), generated as the evaluation generates."""
    return continue_texts(model, tokenizer, [prompt_text(message, tokenizer, cfg, system)], cfg,
                          max_new_tokens or cfg.eval.max_new_tokens, streamer)[0]


def chat_loop(model, tokenizer, cfg: RunConfig, lines: Iterable[str], write: Callable[[str], None],
              max_new_tokens: int | None = None) -> int:
    """The session: read messages from `lines`, stream answers through `write`; returns the number of answers."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text + ("\n" if stream_end else ""))

    codes = (SOURCE_LANGUAGE, cfg.language)
    system, answered = None, 0
    for line in lines:
        message = line.strip()
        if not message:
            continue
        if message in ("/quit", "/exit"):
            break
        if message.startswith("/system"):
            if cfg.model.prompt_format != "chat":
                write("This run writes prompts with the base-model template, which has no system message.\n")
                continue
            system = message[len("/system"):].strip() or None
            write(f"System message {'set' if system else 'cleared'}.\n")
            continue
        text = answer(model, tokenizer, cfg, message, system, Streamer(tokenizer, skip_prompt=True,
                                                                        skip_special_tokens=True), max_new_tokens)
        lang, confidence = detect(text, codes)
        write(f"[{lang or 'language undetermined'}{f' {confidence:.2f}' if lang else ''}]\n")
        answered += 1
    return answered


def load_run(target: str | Path, model: str | None = None):
    """The config and model of a run folder (or of a base model, given a config file and --model)."""
    target = Path(target)
    config = target / "config.yaml" if target.is_dir() else target
    if not config.is_file():
        raise MissingInputError(f"{target} is neither a run folder (no config.yaml) nor a config file; expected a "
                                "trained run's folder, such as outputs/toy/toy-sw-clo-n32-s0")
    cfg = load_config(config)
    path = Path(model) if model else (target / "model" if target.is_dir() else Path(cfg.model.name_or_path))
    if target.is_dir() and not model and not path.is_dir():
        raise MissingInputError(f"{path} does not exist; this run has no trained model yet (train it first), or "
                                "give --model for another one")
    loaded, tokenizer = load_for_eval(cfg, path)
    return cfg, loaded, tokenizer


def add_arguments(parser) -> None:
    """`clo chat RUN [--model PATH] [--max-new-tokens N]`: a terminal chat with a run, in its prompt format."""
    parser.add_argument("run", help="a run folder (config.yaml and model/), or a config file with --model")
    parser.add_argument("--model", help="another model for the run's settings, e.g. its base model")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer (default: the run's eval.max_new_tokens)")


def command(args) -> int:
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens = {args.max_new_tokens}; expected a whole number of at least 1")
    cfg, model, tokenizer = load_run(args.run, args.model)
    print(GREETING.format(lang=cfg.language))

    def lines():
        while True:
            try:
                yield input("> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return

    try:
        chat_loop(model, tokenizer, cfg, lines(), lambda text: print(text, end="", flush=True), args.max_new_tokens)
    except KeyboardInterrupt:  # Ctrl-C during an answer: leave cleanly too
        print()
    return 0
