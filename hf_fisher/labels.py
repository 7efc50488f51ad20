"""Aligning a dataset's labels with a model's class ids: by name, by a given mapping, or as ids.

An ``imagefolder`` numbers its classes by sorted folder name, a Hub dataset by its own
``ClassLabel`` order, and a model by its ``id2label``: the three orders rarely agree. Taking a
dataset's integer label as the model's class id silently scores a model against the wrong
classes (wrong accuracy, wrong ``correct`` flags, wrong per-class tables). So wherever the
dataset names its labels (a ``ClassLabel`` feature or a string column), the names are matched
to the model's ``id2label``; integer labels without names are taken as the model's ids.

Name matching is exact first, then insensitive to case and to everything that is not a letter
or digit (so the folder ``T-shirt_top`` matches the label ``T-shirt/top``). When the names do
not all match, :func:`align_labels` refuses, unless ``label_mapping`` says how: a dict from the
model's label name to the dataset's label (its integer id or its name), the meaning
``label_mapping`` has in ``evaluate``'s evaluators (``{"NEGATIVE": 0, "POSITIVE": 1}``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_fisher.errors import DatasetError

logger = logging.getLogger(__name__)

SOURCES = ("by-name", "given", "ids")
"""How a :class:`LabelAlignment` was derived (recorded as ``dataset.label_mapping_source``)."""

_GENERIC = re.compile(r"(?:label|class)(\d+)")
_SHOWN = 12


def normalize_label(name: str) -> str:
    """The form names are compared in when they differ exactly: case-folded, alphanumerics only.

    >>> normalize_label("T-shirt/top"), normalize_label("t_shirt top"), normalize_label("Bag")
    ('tshirttop', 'tshirttop', 'bag')
    """
    return "".join(character for character in str(name).casefold() if character.isalnum())


@dataclass(frozen=True)
class LabelAlignment:
    """How the dataset's label values become the model's class ids.

    Attributes:
        to_model: dataset label value as rows hold it (a ``ClassLabel`` id, a string, or an
            integer) -> model class id; None means integer labels are the model's ids.
        recorded: what results.json records: dataset label name (or the integer as a string)
            -> model class id; None when integer labels are the model's ids.
        source: "by-name", "given" or "ids".
    """

    to_model: dict[Any, int] | None
    recorded: dict[str, int] | None
    source: str

    def model_id(self, value: Any, column: str | None = None) -> int | list:
        """The model's class id of one row's label value (a list for a multi-label row).

        Integers outside the mapping (a ``-1`` "no label" entry) pass through unchanged so
        that the runner's range check names them. A list of names is mapped name by name; a
        list of numbers (class ids or a multi-hot vector) is kept for :func:`label_set`.

        Raises:
            DatasetError: a label that is neither an integer nor a mapped name.
        """
        if isinstance(value, (list, tuple)):
            if self.to_model is None:
                return list(value)
            return [self.model_id(item, column) for item in value]
        if self.to_model is not None and value in self.to_model:
            return self.to_model[value]
        if _is_integer(value):
            return int(value)
        raise DatasetError(
            f"label {value!r} in column {column!r} is not one of the dataset labels "
            f"{_listed(self.recorded or {})} that were matched to the model's classes; fix the "
            "label or pass --label-mapping"
        )


def label_set(label: Sequence[Any], num_classes: int, multi_hot: bool) -> list[int]:
    """The sorted class ids of a multi-label row: class ids, or a multi-hot vector.

    With ``multi_hot`` (numeric labels, not names), a list of ``num_classes`` zeros and ones
    is a multi-hot vector (Hugging Face's multi-label targets, ints or floats); anything else
    is a list of class ids.

    >>> label_set([0.0, 1.0, 1.0], 3, multi_hot=True), label_set([2, 0], 3, multi_hot=True)
    ([1, 2], [0, 2])
    """
    values = list(label)
    binary = all(not isinstance(v, bool) and v in (0, 1) for v in values)
    if multi_hot and len(values) == num_classes and binary:
        return [index for index, value in enumerate(values) if value == 1]
    bad = [value for value in values if not _is_integer(value) and not float(value).is_integer()]
    if bad:
        raise DatasetError(
            f"multi-label row {values!r:.80} holds {bad[:3]}: pass class names, class ids, or a "
            f"multi-hot vector of {num_classes} zeros and ones"
        )
    return sorted({int(value) for value in values})


def _is_integer(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _listed(names: Sequence[str] | Mapping[str, Any]) -> str:
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return f"[{shown}{more}]"


def read_label_mapping(text: str) -> dict[str, Any]:
    """Parse ``--label-mapping``: a JSON object, or the path of a ``.json`` file holding one.

    Raises:
        DatasetError: unreadable file or invalid JSON.

    >>> read_label_mapping('{"Bag": 0, "Coat": "coat"}')
    {'Bag': 0, 'Coat': 'coat'}
    """
    path = Path(text).expanduser()
    looks_like_path = not text.lstrip().startswith(("{", "["))
    if looks_like_path:
        if not path.is_file():
            raise DatasetError(
                f"--label-mapping {text!r} is neither a JSON object nor an existing .json file; "
                'pass e.g. \'{"Ankle boot": "ankle_boot"}\' (model label -> dataset label)'
            )
        text = path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"the file {str(path)!r}" if looks_like_path else "--label-mapping"
        raise DatasetError(f"{where} is not valid JSON ({error})") from error
    return check_label_mapping(mapping)


def check_label_mapping(mapping: Any) -> dict[str, Any] | None:
    """Check the shape of ``label_mapping`` (before any model is loaded); return it as a dict.

    Raises:
        DatasetError: not a dict of label names to integer ids or names.
    """
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping) or not mapping:
        raise DatasetError(
            f"label_mapping must be a non-empty dict from the model's label names to the "
            f"dataset's labels (ids or names), got {mapping!r:.80}"
        )
    checked = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise DatasetError(
                f"label_mapping key {key!r} is not a string; keys are the model's label names "
                "(its id2label values)"
            )
        integral = isinstance(value, float) and math.isfinite(value) and value == int(value)
        if integral:
            value = int(value)  # evaluate's docs write dataset ids as floats (0.0, 1.0)
        if not (_is_integer(value) or isinstance(value, str)):
            raise DatasetError(
                f"label_mapping[{key!r}] is {value!r}; values are the dataset's labels, as "
                "integer ids or names"
            )
        checked[key] = value
    return checked


def _model_index(id2label: Mapping[int, str]) -> tuple[dict[str, int], dict[str, int], bool]:
    """Exact and normalised name -> id lookups (ambiguous names left out), and genericity.

    A model is generic when it has no names (a plain module) or every name is ``LABEL_<id>`` /
    ``class_<id>`` (any case or separator): its names carry no meaning beyond the ids, so a
    dataset's integer-named classes (``"0"``, ``"10"``) match them by number.
    """
    exact: dict[str, int] = {}
    normal: dict[str, int] = {}
    seen_exact = Counter(id2label.values())
    seen_normal = Counter(normalize_label(name) for name in id2label.values())
    for model_id, name in id2label.items():
        if seen_exact[name] == 1:
            exact[name] = int(model_id)
        if seen_normal[normalize_label(name)] == 1:
            normal[normalize_label(name)] = int(model_id)
    generic = all(
        (match := _GENERIC.fullmatch(normalize_label(name))) is not None
        and int(match.group(1)) == int(model_id)
        for model_id, name in id2label.items()
    )
    if generic:
        for model_id in id2label:
            normal.setdefault(str(int(model_id)), int(model_id))
    return exact, normal, generic


def _match_name(name: str, exact: Mapping[str, int], normal: Mapping[str, int]) -> int | None:
    if name in exact:
        return exact[name]
    return normal.get(normalize_label(name))


def align_labels(
    id2label: Mapping[int, str],
    *,
    names: Sequence[str] | None = None,
    values: Sequence[Any] | None = None,
    label_mapping: Mapping[str, Any] | None = None,
) -> LabelAlignment:
    """Decide how dataset labels become model ids; refuse when that cannot be known.

    Args:
        id2label: the model's class id -> name.
        names: the dataset's ``ClassLabel`` names (rows hold their positions), if it has them.
        values: otherwise, the distinct label values of the column (strings or integers).
        label_mapping: model label name -> dataset label (id or name), as in ``evaluate``.

    Returns:
        The alignment; its ``source`` says how it was derived.

    Raises:
        DatasetError: names that match no model class (listing them and the model's names),
            an invalid ``label_mapping``, or two dataset labels sent to one model class.

    >>> align_labels({0: "cat", 1: "dog"}, names=["Dog", "cat"]).to_model
    {0: 1, 1: 0}
    >>> align_labels({0: "LABEL_0", 1: "LABEL_1"}, values=[0, 1]).source
    'ids'
    """
    label_mapping = check_label_mapping(label_mapping)
    exact, normal, generic = _model_index(id2label)
    domain = _label_domain(names, values)
    named = _is_named(names, domain)
    model_names = [id2label[key] for key in sorted(id2label)]
    to_model: dict[Any, int] = {}
    if label_mapping:
        to_model = _given(label_mapping, id2label, exact, normal, domain, names is not None)
    elif not named:
        return LabelAlignment(None, None, "ids")
    unmatched = _match_by_name(domain, to_model, exact, normal, named)
    if unmatched and not label_mapping and generic and names is not None:
        return _generic_ids(model_names, names)
    if unmatched:
        raise _unmatched_error(unmatched, model_names)
    _check_one_to_one(to_model, domain, id2label)
    recorded = {domain.get(value, str(value)): model_id for value, model_id in to_model.items()}
    return LabelAlignment(to_model, recorded, "given" if label_mapping else "by-name")


def _label_domain(names: Sequence[str] | None, values: Sequence[Any] | None) -> dict[Any, str]:
    """Every dataset label value -> its name: ClassLabel positions, else the column's values."""
    if names is not None:
        return {position: str(name) for position, name in enumerate(names)}
    return {value: str(value) for value in (values or ()) if value is not None}


def _is_named(names: Sequence[str] | None, domain: Mapping[Any, str]) -> bool:
    """Whether the dataset names its labels (a ClassLabel or any string value), so match by name."""
    return names is not None or any(isinstance(value, str) for value in domain)


def _match_by_name(
    domain: Mapping[Any, str],
    to_model: dict[Any, int],
    exact: Mapping[str, int],
    normal: Mapping[str, int],
    named: bool,
) -> list[str]:
    """Add to ``to_model`` every label not yet mapped whose name matches; return the rest."""
    unmatched = []
    for value, name in domain.items():
        if value in to_model:
            continue
        model_id = _match_name(name, exact, normal) if named else None
        if model_id is None:
            unmatched.append(name)
        else:
            to_model[value] = model_id
    return unmatched


def _generic_ids(model_names: Sequence[str], names: Sequence[str]) -> LabelAlignment:
    """Generic model labels cannot be matched by name: take ClassLabel ids as model ids, loudly."""
    logger.warning(
        "the model's labels are generic (%s), so the dataset's label names %s cannot be "
        "matched to them: taking the dataset's ClassLabel ids as the model's class ids. "
        "Pass --label-mapping if that is not the model's order",
        f"{model_names[0]}, ..." if model_names else "it has no id2label",
        _listed(names),
    )
    recorded = {str(name): position for position, name in enumerate(names)}
    return LabelAlignment(None, recorded, "ids")


def _unmatched_error(unmatched: Sequence[str], model_names: Sequence[str]) -> DatasetError:
    """The refusal for dataset names that match no model label, with a mapping to copy."""
    if not model_names:
        return DatasetError(
            f"dataset labels {_listed(unmatched)} are names, but the model has no label "
            "names (id2label) to match them to; use integer labels in the model's order"
        )
    return DatasetError(
        f"dataset labels {_listed(unmatched)} match none of the model's labels "
        f"{_listed(model_names)} (compared exactly, then ignoring case and punctuation); "
        "pass --label-mapping / label_mapping= as a JSON object from the model's label "
        f'to the dataset\'s label, e.g. {{"{model_names[0]}": "{unmatched[0]}"}}'
    )


def _given(
    label_mapping: Mapping[str, Any],
    id2label: Mapping[int, str],
    exact: Mapping[str, int],
    normal: Mapping[str, int],
    domain: Mapping[Any, str],
    class_label: bool,
) -> dict[Any, int]:
    """Resolve a user's model-label -> dataset-label dict to dataset value -> model id.

    ``domain`` is every label a ``ClassLabel`` has, or the values a column holds (a batch of
    references may lack some classes, so a value it does not hold is not an error).
    """
    kind = _domain_kind(domain, class_label)
    by_name = {name: value for value, name in domain.items()}
    by_normal = _normal_index(domain)
    resolved: dict[Any, int] = {}
    owners: dict[Any, str] = {}
    for key, target in label_mapping.items():
        model_id = _mapping_key_id(key, id2label, exact, normal, by_name, by_normal)
        value = _dataset_value(key, target, kind, by_name, by_normal, len(domain))
        _check_unowned(value, key, owners, domain)
        owners[value] = key
        resolved[value] = model_id
    _check_ids_complete(kind, domain, resolved)
    return resolved


def _domain_kind(domain: Mapping[Any, str], class_label: bool) -> str:
    """What the dataset's labels are: ClassLabel ids ("class"), "names" or plain "ids"."""
    if class_label:
        return "class"
    return "names" if any(isinstance(value, str) for value in domain) else "ids"


def _normal_index(domain: Mapping[Any, str]) -> dict[str, list[Any]]:
    """Normalised dataset label name -> the label values that have it."""
    by_normal: dict[str, list[Any]] = {}
    for value, name in domain.items():
        by_normal.setdefault(normalize_label(name), []).append(value)
    return by_normal


def _mapping_key_id(
    key: str,
    id2label: Mapping[int, str],
    exact: Mapping[str, int],
    normal: Mapping[str, int],
    by_name: Mapping[str, Any],
    by_normal: Mapping[str, list[Any]],
) -> int:
    """The model class id a ``label_mapping`` key names; refuse a key that is no model label."""
    model_id = _match_name(key, exact, normal)
    if model_id is not None:
        return model_id
    hint = (
        f" ({key!r} is a dataset label: the mapping goes from the model's label to the "
        "dataset's label, as in evaluate's evaluators)"
        if key in by_name or normalize_label(key) in by_normal
        else ""
    )
    raise DatasetError(
        f"label_mapping key {key!r} is not one of the model's labels "
        f"{_listed([id2label[k] for k in sorted(id2label)])}{hint}"
    )


def _check_unowned(
    value: Any, key: str, owners: Mapping[Any, str], domain: Mapping[Any, str]
) -> None:
    """Refuse a ``label_mapping`` that sends two model labels to one dataset label."""
    if value in owners:
        raise DatasetError(
            f"label_mapping sends both {owners[value]!r} and {key!r} to the dataset label "
            f"{domain.get(value, value)!r}; each dataset label needs one model label"
        )


def _check_ids_complete(kind: str, domain: Mapping[Any, str], resolved: Mapping[Any, int]) -> None:
    """Integer dataset labels cannot be matched by name, so the mapping must cover them all."""
    missing = [name for value, name in domain.items() if value not in resolved]
    if kind == "ids" and missing:
        raise DatasetError(
            f"the dataset's integer labels {_listed(missing)} are not in label_mapping; give "
            "every dataset label a model label"
        )


def _dataset_value(
    key: str,
    target: int | str,
    kind: str,
    by_name: Mapping[str, Any],
    by_normal: Mapping[str, list[Any]],
    size: int,
) -> Any:
    """The row value a ``label_mapping`` target names: a ClassLabel id, a name, an integer."""
    where = f"label_mapping[{key!r}] = {target!r}"
    if isinstance(target, str):
        if kind == "ids" and by_name:
            raise DatasetError(f"{where}: the dataset's labels are integers, so map to an integer")
        candidates = (
            [by_name[target]] if target in by_name else by_normal.get(normalize_label(target), [])
        )
        if len(candidates) == 1:
            return candidates[0]
        if kind == "class" or candidates:
            raise DatasetError(f"{where} is not one of the dataset's labels {_listed(by_name)}")
        return target
    if kind == "names":
        raise DatasetError(f"{where}: the dataset's labels are names {_listed(by_name)}")
    if kind == "class" and not 0 <= target < size:
        raise DatasetError(
            f"{where} is outside the dataset's ClassLabel ids [0, {size}); use an id or a name "
            f"of {_listed(by_name)}"
        )
    return int(target)


def _check_one_to_one(
    to_model: Mapping[Any, int], domain: Mapping[Any, str], id2label: Mapping[int, str]
) -> None:
    """Two dataset labels matched to one model class is a naming clash, not a choice."""
    owners: dict[int, str] = {}
    for value, model_id in to_model.items():
        if model_id in owners:
            raise DatasetError(
                f"dataset labels {owners[model_id]!r} and {domain.get(value, value)!r} both match "
                "the "
                f"model's label {id2label[model_id]!r}; rename one, or map them apart with "
                "--label-mapping"
            )
        owners[model_id] = domain.get(value, str(value))


__all__ = [
    "SOURCES",
    "LabelAlignment",
    "align_labels",
    "check_label_mapping",
    "normalize_label",
    "read_label_mapping",
]
