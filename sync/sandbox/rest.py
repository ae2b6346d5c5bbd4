"""One REST object served the way ``/rest/users`` is: methods, body, path, answer.

A :class:`Resource` names an object (``products``, ``user_lists``, ...) and the store
calls that carry out its methods; :meth:`Resource.serve` turns one authorised request
into an answer exactly as the users object does: a JSON body for POST and PUT, the
path language for GET, PUT and DELETE, a ``RequestError`` as a plain-text (or bare)
400, a method it does not take as a 405 with ``Allow``. Faults, authentication and
the request log are the handler's, the same for every object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync.sandbox.handler import Answer, bare_answer, json_answer, text_answer
from sync.sandbox.query import Query, RequestError, parse_modifiers

__all__ = ["Resource", "parse_body"]


@dataclass(frozen=True)
class Resource:
    """An object's methods; a method left None is answered 405."""

    path: str
    get: Callable[[Query], Any]
    post: Callable[[object], Any] | None = None
    put: Callable[[Query, object], int] | None = None
    delete: Callable[[Query], int] | None = None

    @property
    def allow(self) -> str:
        methods = {"GET": self.get, "POST": self.post, "PUT": self.put, "DELETE": self.delete}
        return ", ".join(name for name, call in methods.items() if call is not None)

    def serve(self, method: str, segments: list[str], raw: bytes) -> Answer:
        """Answer one authorised request; ``segments`` are the raw ones after the object."""
        if method not in self.allow.split(", "):
            return text_answer(405, f"Method {method} not allowed here", {"Allow": self.allow})
        try:
            if method == "POST" and self.post is not None:
                if segments:
                    raise RequestError(f"POST /rest/{self.path} takes no path modifiers")
                return json_answer(self.post(parse_body(raw)))
            query = parse_modifiers(segments)
            if method == "PUT" and self.put is not None:
                return json_answer(self.put(query, parse_body(raw)))
            if method == "DELETE" and self.delete is not None:
                return json_answer(self.delete(query))
            return json_answer(self.get(query))
        except RequestError as error:
            return bare_answer(400) if error.bare else text_answer(400, str(error))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> Any:
    """The JSON body of a POST or PUT (NaN and Infinity refused), or a RequestError."""
    if not raw:
        raise RequestError("The request body must be a JSON object; it was empty")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(f"The request body is not valid JSON: {error}") from None
