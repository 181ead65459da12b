"""Typed reading of a parsed text-format message (service/configuration/pbtxt.py): the
field getters of config.pbtxt's interpreter (triton_model_config.py), each error naming
the model, the line and the dotted field path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.configuration.pbtxt import Field, Message, Scalar
from service.tensors.errors import ConfigError


@dataclass(frozen=True)
class Fields:
    """A message being read, where it is, and for whom (the errors' prefix)."""

    model: str
    message: Message
    path: str  # dotted field path from the root ("" at the root)
    # Field names known to Triton's ModelConfig that cnnserve does not serve, by the name
    # of the message holding them: refused as "not supported" rather than "unknown".
    not_served: Mapping[str, set[str]]

    def fail(self, line: int, what: str) -> ConfigError:
        return ConfigError(f"model '{self.model}': config.pbtxt line {line}: {what}")

    def name(self, field: str) -> str:
        return f"{self.path}.{field}" if self.path else field

    def check(self, fields: set[str]) -> None:
        """Every field is one cnnserve reads here; a known one it does not serve, or an
        unknown one, is refused with its name and line."""
        refused = self.not_served.get(self.path.split(".")[-1] if self.path else "", set())
        for each in self.message.fields:
            if each.name in fields:
                continue
            if each.name in refused:
                raise self.fail(
                    each.line, f"field '{self.name(each.name)}' is not supported by cnnserve"
                )
            raise self.fail(each.line, f"unknown field '{self.name(each.name)}'")

    def one(self, field: str) -> Field | None:
        found = self.message.all(field)
        if len(found) > 1:
            raise self.fail(found[1].line, f"'{self.name(field)}' is given more than once")
        return found[0] if found else None

    def scalar(self, field: Field) -> Scalar:
        if not isinstance(field.value, Scalar):
            raise self.fail(field.line, f"'{self.name(field.name)}' takes a value, not a message")
        return field.value

    def string(self, field: str, default: str = "") -> str:
        found = self.one(field)
        if found is None:
            return default
        value = self.scalar(found)
        if value.kind != "string":
            raise self.fail(found.line, f"'{self.name(field)}' takes a quoted string")
        return value.text

    def integer_of(self, field: Field) -> int:
        value = self.scalar(field)
        try:
            return int(value.text, 0) if value.kind == "number" else int("x")
        except ValueError:
            raise self.fail(
                field.line, f"'{self.name(field.name)}' takes an integer, got {value.text}"
            ) from None

    def integer(self, field: str, default: int = 0) -> int:
        found = self.one(field)
        return default if found is None else self.integer_of(found)

    def integers(self, field: str) -> tuple[int, ...]:
        return tuple(self.integer_of(f) for f in self.message.all(field))

    def boolean(self, field: str) -> bool:
        found = self.one(field)
        if found is None:
            return False
        text = self.scalar(found).text
        if text not in ("true", "false", "True", "False", "t", "f", "1", "0"):
            raise self.fail(found.line, f"'{self.name(field)}' takes true or false, got {text}")
        return text in ("true", "True", "t", "1")

    def enum(self, field: str, choices: tuple[str, ...] | Mapping[str, object]) -> str | None:
        found = self.one(field)
        if found is None:
            return None
        text = self.scalar(found).text
        if text not in choices:
            raise self.fail(
                found.line, f"'{self.name(field)}' must be one of {list(choices)}, got {text}"
            )
        return text

    def nested(self, field: Field) -> Fields:
        if not isinstance(field.value, Message):
            raise self.fail(field.line, f"'{self.name(field.name)}' takes a message {{ ... }}")
        return Fields(self.model, field.value, self.name(field.name), self.not_served)

    def messages(self, field: str) -> list[Fields]:
        return [self.nested(f) for f in self.message.all(field)]

    def message_of(self, field: str) -> Fields | None:
        found = self.one(field)
        return None if found is None else self.nested(found)
