"""Splice our ``model-index`` group into a card's YAML front matter as text.

Loading the front matter and dumping it again (what ``huggingface_hub.ModelCard`` does) drops
comments, key order and every key it does not know, and merges result groups that share a task
and dataset so that one group's ``source`` overwrites another's. Instead, the front matter is
composed with PyYAML only to find where things are; the text is then edited in place: our old
entries are cut out, our new group goes in as its own item of ``results``, and every other byte
stays. A final parse checks that nothing but our entries changed.

Our entries are the ``metrics`` items with ``type: fisher_robustness``; a ``results`` group is ours
when all its metrics are. Older hf-fisher versions put such items into another group; they are
removed from there too.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hf_fisher.errors import InputError

_BREAKS = "\r\n"


def _unsupported(source: str, what: str) -> InputError:
    return InputError(
        f"{source}: {what}, which hf-fisher cannot edit without rewriting the YAML front matter. "
        "Write the model-index as block-style YAML lists (`- name: ...` / `  results:` / "
        "`  - task: ...`), or delete the model-index key, then re-run."
    )


def _line_start(text: str, index: int) -> int:
    return max(text.rfind("\n", 0, index), text.rfind("\r", 0, index)) + 1


def _line_end(text: str, index: int) -> int:
    """Index just past the line break that ends the line holding ``index`` (or the text's end)."""
    ends = [i for i in (text.find("\n", index), text.find("\r", index)) if i >= 0]
    if not ends:
        return len(text)
    end = min(ends)
    return end + 2 if text.startswith("\r\n", end) else end + 1


def _content_end(text: str, node: Node) -> int:
    """Index just past the last character of ``node`` itself (not the comments after it)."""
    while isinstance(node, MappingNode | SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, MappingNode) else last
    end = node.end_mark.index
    while end > node.start_mark.index and text[end - 1] in " \t" + _BREAKS:
        end -= 1  # block scalars end after their trailing blank lines
    return end


def _item_span(text: str, node: Node, source: str) -> tuple[int, int, int]:
    """(start, end, dash column) of the block-sequence item whose value is ``node``.

    The span covers whole lines: from the start of the ``-`` line to the line break after the
    item's last value, including a comment on that line but not the lines after it.
    """
    dash = node.start_mark.index
    while dash > 0 and text[dash - 1] in " \t" + _BREAKS:
        dash -= 1
    dash -= 1
    start = _line_start(text, dash)
    if dash < 0 or text[dash] != "-" or text[start:dash].strip(" \t"):
        raise _unsupported(source, "a list in the model-index is not a block-style `- ` list")
    return start, _line_end(text, _content_end(text, node)), dash - start


def _get(node: Node, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return value_node
    return None


def _scalar(node: Node | None) -> Any:
    return node.value if isinstance(node, ScalarNode) else None


def _block_list(node: Node | None) -> list[Node] | None:
    """The items of a non-empty block sequence, else ``None``."""
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return node.value
    return None


class _Dumper(yaml.SafeDumper):
    r"""``SafeDumper`` that keeps every string on one line.

    A string holding a line break is double-quoted with ``\n`` escapes instead of folded over
    lines, one of which could start with ``---`` and end the front matter.
    """


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if any(c in text for c in "\r\n\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_block(value: Any, indent: int, newline: str) -> str:
    """``value`` as block YAML indented by ``indent`` spaces, each line ending in ``newline``.

    PyYAML's safe dumper quotes every string that needs it (``: ``, ``#``, ``---``, leading
    ``-``/``[``, ``yes``/``null``...) and :class:`_Dumper` keeps each on one line, so no value
    can change the YAML structure or end the front matter.
    """
    text = yaml.dump(
        value,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=math.inf,
    )
    pad = " " * indent
    return "".join(f"{pad}{line}{newline}" if line else newline for line in text.splitlines())


def _is_ours(metric: Any, metric_type: str) -> bool:
    return isinstance(metric, dict) and metric.get("type") == metric_type


def _split_results(results: list[Any], metric_type: str) -> tuple[list[Any], list[Any]]:
    """(kept, ours): ``results`` without our groups and metric items, and our groups."""
    kept, ours = [], []
    for group in results:
        metrics = group.get("metrics") if isinstance(group, dict) else None
        if isinstance(metrics, list) and metrics:
            if all(_is_ours(m, metric_type) for m in metrics):
                ours.append(group)
                continue
            group["metrics"] = [m for m in metrics if not _is_ours(m, metric_type)]
        kept.append(group)
    return kept, ours


def _strip_ours(data: Any, metric_type: str) -> tuple[Any, list[Any]]:
    """``data`` without our groups and metric items, and the list of our groups."""
    data = copy.deepcopy(data)
    ours = []
    index = data.get("model-index") if isinstance(data, dict) else None
    for entry in index if isinstance(index, list) else []:
        results = entry.get("results") if isinstance(entry, dict) else None
        if not isinstance(results, list):
            continue
        entry["results"], found = _split_results(results, metric_type)
        ours += found
    return data, ours


_Edit = tuple[int, int, str]  # (start, end, replacement) of the front matter text


def _terminated(yaml_text: str, newline: str) -> tuple[str, bool]:
    """``yaml_text`` with a break after its last line, and whether it lacked one.

    Edits are of whole lines; the break is taken off again at the end (the closing ``---`` line
    brings its own).
    """
    unterminated = yaml_text[-1:] not in ("\n", "\r")
    if yaml_text and unterminated:
        yaml_text += newline
    return yaml_text, unterminated


def _compose(yaml_text: str, source: str) -> tuple[MappingNode | None, Any]:
    """The node tree (to find positions) and the loaded data (to check the result against)."""
    try:
        root = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
        before = yaml.safe_load(yaml_text)
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise InputError(
            f"{source}: the YAML front matter does not parse ({detail}); fix it."
        ) from err
    if root is not None and not isinstance(root, MappingNode):
        raise InputError(f"{source}: the YAML front matter is not a mapping; fix or remove it.")
    return root, before


def _metric_cuts(
    yaml_text: str, metrics: SequenceNode, types: list[Any], metric_type: str, source: str
) -> list[_Edit]:
    """Edits cutting our items out of a ``metrics`` list that also holds other metrics."""
    if metrics.flow_style:
        raise _unsupported(source, "a model-index metrics list is in flow style")
    cuts = []
    for metric, kind in zip(metrics.value, types, strict=True):
        if kind == metric_type:
            start, end, _ = _item_span(yaml_text, metric, source)
            cuts.append((start, end, ""))
    return cuts


def _scan_results(
    yaml_text: str, results: list[Node], metric_type: str, source: str
) -> tuple[list[Node], list[_Edit]]:
    """Our groups among ``results``, and the edits cutting our items out of mixed groups."""
    groups, cuts = [], []
    for item in results:
        metrics = _get(item, "metrics")
        types = [_scalar(_get(m, "type")) for m in getattr(metrics, "value", [])]
        if not isinstance(metrics, SequenceNode) or metric_type not in types:
            continue
        if all(t == metric_type for t in types):
            groups.append(item)
        else:
            cuts += _metric_cuts(yaml_text, metrics, types, metric_type, source)
    return groups, cuts


def _group_edits(
    yaml_text: str,
    groups: list[Node],
    last: Node,
    group: dict[str, Any],
    newline: str,
    source: str,
) -> list[_Edit]:
    """Replace our first old group by ``group`` and drop the others, or add it after ``last``."""
    if groups:
        start, end, column = _item_span(yaml_text, groups[0], source)
        return [
            (start, end, dump_block([group], column, newline)),
            *[(*_item_span(yaml_text, g, source)[:2], "") for g in groups[1:]],
        ]
    _, end, column = _item_span(yaml_text, last, source)
    return [(end, end, dump_block([group], column, newline))]


def _index_edits(
    yaml_text: str,
    index: Node,
    group: dict[str, Any],
    metric_type: str,
    newline: str,
    source: str,
) -> list[_Edit]:
    """Edits of an existing ``model-index`` that leave ``group`` as our only results group."""
    entries = _block_list(index)
    if entries is None:
        raise _unsupported(source, "its model-index is empty or a flow-style [...] list")
    groups, edits, last = [], [], None
    for entry in entries:
        results = _block_list(_get(entry, "results"))
        found, cuts = _scan_results(yaml_text, results or [], metric_type, source)
        groups += found
        edits += cuts
        if last is None:
            if results is None:
                raise _unsupported(source, "its first model-index entry has no block results")
            last = results[-1]
    return edits + _group_edits(yaml_text, groups, last, group, newline, source)


def _apply(text: str, edits: list[_Edit]) -> str:
    """``text`` with the non-overlapping ``edits`` made, back to front so indices stay valid."""
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def splice_group(
    yaml_text: str,
    group: dict[str, Any],
    model_name: str,
    metric_type: str,
    newline: str = "\n",
    source: str = "model card",
) -> str:
    """Return ``yaml_text`` with ``group`` as our only ``model-index`` results group.

    Args:
        yaml_text: The front matter between the ``---`` lines (no trailing line break needed).
        group: Our results group: ``task``, ``dataset``, ``metrics``, ``source``.
        model_name: ``name`` of the model-index entry created when the card has none.
        metric_type: The metric ``type`` that marks our entries.
        newline: Line break of the inserted lines.
        source: Name of the card in error messages.

    Raises:
        InputError: The front matter is not YAML or not a mapping, or its model-index is not in
            a block layout that can be edited in place.
    """
    yaml_text, unterminated = _terminated(yaml_text, newline)
    root, before = _compose(yaml_text, source)
    index = None if root is None else _get(root, "model-index")
    if index is None:
        block = dump_block({"model-index": [{"name": model_name, "results": [group]}]}, 0, newline)
        edits = [(len(yaml_text), len(yaml_text), block)]
    else:
        edits = _index_edits(yaml_text, index, group, metric_type, newline, source)
    text = _apply(yaml_text, edits)
    if unterminated and text.endswith(newline):
        text = text[: -len(newline)]
    _check(before, text, group, model_name, metric_type, source)
    return text


def _check(
    before: Any, text: str, group: dict, model_name: str, metric_type: str, source: str
) -> None:
    """Parse the result: our group is there once and nothing else changed."""
    expected, _ = _strip_ours(before if before is not None else {}, metric_type)
    if "model-index" not in expected:
        expected["model-index"] = [{"name": model_name, "results": []}]
    try:
        got, ours = _strip_ours(yaml.safe_load(text), metric_type)
    except yaml.YAMLError as err:
        got, ours = err, []
    if repr(got) != repr(expected) or repr(ours) != repr([group]):
        raise InputError(
            f"{source}: could not add the hf-fisher model-index results without changing other "
            "YAML in the front matter; the card was not written. Please report this with the "
            "card's front matter."
        )
