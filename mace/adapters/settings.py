"""The fine-tuning method and its settings, resolved once from flag values and the environment.

Precedence per setting: the flag's value, else the reference code's environment variable
(MMEA_RANK, MMEA_STD, MMEA_PHI), else the settings class default. Every problem is a
UserInputError that names the flag or variable at fault.
"""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from mace.adapters.config import Knob, knobs, older_meaning
from mace.adapters.registry import FINETUNING_DEFAULT, METHODS, NO_ADAPTER
from mace.core.errors import UserInputError


@dataclass(frozen=True)
class AdapterSettings:
    """The method and its settings object (None for a method without settings)."""

    method: str
    config: Any = None

    def record(self) -> Dict[str, Any]:
        """Plain data under the flag names (a checkpoint keeps it; a restart compares it)."""
        if self.config is None:
            return {"adapter": self.method}
        return {"adapter": self.method, **{knob.flag: getattr(self.config, name) for name, _, knob in knobs(type(self.config))}}

    def older_record(self) -> Dict[str, Any]:
        """What a record (a checkpoint's) written before one of these settings existed meant
        for it, under the flag names: a restart compares against that, not against nothing."""
        if self.config is None:
            return {}
        meanings = older_meaning(type(self.config))
        return {knob.flag: meanings[name] for name, _, knob in knobs(type(self.config)) if name in meanings}


def _env_text(environ: Mapping[str, str], name: Optional[str]) -> Optional[str]:
    """A variable's value, with unset and blank both meaning 'not given'."""
    value = None if name is None else environ.get(name)
    return value.strip() if value is not None and value.strip() else None


def _from_environment(knob: Knob, text: str) -> Any:
    origin = f"environment variable {knob.env}"
    if knob.choices is not None:
        if text.lower() not in knob.choices:
            raise UserInputError(f"{origin}={text!r} is not one of {', '.join(knob.choices)}")
        return text.lower()
    try:
        return knob.kind(text)
    except ValueError:
        kind = "an integer" if knob.kind is int else "a number"
        raise UserInputError(f"{origin}={text!r} is not {kind}") from None


def _given_value(knob: Knob, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Tuple[Any, Optional[str]]:
    """(value, where it came from), or (None, None) when neither flag nor variable gives one."""
    if flags.get(knob.flag) is not None:
        return flags[knob.flag], f"--{knob.flag}"
    text = _env_text(environ, knob.env)
    if text is None:
        return None, None
    return _from_environment(knob, text), f"environment variable {knob.env}"


def _checked(value: Any, knob: Knob, origin: str) -> Any:
    if knob.check is not None and not knob.check.holds(value):
        raise UserInputError(f"{origin} must be {knob.check.words}, got {value}")
    return value


def _settings_object(settings_class: type, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    values, origins = {}, []
    for name, _, knob in knobs(settings_class):
        value, origin = _given_value(knob, flags, environ)
        if origin is not None:
            values[name] = _checked(value, knob, origin)
            origins.append(origin)
    try:
        return settings_class(**values)
    except ValueError as error:
        raise UserInputError(f"{', '.join(origins)}: {error}") from None


def _method(adapter: Optional[str], foundation_given: bool) -> str:
    """MMEA when fine-tuning, no adapter otherwise; adapters need a model to adapt."""
    if adapter is None:
        return FINETUNING_DEFAULT if foundation_given else NO_ADAPTER
    if adapter not in METHODS:
        raise UserInputError(f"--adapter {adapter} is unknown; choose one of {', '.join(METHODS)}")
    if adapter != NO_ADAPTER and not foundation_given:
        raise UserInputError(f"--adapter {adapter} needs --foundation_model: adapters fine-tune a pretrained model")
    return adapter


def resolve_adapter_settings(
    adapter: Optional[str], foundation_given: bool, flags: Mapping[str, Any], environ: Mapping[str, str]
) -> AdapterSettings:
    """The method (``adapter``, else the default for the run) and its settings from ``flags``
    (flag name without dashes -> value, None = not given) and ``environ``."""
    method = METHODS[_method(adapter, foundation_given)]
    _refuse_foreign_flags(method.name, method.settings_class, flags)
    if method.settings_class is None:
        return AdapterSettings(method.name)
    return AdapterSettings(method.name, _settings_object(method.settings_class, flags, environ))


def _refuse_foreign_flags(method: str, settings_class: Optional[type], flags: Mapping[str, Any]) -> None:
    """A setting flag of another method would be silently ignored: refuse it instead."""
    own = set() if settings_class is None else {knob.flag for _, _, knob in knobs(settings_class)}
    for flag, (_, knob) in adapter_knobs().items():
        if flag not in own and flags.get(flag) is not None:
            raise UserInputError(f"--{flag} does not apply to --adapter {method}")


def adapter_knobs() -> Dict[str, Tuple[Any, Knob]]:
    """Every knob of every method, by flag (methods share some: MMEA's low-rank updates take
    ELoRA's flags), with the default it has."""
    found: Dict[str, Tuple[Any, Knob]] = {}
    for method in METHODS.values():
        if method.settings_class is not None:
            for _, default, knob in knobs(method.settings_class):
                found.setdefault(knob.flag, (default, knob))
    return found
