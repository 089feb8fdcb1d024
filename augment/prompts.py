"""Filling prompt templates: the one place ``{token}`` and ``{name}`` become a prompt.

A template names the class (``"a photo of a {token} {name}"``, DisCo's form) or leaves the class to
the token alone (``"a photo of a {token}"``). Without a token (the plain-prompt baseline arm, a
negative prompt naming a confused class) a template that has no ``{name}`` gets the class name in
the token's place, so "the same prompt without the token" always names the class.
"""

from __future__ import annotations

import string

__all__ = ["render_prompt", "template_fields"]


def template_fields(template: str) -> set[str]:
    """The placeholders a template names (ValueError on bad braces)."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def render_prompt(template: str, token: str, name: str) -> str:
    """Fill a template; spaces are folded (an empty token leaves none behind)."""
    if not token and "name" not in template_fields(template):
        token = name
    return " ".join(template.format(token=token, name=name).split())
