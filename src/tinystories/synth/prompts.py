"""Story prompts: the paper's template (as printed) and users' own.

A user template is a string with `{verb}`, `{noun}`, `{adjective}` and
`{features}` placeholders; `{features}` becomes the features sentence (with a
leading space) or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tinystories.errors import UserError
from tinystories.synth.lexicon import FEATURES

PAPER_TEMPLATE = (
    "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old "
    'child would likely understand. The story should use the verb "{verb}", the noun "{noun}" '
    'and the adjective "{adjective}".{features} Remember to only use simple words!'
)


def features_sentence(features: Sequence[str], table: Mapping[str, str] = FEATURES) -> str:
    """' The story should have the following features: a, b.' or '' for no features.

    `table` maps feature keys to their phrases (the paper's by default, or a user's file).
    """
    if not features:
        return ""
    unknown = [f for f in features if f not in table]
    if unknown:
        raise UserError(f"unknown story feature(s) {unknown}; known: {', '.join(table)}")
    return " The story should have the following features: " + ", ".join(table[f] for f in features) + "."


def story_prompt(
    words: Sequence[str],
    features: Sequence[str],
    template: str = PAPER_TEMPLATE,
    table: Mapping[str, str] = FEATURES,
) -> str:
    """The prompt that asks for a story with words [verb, noun, adjective] and `features`."""
    if len(words) != 3:
        raise UserError(f"a story prompt needs 3 words (verb, noun, adjective), got {list(words)}")
    verb, noun, adjective = words
    try:
        return template.format(
            verb=verb, noun=noun, adjective=adjective, features=features_sentence(features, table)
        )
    except (KeyError, IndexError) as e:
        raise UserError(f"prompt template has an unknown placeholder {e}") from None
