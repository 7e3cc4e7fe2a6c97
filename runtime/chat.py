"""Chat templates (spec 5.6.1): a bundle's Jinja2 template rendered in a sandbox, as Hugging Face
`transformers` renders it (`apply_chat_template(..., tokenize=False)`).

The template is untrusted: it runs in jinja2's ImmutableSandboxedEnvironment (no attribute starting
with `_`, no functions' globals, no mutating methods, no loader: no file or module access) and
every rendering is bounded: its time, its output, and the strings and lists its operators build.
jinja2 is an optional dependency (the `chat` extra): serving token ids or plain text never imports it.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from mcq_format.constants import CHAT_RENDER_VARIABLES, CHAT_TEMPLATE_SYNTAX

JINJA2_MIN = (3, 1, 6)  # older versions have known sandbox escapes (transformers requires it too)
RENDER_SECONDS = 2.0  # a real template renders in milliseconds
MAX_OUTPUT_CHARS = 4_000_000  # far beyond any model's context
MAX_VALUE_LEN = 1_000_000  # a string or list built by `*` or `%` in the template
MAX_WIDTH = 1000  # a width or precision in a format spec, center or indent
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' aliases, first wins

# a printf width or precision given as `*` or with 5+ digits; a str.format spec with 5+ digits or a
# nested field (whose value is the width)
_PRINTF_WIDE = re.compile(r"%[-#0 +]*(?:\*|\d{5,}|\d*\.(?:\*|\d{5,}))")
_FORMAT_WIDE = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5,}|\{)")
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})  # str methods with a width


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered: it does not parse, it fails (raise_exception, a
    sandbox violation, an undefined value), or it exceeds the rendering bounds."""


class MissingJinja2Error(ImportError):
    """jinja2 (the `chat` extra) is not installed, or too old to sandbox templates safely."""


class _Budget:
    """The bounds of one rendering (held in a context variable: renderings may run concurrently)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(f"chat template: rendering took more than {RENDER_SECONDS} s")


_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.check()


def _jinja2() -> Any:
    try:
        import jinja2
    except ImportError:
        raise MissingJinja2Error('chat templates need jinja2, which is not installed: pip install "mcq[chat]"') \
            from None
    version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < JINJA2_MIN:
        raise MissingJinja2Error(f"chat templates need jinja2>={'.'.join(map(str, JINJA2_MIN))} (older versions "
                                 f"have sandbox escapes), found {jinja2.__version__}: pip install -U jinja2")
    return jinja2


def _sized(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_VALUE_LEN:
        raise ChatTemplateError(f"chat template: {what} builds a value of {len(value)} items, "
                                f"more than {MAX_VALUE_LEN}")
    return value


def _repeat(left: Any, right: Any) -> Any:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_VALUE_LEN:
            raise ChatTemplateError(f"chat template: `*` would build {len(seq) * n} items, more than {MAX_VALUE_LEN}")
    return left * right


def _power(left: Any, right: Any) -> Any:
    if isinstance(right, int) and abs(right) > 1024:
        raise ChatTemplateError(f"chat template: exponent {right} is larger than 1024")
    return left**right


def _printf(left: Any, right: Any) -> Any:
    if isinstance(left, str) and _PRINTF_WIDE.search(left):
        raise ChatTemplateError(f"chat template: format {left[:60]!r} has a width or precision above {MAX_WIDTH}")
    return _sized(left % right, "`%`")


def _checked_width(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A jinja filter whose `width` (second argument or keyword) is bounded."""

    def filtered(value: Any, *args: Any, **kwargs: Any) -> Any:
        width = kwargs.get("width", args[0] if args else None)
        if isinstance(width, int) and abs(width) > MAX_WIDTH:
            raise ChatTemplateError(f"chat template: {name} width {width} is larger than {MAX_WIDTH}")
        if isinstance(width, str) and len(width) > MAX_WIDTH:
            raise ChatTemplateError(f"chat template: {name} prefix of {len(width)} chars, more than {MAX_WIDTH}")
        return fn(value, *args, **kwargs)

    return filtered


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: JSON without jinja's HTML escaping, non-ASCII kept
    if isinstance(indent, int) and indent > MAX_WIDTH:
        raise ChatTemplateError(f"chat template: tojson indent {indent} is larger than {MAX_WIDTH}")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt))


def _environment(jinja2: Any) -> Any:
    """A sandboxed environment like transformers' chat template environment, with bounds."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}`: marks the assistant's text for training
        masks in transformers; rendering a prompt only needs its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
            _tick()
            return {"*": _repeat, "**": _power, "%": _printf}.get(op, self.binop_table[op])(left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's
            _tick()  # every call, loops over range() included: the deadline holds where the work is
            if getattr(__obj, "__name__", "") in _PADDING_METHODS and isinstance(getattr(__obj, "__self__", None), str):
                wide = [a for a in args if isinstance(a, int) and abs(a) > MAX_WIDTH]
                if wide:
                    raise ChatTemplateError(f"chat template: str.{__obj.__name__} width {wide[0]} is larger than "
                                            f"{MAX_WIDTH}")
            return _sized(super().call(__context, __obj, *args, **kwargs), "a call")

        def getattr(self, obj: Any, attribute: str) -> Any:
            _tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _tick()
            return super().getitem(obj, argument)

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt = value.__self__

            def checked(*args: Any, **kwargs: Any) -> Any:
                if _FORMAT_WIDE.search(fmt):
                    raise ChatTemplateError(f"chat template: format {fmt[:60]!r} has a width, precision or "
                                            f"nested field above {MAX_WIDTH}")
                return wrapped(*args, **kwargs)

            return checked

    namespace_base = jinja2.utils.Namespace

    class TemplateNamespace(namespace_base):  # type: ignore[misc, valid-type]
        """jinja's namespace, refusing names that start with `_` (transformers does the same)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's signature trick
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                TemplateNamespace.check_name(name)
            namespace_base.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace.check_name(name)
            namespace_base.__setitem__(self, name, value)

        @staticmethod
        def check_name(name: object) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace may not hold {name!r} (a name starting with _)")

    class TemplateDict:
        """`dict(...)` without the dict class itself (its attributes would reach Python internals)."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters["format"] = _checked_printf_filter(env.filters["format"])
    for name in ("center", "indent"):
        env.filters[name] = _checked_width(name, env.filters[name])
    env.globals.update(raise_exception=raise_exception, strftime_now=_strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    return env


def _checked_printf_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def filtered(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and _PRINTF_WIDE.search(value):
            raise ChatTemplateError(f"chat template: format {value[:60]!r} has a width or precision above {MAX_WIDTH}")
        return _sized(fn(value, *args, **kwargs), "format")

    return filtered


def plain_data(value: Any) -> Any:
    """What a template may see of a caller's value: JSON-like data only (str, int, float, bool, nil,
    maps, lists), rebuilt so that no subclass' methods reach the template; anything else becomes an
    inert placeholder naming its type, as transformers does."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return plain_data(item())
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as transformers hands them to a template: maps without nil values, reasoning
    given under each of its names."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages: expected a list of maps with 'role' and 'content', got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages: the conversation is empty")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}]: expected a map with 'role' and 'content', got {type(message).__name__}")
        plain = {k: v for k, v in plain_data(message).items() if v is not None}
        reasoning = next((plain[k] for k in REASONING_FIELDS if plain.get(k) is not None), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        out.append(plain)
    return out


class ChatTemplate:
    """A bundle's chat template (the tokenizer section's `chat_template` map), compiled at its
    first rendering."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if spec.get("syntax") != CHAT_TEMPLATE_SYNTAX:
            raise ChatTemplateError(f"chat template syntax {spec.get('syntax')!r} is not {CHAT_TEMPLATE_SYNTAX!r}")
        self.source: str = str(spec["template"])
        self.special_tokens: dict[str, str] = {str(k): str(v) for k, v in (spec.get("special_tokens") or {}).items()}
        self._compiled: Any = None

    def _template(self) -> Any:
        if self._compiled is None:
            jinja2 = _jinja2()
            try:
                self._compiled = _environment(jinja2).from_string(self.source)
            except jinja2.exceptions.TemplateSyntaxError as e:
                raise ChatTemplateError(f"chat template: does not parse, line {e.lineno}: {e.message}") from None
        return self._compiled

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Any] | None = None, documents: Sequence[Any] | None = None,
               **variables: Any) -> str:
        """The prompt text of a conversation. `variables` are extra template variables (e.g.
        `enable_thinking`); they override special tokens of the same name, as in transformers."""
        template = self._template()
        clash = sorted(CHAT_RENDER_VARIABLES.intersection(variables))
        if clash:
            raise ValueError(f"template variables: {clash} are set by render's own arguments")
        context = {**self.special_tokens, **plain_data(variables),
                   "messages": normalize_messages(messages), "tools": plain_data(tools),
                   "documents": plain_data(documents), "add_generation_prompt": bool(add_generation_prompt)}
        token = _budget.set(_Budget(RENDER_SECONDS))
        try:
            return _bounded_join(template.generate(**context))
        except ChatTemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the template's code raises is the template's failure
            # jinja's SecurityError, UndefinedError and raise_exception's TemplateError; TypeError
            # for an include (no loader: no file access), RecursionError for a recursive macro
            raise ChatTemplateError(f"chat template: {type(e).__name__}: {e}") from None
        finally:
            _budget.reset(token)


def _bounded_join(chunks: Iterator[str]) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        _tick()
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise ChatTemplateError(f"chat template: the rendering exceeds {MAX_OUTPUT_CHARS} characters")
        out.append(chunk)
    return "".join(out)


def chat_template_of(section: Mapping[str, Any] | None) -> ChatTemplate | None:
    """The chat template of a tokenizer section, or None where it has none."""
    spec = (section or {}).get("chat_template")
    return ChatTemplate(spec) if spec else None

