"""Who may join which group: rules by group pattern, asked before a membership changes.

Authentication says who a socket is; a join rule says what that identity may listen to.
Without a rule every join is allowed, as before. A rule is a function ``(identifier,
group) -> bool``, plain or ``async``; it is asked once per new membership (joining a group
one is already in asks nothing), and any answer but ``True`` refuses the join with
``JoinRefused``, changing nothing. A rule that raises refuses too: its exception goes to
the caller, as a bug of the application's should.

Rules are found by the group's name: an exact name first, then ``fnmatch`` patterns
(``"room:*"``) in the order they were given, then the manager's ``can_join``. One rule per
name or pattern; giving another replaces it. ``add_to_group`` is synchronous, so it can ask
only plain rules; an ``async`` rule is asked by ``await manager.join(...)``, and
``add_to_group`` refuses a group whose rule is async with a ``WrongType`` saying so (it
cannot wait for the answer, and must not guess it).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any

from ..errors import JoinRefused, WrongType

__all__ = ["JoinRule", "JoinRules"]

JoinRule = Callable[[str, str], "bool | Awaitable[bool]"]

#: Characters that make a name a pattern (``fnmatch``'s).
_WILDCARDS = frozenset("*?[")


class JoinRules:
    """The rules of one manager: by exact group name, by pattern, and a default."""

    __slots__ = ("_default", "_exact", "_patterns")

    def __init__(self, default: JoinRule | None = None) -> None:
        if default is not None and not callable(default):
            raise WrongType(
                f"can_join must be a function (identifier, group) -> bool, got {default!r}"
            )
        self._default = default
        self._exact: dict[str, JoinRule] = {}
        self._patterns: dict[str, JoinRule] = {}  # in the order given (dicts keep it)

    def add(self, pattern: str, rule: JoinRule) -> None:
        """Ask ``rule`` about the groups ``pattern`` names (one name, or an fnmatch pattern)."""
        if not isinstance(pattern, str) or not pattern:
            raise WrongType(f"a join rule's pattern must be a non-empty str, got {pattern!r}")
        if not callable(rule):
            raise WrongType(
                f"a join rule must be a function (identifier, group) -> bool, got {rule!r}"
            )
        if _WILDCARDS.isdisjoint(pattern):
            self._exact[pattern] = rule
        else:
            self._patterns[pattern] = rule

    def given(self, pattern: str, rule: JoinRule | None) -> Any:
        """``add``, or (without ``rule``) a decorator that adds the function it decorates."""
        if rule is not None:
            self.add(pattern, rule)
            return rule

        def decorate(func: JoinRule) -> JoinRule:
            self.add(pattern, func)
            return func

        return decorate

    def rule_for(self, group: str) -> JoinRule | None:
        rule = self._exact.get(group)
        if rule is not None:
            return rule
        for pattern, rule in self._patterns.items():
            if fnmatchcase(group, pattern):
                return rule
        return self._default

    def check_now(self, identifier: str, group: str) -> None:
        """Ask a plain rule; refuse an async one (the caller cannot wait for it)."""
        rule = self.rule_for(group)
        if rule is None:
            return
        verdict = rule(identifier, group)
        if inspect.isawaitable(verdict):
            if inspect.iscoroutine(verdict):
                verdict.close()  # never awaited: no "coroutine was never awaited" warning
            raise WrongType(
                f"the join rule for {group!r} is async: join with "
                f"'await manager.join({identifier!r}, {group!r})' instead of add_to_group"
            )
        if verdict is not True:
            raise JoinRefused(identifier, group)

    async def check(self, identifier: str, group: str) -> None:
        """Ask the rule, plain or async."""
        rule = self.rule_for(group)
        if rule is None:
            return
        verdict = rule(identifier, group)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not True:
            raise JoinRefused(identifier, group)
