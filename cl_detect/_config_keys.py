"""Checks shared by every config: unknown keys and wrongly typed values are errors, an input size
must suit the detector's strides, a list of class names or prompts must be one distinct,
non-empty string per class, and synthetic-world settings must be the generator's."""
from __future__ import annotations

import dataclasses
import inspect
import numbers


_SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def is_integer(value) -> bool:
    """An int (numpy's included), not a bool: YAML reads `yes` as True, which is an int to Python."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float (numpy's included), not a bool and not a string such as "0.5"."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_keys_and_types(config_cls: type, data: dict | None, what: str) -> None:
    """Raise ValueError when `data` is not a mapping, naming the keys of `data` that `config_cls`
    has no field for, or a value whose type a plain `int` / `float` / `bool` / `str` field
    (optionally `| None`) cannot take.

    YAML gives `true` for a count or `"1e-3x"` for a rate without complaint; the dataclass would
    take them too and fail (or compare as text) steps later, far from the file.

    Args:
        config_cls: the dataclass the mapping becomes.
        data: the mapping (None counts as empty).
        what: how the message names the keys, e.g. "train setting(s)".
    """
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{what.rstrip(':')} must be a mapping (`key: value` lines or {{key: value}}), got "
                         f"{data!r} ({type(data).__name__})")
    fields = {f.name: f.type for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data or {}) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(fields)}")
    for key, value in (data or {}).items():
        kinds = [kind.strip() for kind in str(fields[key]).split("|")]
        if not set(kinds) <= {*_SIMPLE_TYPES, "None"} or (value is None and "None" in kinds):
            continue  # other annotations are the config's own to check
        if any(type(value) is _SIMPLE_TYPES[kind] for kind in kinds if kind != "None"):
            continue
        if "float" in kinds and type(value) is int:
            continue
        hint = "quote it" if "str" in kinds else "write a plain number or true/false, without quotes"
        raise ValueError(f"{key!r} ({what.rstrip(':')}) must be {' or '.join(kinds)}, got {value!r} "
                         f"({type(value).__name__}); {hint}")


LARGEST_STRIDE = 32  # YOLO-World's coarsest feature level (strides 8, 16, 32)


def check_image_size(size, name: str = "image_size") -> None:
    """Raise ValueError unless `size` is a positive multiple of the largest stride.

    The letterboxed input is square, so every level's map must halve evenly: at 500 the neck's
    upsampled 16x16 map meets a 15x15 one and fails deep in the network.
    """
    is_int = is_integer(size)
    if is_int and size >= LARGEST_STRIDE and size % LARGEST_STRIDE == 0:
        return
    hint = ""
    if is_int and size > 0:
        lower = max(size // LARGEST_STRIDE, 1) * LARGEST_STRIDE
        hint = f"; the nearest are {lower} and {lower + LARGEST_STRIDE}" if size > lower else f"; use {lower}"
    raise ValueError(f"{name} must be a positive multiple of {LARGEST_STRIDE} (the detector's largest stride), "
                     f"got {size!r}{hint}")


def check_names(names, where: str, what: str = "prompts", allow_repeats: bool = False) -> None:
    """Raise ValueError unless `names` is None or a list of distinct, non-empty strings, one per class.

    A protocol's prompts replace the class names in training and evaluation, so a comma
    string (read letter by letter), a YAML boolean (`yes` -> True), a list of synonyms, an empty
    or a repeated prompt (one text as positive and negative at once) would all train on
    something else than the user meant. `what` names the setting in the message.
    `allow_repeats`: sets that are only evaluated may repeat a prompt (YOLO-World's LVIS
    prompts name two LVIS classes "bow"), since each class is still scored as itself.
    """
    if names is None:
        return
    if isinstance(names, str):
        items = [n.strip() for n in names.split(",")]
        raise ValueError(f"{where}: {what} is the single string {names!r}; give a list, one name per class, "
                         f"e.g. {what}: {items}")
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{where}: {what} must be a list of strings, one per class, got {names!r}")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"{where}: {what} entry {index} is {name!r} ({type(name).__name__}), not a string; "
                             f"give one string per class and quote words YAML reads otherwise "
                             f"('yes', 'no', 'on', '1')")
    from cl_detect.data.doctor import check_vocabulary
    from cl_detect.data.records import Vocabulary
    problems = []

    def add(severity, code, message, fix=""):
        if not (allow_repeats and code == "duplicate_class_name"):
            problems.append(f"{message} ({fix})")

    check_vocabulary(Vocabulary(tuple(names)), f"{where} {what}", add)
    if problems:
        raise ValueError("; ".join(problems))


def check_synthetic_world(settings, also: tuple[str, ...] = ()) -> None:
    """Raise ValueError unless `settings` is a mapping of `write_synthetic_world`'s integer arguments
    (plus the keys in `also`, e.g. the pretrain config's `path`): a misspelt one would otherwise
    fail as a TypeError only when the world is written."""
    from cl_detect.data.synthetic import write_synthetic_world
    valid = sorted(set(inspect.signature(write_synthetic_world).parameters) - {"out_dir", "spec"})
    if not isinstance(settings, dict):
        raise ValueError(f"synthetic_world must be a mapping of {sorted([*valid, *also])}, got {settings!r}")
    unknown = sorted(set(settings) - set(valid) - set(also))
    if unknown:
        raise ValueError(f"unknown synthetic_world setting(s) {unknown}; valid: {sorted([*valid, *also])}")
    wrong = {key: value for key, value in settings.items() if key in valid and type(value) is not int}
    if wrong:
        raise ValueError(f"synthetic_world settings {sorted(wrong)} must be integers, got {wrong}")
