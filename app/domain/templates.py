"""A campaign's texts as Liquid templates (python-liquid): checked when a campaign is
written, analysed once for the variables every recipient must have, rendered per
recipient with bounded output and loop work.

Liquid evaluates no code: a template reads the variables it is given (`person_id`,
`recipient`, `data.<name>` at any depth, `campaign.name`, `unsubscribe_url`) through
dictionaries and lists, never Python attributes, so `{{ data.x.__class__ }}` is nothing.
Why Liquid and not Jinja2's sandbox: ADR 0047.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sized
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from io import StringIO
from typing import Any

import msgspec
from liquid import Environment, StrictDefaultUndefined, escape
from liquid.ast import Node
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.builtin.expressions.logical import (
    ContainsExpression,
    EqExpression,
    GeExpression,
    GtExpression,
    LeExpression,
    LtExpression,
    NeExpression,
)
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.builtin.output import OutputNode
from liquid.context import RenderContext
from liquid.exceptions import (
    LiquidError,
    OutputStreamLimitError,
    ResourceLimitError,
    UndefinedError,
)
from liquid.expression import Expression
from liquid.template import BoundTemplate

MAX_EMAIL_CHARACTERS = 256 * 1024
"""Longest rendered e-mail subject, body or HTML body (characters)."""
MAX_SMS_CHARACTERS = 1600
"""Longest rendered SMS body: ten concatenated parts, carriers' usual ceiling."""

MAX_LOOP_ITERATIONS = 10_000
"""Iterations of all `for` loops of one render together."""
MAX_ARRAY_ELEMENTS = 2 * MAX_LOOP_ITERATIONS
"""The most elements of a range (`(1..n)`) or of an array a filter makes: a loop over one
reaches its own bound first, and an operator (`contains`) or a filter scans no more."""
MAX_FILTER_WORK = 16 * MAX_EMAIL_CHARACTERS
"""Characters and elements that the filters of one render may take and make together: a
loop may call a filter 10,000 times over the longest text or array (`sum` over 20,000
elements 10,000 times took minutes)."""
DATE_WORK = 16
"""What each character of a `date` filter's input counts for in MAX_FILTER_WORK, with 20
characters more for the call: dateutil's parser takes about 4 us a character and 75 us a
call, a thousand times `upcase`. So counted, one render parses dates for about a second
at most (a 4 KB date string appended to in a 10,000-step loop took 10 s uncounted)."""
UNIQ_PAIRS = 50
"""Pairs of elements a `uniq` filter compares for each unit of MAX_FILTER_WORK: python-liquid
compares each element with those before it, about 4.5 ns a pair (20,000 elements: 3.6 s;
chained, minutes). So counted, a `uniq` of some 14,000 elements takes the whole bound."""
MAX_NUMBER_BITS = 14_300
"""The largest integer a filter may make: Python's own bound for printing one (4,300
digits). `times` squares a number in a few steps; its cost and size have no other bound."""
MAX_LOCALS_BYTES = 4 * 1024 * 1024
"""What a render's `assign`ed and `capture`d variables may hold together (sys.getsizeof):
a doubling `assign` in a loop, or thousands of variables, would fill the memory."""
LIQUID_PROPERTIES = frozenset({"size", "first", "last"})
"""What Liquid reads of an array or a string by name (`data.visits.size`): a path through
one needs only the array or string (what follows is read from an element, at render)."""
VARIABLES = frozenset({"person_id", "recipient", "data", "campaign", "unsubscribe_url"})
"""The roots a template may read."""
_FORBIDDEN_TAGS = frozenset({"include", "render"})
"""Tags that load other templates: a campaign has no others."""


def body_limit(channel: str) -> int:
    """The longest rendered body of a message of `channel`."""
    return MAX_SMS_CHARACTERS if channel == "sms" else MAX_EMAIL_CHARACTERS


class _CharacterLimitedIO(StringIO):
    """The output of one render, at most `limit` characters. python-liquid's own
    LimitedStringIO counts UTF-8 bytes by encoding every piece written: a fifth of the
    time of a 500-character render with 5 variables (bench/templates.py)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.left = limit

    def write(self, text: str, /) -> int:
        self.left -= len(text)
        if self.left < 0:
            raise OutputStreamLimitError("output stream limit reached", token=None)
        return super().write(text)


class _BoundedTemplate(BoundTemplate):
    def _get_buffer(self) -> StringIO:  # python-liquid 2.x's hook for the output buffer
        assert self.env.output_stream_limit is not None
        return _CharacterLimitedIO(self.env.output_stream_limit)


class _Bounded(Environment):
    output_stream_limit = MAX_EMAIL_CHARACTERS
    loop_iteration_limit = MAX_LOOP_ITERATIONS
    local_namespace_limit = MAX_LOCALS_BYTES
    template_class = _BoundedTemplate

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}


class _WorkLimitError(ResourceLimitError):
    """A range, or a filter's result or work, larger than a render may make or do."""


_filter_work: ContextVar[int] = ContextVar("filter_work", default=0)
"""What the filters of the message under way took and made (`render` starts it at 0)."""


def _bounded_filter(name: str, liquid_filter: Callable[..., Any]) -> Callable[..., Any]:
    """`liquid_filter`, refusing to make a text longer than an e-mail may be, an array of
    more than MAX_ARRAY_ELEMENTS, or a number larger than MAX_NUMBER_BITS (the output bound
    counts only what is written, and a chain of filters makes its intermediate values
    whole first), and to work past MAX_FILTER_WORK in one render. `replace` and `join` are
    checked, `date` and `uniq` counted, before they run: one call of these can cost the
    square of its input's length, or a second."""

    @functools.wraps(liquid_filter)  # keeps the attributes Liquid reads (with_context, ...)
    def bounded(left: Any, *args: Any, **kwargs: Any) -> Any:
        if _would_be_too_long(name, left, args):
            raise _WorkLimitError("filter output limit reached", token=None)
        if before := _work_before(name, left):  # one call of these may cost a second
            _spend(before, "filter")
        result = liquid_filter(left, *args, **kwargs)
        kind = type(result)
        if (
            (issubclass(kind, str) and len(result) > MAX_EMAIL_CHARACTERS)
            or (issubclass(kind, list) and len(result) > MAX_ARRAY_ELEMENTS)
            or (kind is int and result.bit_length() > MAX_NUMBER_BITS)
        ):
            raise _WorkLimitError("filter output limit reached", token=None)
        _spend(_size(left) + _size(result), "filter")
        return result

    return bounded


def _spend(units: int, what: str) -> None:
    """Count `units` of work against the message's MAX_FILTER_WORK; past it, the render
    fails ("<what> work limit reached")."""
    work = _filter_work.get() + units
    if work > MAX_FILTER_WORK:
        raise _WorkLimitError(f"{what} work limit reached", token=None)
    _filter_work.set(work)


def _work_before(name: str, left: Any) -> int:
    """What a filter costs beyond the characters and elements it takes and makes: counted
    before it runs, for the filters whose one call may cost a second."""
    if name == "date":
        return DATE_WORK * (_size(left) + 20)
    if name == "uniq":
        return _size(left) ** 2 // UNIQ_PAIRS
    return 0


def _size(value: Any) -> int:
    # By type(): a strict Undefined raises at isinstance(), which reads its __class__.
    return len(value) if issubclass(type(value), str | list | range) else 0


def _would_be_too_long(name: str, left: Any, args: tuple[Any, ...]) -> bool:
    if name == "replace" and len(args) == 2:
        text, old, new = str(left), str(args[0]), str(args[1])
        growth = len(new) - len(old)
        return growth > 0 and len(text) + text.count(old) * growth > MAX_EMAIL_CHARACTERS
    if name == "join" and issubclass(type(left), Sized):
        separator = str(args[0]) if args else " "
        return len(left) * max(len(separator), 1) > MAX_EMAIL_CHARACTERS
    return False


_COMPARISONS = (
    EqExpression, NeExpression, LtExpression, LeExpression, GtExpression, GeExpression,
    ContainsExpression,
)  # fmt: skip


class _CountedOperand(Expression):
    """An operand of a comparison, whose size counts in MAX_FILTER_WORK: `==` and
    `contains` scan what they compare (two 20,000-element arrays in a 10,000-step loop took
    5 s, and an `and` of four such, 15 s). Compiled comparisons take these (`_parse`)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Expression) -> None:
        super().__init__(token=inner.token)
        self.inner = inner

    def __str__(self) -> str:
        return str(self.inner)

    def evaluate(self, context: RenderContext) -> object:
        value = self.inner.evaluate(context)
        _spend(_size(value), "operator")
        return value

    async def evaluate_async(self, context: RenderContext) -> object:
        return self.evaluate(context)  # renders are synchronous

    def children(self) -> list[Expression]:
        return [self.inner]


class _BoundedRange(RangeLiteral):
    """A range of at most MAX_ARRAY_ELEMENTS elements, as a filter's array. `(1..n)` is
    lazy, but `offset:` steps through what it skips, `reversed` and most filters make it
    whole: with `n` from a recipient's data, a render would run for hours. Ranges of
    compiled templates are made of this class (`_parse`)."""

    __slots__ = ()

    def _make_range(self, start: Any, stop: Any) -> range:
        made = super()._make_range(start, stop)
        if made.stop - made.start > MAX_ARRAY_ELEMENTS:  # len() overflows past 2**63
            raise _WorkLimitError("range limit reached", token=self.token)
        return made


# A variable missing from a render's data raises, unless a `default` filter covers it.
_TEXT = _Bounded(undefined=StrictDefaultUndefined)
_HTML = _Bounded(undefined=StrictDefaultUndefined, autoescape=True)


class TemplateError(Exception):
    """A campaign text that is not a template this service can render."""

    def __init__(self, field: str, line: int, problem: str) -> None:
        super().__init__(f"{field}, line {line}: {problem}")
        self.field, self.line, self.problem = field, line, problem


class RenderFailed(Exception):
    """A render that could not finish: a missing variable, a bound reached, a filter
    given what it cannot take. Its message names the variable or the bound, never a value
    of the recipient's data."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    body: str
    html_body: str | None


@dataclass(frozen=True, slots=True)
class _Plain:
    """A template of text and `{{ path }}` outputs only (no tag, no filter): what most
    messages are. Rendered by joining its text with the values its paths lead to, a tenth
    of Liquid's time, whenever every path leads through objects and arrays to a string,
    number, boolean or null (output exactly as Liquid outputs them); otherwise by Liquid
    itself, which then also reports a missing variable or a bound its own way."""

    parts: tuple[str | tuple[str | int, ...], ...]
    """Text as it is, and paths (`data.visit.time`: ("data", "visit", "time"))."""
    escape: bool
    liquid: BoundTemplate

    @classmethod
    def of(cls, template: BoundTemplate) -> _Plain | None:
        parts: list[str | tuple[str | int, ...]] = []
        for node in template.nodes:
            if type(node) is ContentNode:
                parts.append(node.text)
                continue
            expression = getattr(node, "expression", None)
            if not (type(node) is OutputNode and type(expression) is FilteredExpression):
                return None
            path = expression.left
            if expression.filters or type(path) is not Path:
                return None
            keys = tuple(key for key in path.path if isinstance(key, str | int))
            if len(keys) < len(path.path):  # a key read from another variable
                return None
            parts.append(keys)
        return cls(tuple(parts), template.env.autoescape, template)

    def render(self, variables: dict[str, Any]) -> str | None:
        """The text; None where Liquid must render it."""
        out: list[str] = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
                continue
            value: Any = variables
            for key in part:
                if type(value) is dict:
                    if type(key) is not str or key not in value:
                        return None
                elif type(value) is list:
                    if type(key) is not int or not -len(value) <= key < len(value):
                        return None
                else:
                    return None
                value = value[key]
            if type(value) is str:
                text = value
            elif value is None:
                text = ""
            elif type(value) is bool:
                text = "true" if value else "false"
            elif type(value) in (int, float):
                text = str(value)
            else:
                return None
            out.append(escape(text) if self.escape else text)
        rendered = "".join(out)
        return rendered if len(rendered) <= MAX_EMAIL_CHARACTERS else None


Text = BoundTemplate | _Plain | str
"""A template; the same when only text and `{{ path }}`s (_Plain); or the text itself when
it has no tag and no variable: rendering a template costs about 8 us even when there is
nothing to substitute (a subject, often)."""


@dataclass(frozen=True, slots=True)
class CampaignTemplates:
    subject: Text | None
    body: Text
    html_body: Text | None
    required: tuple[tuple[str, ...], ...]
    """Paths under `data` that some template reads without a `default` filter."""
    presence: msgspec.json.Decoder[Any] | None = field(default=None, repr=False, compare=False)
    """Decodes a JSON object into the `required` paths only (present_in_json)."""

    @classmethod
    def compile(
        cls, subject: str | None, body: str, html_body: str | None = None
    ) -> CampaignTemplates:
        """Raises TemplateError naming the field and the line."""
        return _compiled(subject, body, html_body)

    def missing(self, data: Mapping[str, Any] | None) -> tuple[str, ...] | None:
        """The first required path that `data` lacks, if any."""
        for path in self.required:
            value: Any = data
            for name in path:
                if name in LIQUID_PROPERTIES and isinstance(value, list | str):
                    break
                if not isinstance(value, Mapping) or name not in value:
                    return path
                value = value[name]
        return None

    def present_in_json(self, data: msgspec.Raw | bytes | None) -> bool:
        """Whether the JSON object `data` has every required path, as `missing` finds them:
        checked by a typed decode of those paths alone, in C (a publish checks 100,000)."""
        if self.presence is None:
            return True
        if data is None:
            return False
        try:
            self.presence.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
        return True

    def render(
        self,
        *,
        person_id: str,
        recipient: str,
        data: Mapping[str, Any] | None,
        campaign_name: str,
        unsubscribe_url: str | None = None,
        max_characters: int = MAX_EMAIL_CHARACTERS,
    ) -> Rendered:
        """Raises RenderFailed; `max_characters` bounds the body (an SMS: 1,600)."""
        variables = {
            "person_id": person_id,
            "recipient": recipient,
            "data": data or {},
            "campaign": {"name": campaign_name},
        }
        if unsubscribe_url is not None:
            variables["unsubscribe_url"] = unsubscribe_url
        _filter_work.set(0)  # one budget for the message's texts together
        subject = _render("subject", self.subject, variables)
        body = _render("body", self.body, variables) or ""
        if len(body) > max_characters:
            raise RenderFailed(f"body: longer than {max_characters} characters")
        return Rendered(subject, body, _render("html_body", self.html_body, variables))


@lru_cache(maxsize=256)
def reads_variable(source: str | None, name: str) -> bool:
    """Whether the template `source` reads the variable `name` (a root of VARIABLES)
    anywhere, `default` filter or not; False for no text, and for a text that is no
    template (whoever writes it is told so at create)."""
    if source is None or name not in source:
        return False
    try:
        analysis = _TEXT.from_string(source).analyze(include_partials=False)
    except LiquidError:
        return False
    return name in analysis.globals


def sms_segments(text: str) -> int:
    """The parts a carrier splits an SMS into: GSM-7 text fits 160 septets in one part,
    153 a part when split (escaped characters take two); anything else is UCS-2, 70 UTF-16
    code units in one, 67 a part."""
    if all(char in _GSM7 or char in _GSM7_ESCAPED for char in text):
        septets = sum(2 if char in _GSM7_ESCAPED else 1 for char in text)
        return 1 if septets <= 160 else -(-septets // 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_ESCAPED = frozenset("^{}\\[~]|€\f")


@lru_cache(maxsize=256)
def _compiled(subject: str | None, body: str, html_body: str | None) -> CampaignTemplates:
    """Per distinct texts: a worker renders many deliveries of few campaigns."""
    templates = {
        "subject": _parse("subject", subject, _TEXT),
        "body": _parse("body", body, _TEXT),
        "html_body": _parse("html_body", html_body, _HTML),
    }
    required: set[tuple[str, ...]] = set()
    for template in templates.values():
        if isinstance(template, BoundTemplate):
            required |= _required_data(template)
    fast = {field: _fast(template) for field, template in templates.items()}
    assert fast["body"] is not None
    return CampaignTemplates(
        fast["subject"],
        fast["body"],
        fast["html_body"],
        tuple(sorted(required)),
        _presence_decoder(required),
    )


def _fast(template: BoundTemplate | str | None) -> Text | None:
    if isinstance(template, BoundTemplate):
        return _Plain.of(template) or template
    return template


def _presence_decoder(required: set[tuple[str, ...]]) -> msgspec.json.Decoder[Any] | None:
    """A decoder of the required paths: a Struct per object on the way, whose fields are
    the names read below it (any value where a path ends, an object where it goes on).
    A missing name, or a value that is not an object where one is needed, fails it."""
    if not required:
        return None
    tree: dict[str, Any] = {}
    for path in required:
        node = tree
        for name in path:
            node = node.setdefault(name, {})
    return msgspec.json.Decoder(_presence_struct(tree))


def _presence_struct(tree: dict[str, Any]) -> type[msgspec.Struct]:
    # Field names stand for the keys (which need not be identifiers), renamed to them.
    fields = [(f"f{i}", _presence_type(below)) for i, below in enumerate(tree.values())]
    rename = {f"f{i}": name for i, name in enumerate(tree)}
    return msgspec.defstruct("Present", fields, rename=rename)


def _presence_type(below: dict[str, Any]) -> Any:
    if not below:
        return msgspec.Raw
    struct = _presence_struct(below)
    if below.keys() <= LIQUID_PROPERTIES:  # `visits.size`: an array or a string will do
        return struct | list[msgspec.Raw] | str
    return struct


def _parse(field: str, source: str | None, env: Environment) -> BoundTemplate | str | None:
    if source is None:
        return None
    try:
        template = env.from_string(source)
        analysis = template.analyze(include_partials=False)
    except LiquidError as exc:
        raise TemplateError(field, _line(exc, source), str(exc.message)) from None
    for tag, spans in analysis.tags.items():
        if tag in _FORBIDDEN_TAGS:
            raise TemplateError(field, _line_at(source, spans[0].index), f"no `{tag}` tag")
    for name, spans in analysis.filters.items():
        if name not in env.filters:
            raise TemplateError(field, _line_at(source, spans[0].index), f"no filter `{name}`")
    for root, uses in analysis.globals.items():
        if root not in VARIABLES:
            raise TemplateError(
                field,
                _line_at(source, uses[0].span.index),
                f"no variable `{root}`: use person_id, recipient, data.<name>,"
                " campaign.name or unsubscribe_url",
            )
    if not (analysis.tags or analysis.variables or analysis.filters) and "{" not in source:
        return source
    for expression in list(_expressions(template)):
        if type(expression) is RangeLiteral:
            expression.__class__ = _BoundedRange  # the same slots: only its bound differs
        elif isinstance(expression, _COMPARISONS):
            expression.left = _CountedOperand(expression.left)
            expression.right = _CountedOperand(expression.right)
    return template


def _required_data(template: BoundTemplate) -> set[tuple[str, ...]]:
    """The `data.<path>`s read without a `default` filter (static: once per campaign)."""
    defaulted = {
        path.token.start_index
        for expression in _expressions(template)
        if isinstance(expression, FilteredExpression)
        and any(f.name == "default" for f in expression.filters or ())
        for path in _walk(expression.left)
        if isinstance(path, Path)
    }
    analysis = template.analyze(include_partials=False)
    return {
        tuple(str(segment) for segment in itertools.takewhile(_is_name, use.segments[1:]))
        for use in analysis.globals.get("data", ())
        if use.span.index not in defaulted and len(use.segments) > 1
    }


def _is_name(segment: object) -> bool:
    """A static key (`data.a.b`), not an index or a key read from another variable."""
    return isinstance(segment, str)


def _expressions(template: BoundTemplate) -> Iterator[Expression]:
    context = RenderContext(template)

    def nodes(of: list[Node]) -> Iterator[Node]:
        for node in of:
            yield node
            yield from nodes(list(node.children(context, include_partials=False)))

    for node in nodes(template.nodes):
        for expression in node.expressions():
            yield from _walk(expression)


def _walk(expression: Expression) -> Iterator[Expression]:
    yield expression
    for child in expression.children():
        yield from _walk(child)


def _render(field: str, template: Text | None, variables: dict[str, Any]) -> str | None:
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, _Plain):
        if (text := template.render(variables)) is not None:
            return text
        template = template.liquid
    try:
        return template.render(**variables)
    except UndefinedError as exc:
        # Liquid's own message resolves the path (`data.x[data.key]` reads
        # "data.x.<the key's value> is undefined"): name it as the template writes it.
        raise RenderFailed(f"{field}: {_as_written(exc)} is undefined") from None
    except ResourceLimitError as exc:  # "output stream limit reached" and the like
        raise RenderFailed(f"{field}: {exc.message}") from None
    except Exception as exc:
        # A filter's message may quote the data; and whatever else a render raises must
        # fail this recipient, not the others.
        raise RenderFailed(f"{field}: {type(exc).__name__}") from None


_PATH_AS_WRITTEN = re.compile(r"[A-Za-z_][\w-]*(?:\s*\.\s*[\w-]+|\s*\[[^\]\n]{0,100}\])*")


def _as_written(error: UndefinedError) -> str:
    """The variable's path in the template's own text (the campaign's, not the data's)."""
    token = error.token
    match = None
    if token is not None and token.start_index >= 0:
        match = _PATH_AS_WRITTEN.match(token.source, token.start_index)
    return match.group(0) if match else "a variable"


def _line(error: LiquidError, source: str) -> int:
    if error.token is not None and error.token.start_index >= 0:
        return _line_at(source, error.token.start_index)
    return source.count("\n") + 1  # an unclosed block: it ends with the text


def _line_at(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1
