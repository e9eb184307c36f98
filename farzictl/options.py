"""Command options built from config dataclasses (:mod:`farzi.settings`): one option per setting.

:func:`config_command` registers a command whose options are its function's own parameters plus one
per setting of a config class: the option's name, type, default and help come from the field
(``recipe_lr`` -> ``--recipe-lr``; an enum lists its choices, a boolean is ``--x/--no-x``), and a
mapping setting with ``keys`` (``model_overrides``) gets an option per key (``--max-len``, ...). The
function receives, in ``flags``, the settings the user gave on the command line (by flat name;
the model settings as one mapping), for :func:`farzi.presets.command_settings` to merge. A function
parameter named as a setting (``seed``, ``device`` with their shared options) replaces the
generated option and reaches ``flags`` the same way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from farzi.models import MODEL_OPTIONS
from farzi.settings import Setting, settings_of
from farzictl import session, ui


def _option(s: Setting) -> inspect.Parameter:
    default = s.default.value if isinstance(s.default, Enum) else s.default
    return inspect.Parameter(
        s.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=s.default,
        annotation=Annotated[
            s.kind | None if s.optional else s.kind,
            typer.Option(help=s.help, show_default=str(default) if default not in ("", None) else False),
        ],
    )


def _key_option(key: str) -> inspect.Parameter:
    kind, help_text = MODEL_OPTIONS[key]
    return inspect.Parameter(
        key,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, typer.Option(help=help_text)],
    )


def config_command(app: typer.Typer, name: str, config: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as command ``name`` with one option per setting of ``config``
    (see the module's docstring); library errors become one line (:func:`farzictl.ui.handle_errors`)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = dict(inspect.signature(fn, eval_str=True).parameters)
        own.pop("flags")
        settings = {s.name: s for s in settings_of(config) if s.cli}
        generated = [_option(s) for n, s in settings.items() if s.kind is not dict and n not in own]
        owner = {k: s.name for s in settings.values() if s.kind is dict for k in s.meta.get("keys", ())}
        generated += [_key_option(k) for k in owner if k not in own]
        ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        params = [ctx_param, *own.values(), *generated]
        mine = {p.name for p in generated}
        named = [n for n in own if n in settings]  # seed, device: the function's own (shared) options

        @functools.wraps(fn)
        def command(ctx: typer.Context, **kwargs: Any) -> Any:
            flags: dict[str, Any] = {}
            for key in [*mine, *named]:
                value = kwargs.pop(key) if key in mine else kwargs[key]
                if key in owner:  # a key of a mapping setting (--d-model of model_overrides)
                    if value is not None:
                        flags.setdefault(owner[key], {})[key] = value
                elif session.given(ctx, key):
                    flags[key] = value
            return fn(**kwargs, flags=flags)

        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p is not ctx_param else p for p in params]
        )
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer reads the signature above, not fn's
        app.command(name)(ui.handle_errors(command))
        return fn

    return register
