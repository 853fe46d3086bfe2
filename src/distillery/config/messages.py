"""Config validation messages: one paragraph naming every bad key, for every engine's config.

:func:`validate_config` validates a raw dict against a root pydantic class and turns a failure
into a :class:`~distillery.errors.ConfigError` whose message names each bad key by its dotted
path, lists the allowed keys of a section that got an unknown one, names the wrong value, and
says when a number was written in quotes. The classifier engine's schema, the generative and
the sequence engines all use it (this module imports none of them).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError


def validate_config(root: type[Any], raw: Any, source: str = "config", *, union_tags: bool = False) -> Any:
    """``root.model_validate(raw)``; a failure is a ConfigError naming every bad key (see
    :func:`format_validation_error`). The engines validate their root config with it."""
    try:
        return root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root, union_tags=union_tags)) from None


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel], *, union_tags: bool = False) -> str:
    """``Invalid config (source): key.path: message; ...`` for a failed validation of ``root``."""
    return f"Invalid config ({source}): " + describe_validation_error(exc, root, union_tags=union_tags) + "."


def describe_validation_error(exc: ValidationError, root: type[BaseModel], *, union_tags: bool = False) -> str:
    """Every error of ``exc`` as ``key.path: message``, joined by ``; ``: an unknown key lists
    the allowed keys of its section (looked up from ``root``), a wrong scalar names the value given
    (and a quoted number says so). With ``union_tags`` (the classifier engine's RunConfig) the
    union tags of the registered sections (a teacher's ``kind``) are left out of the path; an
    engine's root keeps every key name (its sections are not those unions)."""
    tags = registry_tags() if union_tags else frozenset()
    prefixes = _TAG_PREFIXES if union_tags else (*_TAG_PREFIXES, "literal[")
    lines = []
    errors = exc.errors()
    # drop the union tags pydantic inserts (e.g. 'frozen' for the discriminated teacher)
    paths = [_strip_tags([str(p) for p in err["loc"]], tags, prefixes) for err in errors]
    for err, path_parts in zip(errors, paths):
        loc = [str(p) for p in err["loc"]]
        siblings = sum(1 for other in paths if other[: len(path_parts)] == path_parts) > 1
        if siblings and _other_branch(err):
            continue  # "weight: 0.5 | {kind: ...}": the error of the branch the value's shape selects is the useful one
        path = ".".join(path_parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(_strip_tags(loc[:-1], tags, prefixes), [p for p in loc if p in tags], root)
            msg = f"unknown key{'; allowed keys: ' + ', '.join(allowed) if allowed else ''}"
        elif "input" in err and err["type"] not in ("missing", "value_error") and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r}){_quoted_number_hint(err)}"
        lines.append(f"{path or '<top>'}: {msg}")
    return "; ".join(lines)


_SCALAR_TYPES = ("float_type", "int_type", "bool_type", "string_type", "tuple_type", "list_type")
_MAPPING_TYPES = ("model_attributes_type", "model_type", "dict_type")


def _other_branch(err: Any) -> bool:
    """Whether ``err`` comes from the member of a union ``number | section`` that the value's
    shape does not select: a number's branch seeing a mapping, or a section's seeing a number."""
    if isinstance(err.get("input"), dict):
        return err["type"] in _SCALAR_TYPES
    return err["type"] in _MAPPING_TYPES


def _quoted_number_hint(err: Any) -> str:
    """For a string where a number belongs, when the string reads as one: say that it is quoted."""
    value = err.get("input")
    if err["type"] not in ("float_type", "int_type") or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f"; a number in quotes is a string: write {value} without quotes"


def registry_tags() -> frozenset[str]:
    """The labels pydantic puts into an error's location for a union member of the classifier
    config (the ``kind`` of a tagged teacher/weighting section, the type of a plain one); they
    are left out of the key path a message names."""
    from ..registry import TEACHERS, WEIGHTINGS

    return frozenset({*(name for registry in (TEACHERS, WEIGHTINGS) for name, cls in registry.sections() if "kind" in cls.model_fields),
                      "float", "int", "str", "bool", "list[dict[str,any]]"})


_TAG_PREFIXES = ("function-", "tagged-union", "union[", "constrained-", "tuple[", "list[", "dict[", "nullable[")


def _strip_tags(loc: list[str], tags: Any, prefixes: tuple[str, ...] = _TAG_PREFIXES) -> list[str]:
    return [p for p in loc if p not in tags and not p.startswith(prefixes)]


def _allowed_keys(path: list[str], tags: list[str], root: Any) -> list[str]:
    """Field names of the config section at ``path`` below ``root`` (best effort, for error
    messages); ``tags``: the union tags of the error's location, which pick a union's member."""
    model: Any = root
    for part in path:
        if part.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation, tags)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def _model_of(annotation: Any, tags: list[str]) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg, tags)
        if found is not None:
            kind = getattr(found, "model_fields", {}).get("kind")
            if kind is not None and tags:
                options = typing.get_args(kind.annotation)
                if tags[0] not in options:
                    continue
            return found
    return None
