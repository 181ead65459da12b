"""A reader of protobuf text format (Triton's config.pbtxt), without protobuf.

The core stays wire-free (no protobuf, no generated code: pyproject's import contracts),
so the text is read here into plain fields, and `triton_model_config.py` interprets them
against the parts of Triton's ModelConfig that cnnserve serves. The grammar is protobuf's:
`name: value`, `name { ... }` or `name: { ... }` (also `< ... >`), lists `name: [a, b]` (each
element one more occurrence of the field), optional `,` or `;` after a field, `#` comments,
adjacent strings concatenated, and scalars: strings (single or double quoted, C escapes),
numbers, identifiers (enum values, true/false). Every error carries its line and column.
tests/unit/configuration/test_pbtxt.py checks it against protobuf's own parser.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

from service.tensors.errors import ConfigError

ScalarKind = Literal["string", "number", "identifier"]

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[fF]?)
  | (?P<identifier>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\]<>:,;])
    """,
    re.VERBOSE,
)


class PbtxtError(ConfigError):
    """A syntax error, with where it is."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Token:
    kind: str  # string | number | identifier | punct | end
    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Scalar:
    kind: ScalarKind
    text: str  # a string's decoded value; a number's or identifier's spelling
    line: int


@dataclass(frozen=True)
class Field:
    name: str
    value: Scalar | Message
    line: int


@dataclass(frozen=True)
class Message:
    fields: tuple[Field, ...]
    line: int

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]


def tokens(text: str) -> list[Token]:
    found: list[Token] = []
    line, line_start, position = 1, 0, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PbtxtError(f"unexpected {text[position]!r}", line, position - line_start + 1)
        kind = match.lastgroup or ""
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            found.append(Token(kind, match.group(), line, position - line_start + 1))
        position = match.end()
    found.append(Token("end", "", line, position - line_start + 1))
    return found


def _decode_string(token: Token) -> str:
    try:
        value = ast.literal_eval(token.text)  # a quoted literal with C-style escapes
    except (SyntaxError, ValueError) as exc:
        raise PbtxtError(f"bad string {token.text}: {exc}", token.line, token.column) from None
    if not isinstance(value, str):
        raise PbtxtError(f"bad string {token.text}", token.line, token.column)
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokens(text)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def fail(self, expected: str) -> PbtxtError:
        token = self.peek()
        seen = "the end of the file" if token.kind == "end" else repr(token.text)
        return PbtxtError(f"expected {expected}, found {seen}", token.line, token.column)

    def accept(self, text: str) -> bool:
        if self.peek().kind == "punct" and self.peek().text == text:
            self.index += 1
            return True
        return False

    def message(self, closing: str | None, line: int) -> Message:
        fields: list[Field] = []
        while True:
            token = self.peek()
            if closing is None and token.kind == "end":
                return Message(tuple(fields), line)
            if closing is not None and self.accept(closing):
                return Message(tuple(fields), line)
            if token.kind != "identifier" or token.text.startswith("-"):
                raise self.fail("a field name" + (f" or '{closing}'" if closing else ""))
            self.take()
            fields += self.field_values(token)
            self.accept(",") or self.accept(";")

    def field_values(self, name: Token) -> list[Field]:
        colon = self.accept(":")
        if self.peek().text in ("{", "<") and self.peek().kind == "punct":
            return [Field(name.text, self.nested(), name.line)]
        if self.accept("["):  # without ':' only a list of messages, as protobuf has it
            return self.list_values(name, messages_only=not colon)
        if not colon:
            raise self.fail(f"':' or '{{' after {name.text}")
        return [Field(name.text, self.value(), name.line)]

    def list_values(self, name: Token, *, messages_only: bool) -> list[Field]:
        values: list[Field] = []
        if self.accept("]"):
            return values
        while True:
            if messages_only and self.peek().text not in ("{", "<"):
                raise self.fail(f"':' before the list of values of {name.text}")
            values.append(Field(name.text, self.value(), name.line))
            if self.accept("]"):
                return values
            if not self.accept(","):
                raise self.fail(f"',' or ']' in the list of {name.text}")

    def nested(self) -> Message:
        opening = self.take()
        return self.message("}" if opening.text == "{" else ">", opening.line)

    def value(self) -> Scalar | Message:
        token = self.peek()
        if token.kind == "punct" and token.text in ("{", "<"):
            return self.nested()
        if token.kind == "string":
            text = ""
            while self.peek().kind == "string":  # "a" "b" is "ab"
                text += _decode_string(self.take())
            return Scalar("string", text, token.line)
        if token.kind in ("number", "identifier"):
            self.take()
            kind: ScalarKind = "number" if token.kind == "number" else "identifier"
            return Scalar(kind, token.text, token.line)
        raise self.fail("a value")


def parse(text: str) -> Message:
    """The fields of a text-format message; PbtxtError (a ConfigError) with line and
    column for anything protobuf's text parser would refuse as syntax."""
    return _Parser(text).message(None, 1)
