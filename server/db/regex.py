"""The one regular-expression dialect of the search DSL, and its linear-time engine for SQLite.

A `regex` condition runs in the database's own engine: PCRE2 on MariaDB (`REGEXP`), Henry
Spencer's ARE engine on PostgreSQL (`~`), and on SQLite a function this server registers.
The engines disagree on syntax (`\\b` is a word boundary in PCRE2 and RE2 but a backspace in
PostgreSQL; RE2 has no look-around or back-references; `\\x41`, `\\Z`, `(?i)` differ), so
the server accepts one dialect, the part all three and RE2 read the same way, and refuses
anything else on every backend with a 400 naming what is wrong:

    literals, `\\` + ASCII punctuation, `\\n \\r \\t \\f \\v`, `.`, `^`, `$`
    `\\d \\D \\w \\W \\s \\S` (and `\\d \\w \\s` inside brackets)
    `[abc]`, `[^a-z0-9_]`, `[[:alpha:]]` (alnum alpha blank cntrl digit graph lower print
    punct space upper xdigit)
    `(...)`, `(?:...)`, `a|b`
    `* + ? {n} {n,} {n,m}`, each optionally lazy (`*?`), counts up to 255

Two limits keep MariaDB's backtracking PCRE2 (the one engine here that is not linear) from
exponential or high-polynomial work, and are applied everywhere so the dialect is the same:
a repeated group may not itself contain a repetition or an alternation (`(a+)+`, `(a|aa)*`),
and the product of the choices the pattern leaves open (one factor per variable repetition,
256 for an open-ended one, and the number of branches per alternation) is at most 256**3:
`.*a.*b.*c` passes, `.{0,16}` seven times over (17**7) does not.

SQLite evaluates the accepted dialect with RE2 (`sqlite_regexp`), whose time is linear in the
text, instead of Python's backtracking `re`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

#: POSIX RE_DUP_MAX: PostgreSQL refuses larger counts.
MAX_REPEAT = 255
#: A `*`, `+` or `{n,}` counts as this many choices in the backtracking estimate.
OPEN_ENDED = 256
#: At most this many choices left open by a whole pattern (three open-ended repetitions).
MAX_CHOICES = OPEN_ENDED**3

_PUNCTUATION = frozenset(string.punctuation)
_CONTROL = frozenset("nrtfv")
_SHORTHAND = frozenset("dDwWsS")
_SHORTHAND_IN_BRACKETS = frozenset("dws")
_POSIX_CLASSES = frozenset(
    {"alnum", "alpha", "blank", "cntrl", "digit", "graph"}
    | {"lower", "print", "punct", "space", "upper", "xdigit"}
)


class RegexRefused(ValueError):
    """The pattern is outside the dialect; the message says why, for the client."""


@dataclass
class _Node:
    """What the checks need to know about a parsed (sub)pattern."""

    choices: int = 1  # the backtracking estimate of this part
    repeats: bool = False  # holds a variable repetition or an alternation


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def error(self, what: str) -> RegexRefused:
        return RegexRefused(f"{what} at position {self.i}")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def alternation(self) -> _Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        if len(branches) == 1:
            return branches[0]
        total = sum(b.choices for b in branches)
        return _Node(choices=max(total, len(branches)), repeats=True)

    def sequence(self) -> _Node:
        node = _Node()
        while (c := self.peek()) is not None and c not in "|)":
            piece = self.piece()
            node.choices = min(node.choices * piece.choices, MAX_CHOICES + 1)
            node.repeats = node.repeats or piece.repeats
        return node

    def piece(self) -> _Node:
        start = self.i
        atom, repeatable, group = self.atom()
        quantifier = self.quantifier()
        if quantifier is None:
            return atom
        if not repeatable:
            raise RegexRefused(f"nothing to repeat at position {start}")
        low, high = quantifier
        if self.peek() == "?":  # lazy: the same set of matches, so the same checks
            self.i += 1
        if self.peek() in ("*", "+", "?", "{"):
            raise self.error("a repetition of a repetition (possessive or doubled quantifier)")
        if group and atom.repeats and (high is None or high > 1):
            raise RegexRefused(
                "a repeated group that itself repeats or alternates "
                "(exponential time in a backtracking engine)"
            )
        variable = high is None or high > low
        factor = (OPEN_ENDED if high is None else high - low + 1) if variable else 1
        return _Node(
            choices=min(atom.choices * factor, MAX_CHOICES + 1),
            repeats=atom.repeats or variable,
        )

    def quantifier(self) -> tuple[int, int | None] | None:
        c = self.peek()
        if c == "*":
            self.i += 1
            return 0, None
        if c == "+":
            self.i += 1
            return 1, None
        if c == "?":
            self.i += 1
            return 0, 1
        if c != "{":
            return None
        close = self.p.find("}", self.i)
        body = self.p[self.i + 1 : close] if close > 0 else ""
        low_text, comma, high_text = body.partition(",")
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise self.error("a '{' that is not a repetition count (escape a literal one: \\{)")
        low = int(low_text)
        high = None if comma and not high_text else int(high_text or low_text)
        if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
            raise self.error(f"a repetition count above {MAX_REPEAT}")
        if high is not None and high < low:
            raise self.error("a repetition count range out of order")
        self.i = close + 1
        return low, high

    def atom(self) -> tuple[_Node, bool, bool]:
        """(node, may be repeated, is a group)"""
        c = self.p[self.i]
        if c == "(":
            self.i += 1
            if self.peek() == "?":
                if self.p.startswith("?:", self.i):
                    self.i += 2
                else:
                    raise self.error(
                        "'(?' other than '(?:' (look-around, named groups, inline flags "
                        "and atomic groups are not in every engine)"
                    )
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("a '(' without its ')'")
            self.i += 1
            return inner, True, True
        if c == ")":
            raise self.error("a ')' without its '('")
        if c in "^$":
            self.i += 1
            return _Node(), False, False
        if c in "*+?{":
            raise self.error("nothing to repeat")
        if c in "]}":
            raise self.error(f"an unescaped {c!r} (escape it: \\{c})")
        if c == "[":
            self.brackets()
            return _Node(), True, False
        if c == "\\":
            self.escape(in_brackets=False)
            return _Node(), True, False
        self.i += 1  # '.' or a literal
        return _Node(), True, False

    def escape(self, *, in_brackets: bool) -> str | None:
        """Consume `\\x`; returns the literal character, or None for a class shorthand."""
        if self.i + 1 >= len(self.p):
            raise self.error("a '\\' at the end of the pattern")
        c = self.p[self.i + 1]
        self.i += 2
        if c in _PUNCTUATION:
            return c
        if c in _CONTROL:
            return {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v"}[c]
        allowed = _SHORTHAND_IN_BRACKETS if in_brackets else _SHORTHAND
        if c in allowed:
            return None
        self.i -= 2
        raise self.error(
            f"the escape \\{c} (its meaning differs between engines, or it is not in all of them)"
        )

    def brackets(self) -> None:
        start = self.i
        self.i += 1
        if self.peek() == "^":
            self.i += 1
        items = 0
        previous: str | None = None  # the last single character, a possible range start
        while True:
            c = self.peek()
            if c is None:
                self.i = start
                raise self.error("a '[' without its ']'")
            if c == "]":
                if items == 0:
                    raise self.error("an empty bracket expression (escape a literal ']': \\])")
                self.i += 1
                return
            if c == "[":
                if self.p.startswith("[:", self.i):
                    close = self.p.find(":]", self.i + 2)
                    name = self.p[self.i + 2 : close] if close > 0 else ""
                    if name not in _POSIX_CLASSES:
                        raise self.error("an unknown character class [:...:]")
                    self.i = close + 2
                    previous = None
                else:
                    raise self.error(
                        "a '[' inside brackets (escape it: \\[; [. .] and [= =] are not "
                        "in every engine)"
                    )
            elif c == "\\":
                previous = self.escape(in_brackets=True)
            elif c == "-" and previous is not None and self.p[self.i + 1 : self.i + 2] != "]":
                self.i += 1
                end = self.peek()
                if end == "\\":
                    high = self.escape(in_brackets=True)
                elif end is None or end == "[":
                    raise self.error("a range without its end")
                else:
                    high = end
                    self.i += 1
                if high is None or high < previous:
                    raise self.error("a character range out of order")
                previous = None
            elif c == "-" and items > 0 and self.p[self.i + 1 : self.i + 2] != "]":
                raise self.error("a '-' in the middle of brackets (put it first or last)")
            else:
                previous = c
                self.i += 1
            items += 1


def check(pattern: str) -> None:
    """Raise RegexRefused unless `pattern` is in the dialect (see the module docstring)."""
    parser = _Parser(pattern)
    node = parser.alternation()
    if parser.i != len(pattern):  # alternation stops only at an unmatched ')'
        raise parser.error("a ')' without its '('")
    if node.choices > MAX_CHOICES:
        raise RegexRefused(
            "too many open choices (at most three open-ended repetitions, or as many "
            "alternatives: backtracking engines would take polynomial time per row)"
        )
    try:
        _compiled(pattern)
    except re2.error as exc:  # e.g. a program over RE2's memory budget
        raise RegexRefused(f"RE2 cannot compile it: {exc}") from None


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # "DFA out of memory" is a fallback to the NFA, not an error
    options.never_capture = True  # a yes/no answer needs no groups
    return options


_OPTIONS = _options()


@lru_cache(maxsize=128)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def sqlite_regexp(pattern: str, value: str | None) -> bool | None:
    """SQLite's `REGEXP` (`value REGEXP pattern` calls `regexp(pattern, value)`), in RE2: time
    linear in the value, and the GIL released while it matches."""
    if value is None:
        return None
    return _compiled(pattern).search(value) is not None
