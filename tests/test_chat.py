"""Chat templates in the bundle (spec 5.6.1), Model.chat and streaming (issue 26, part 1)."""
from __future__ import annotations

import pytest

import mcq_format
from mcq_format.schema import Context, check_tokenizer
from runtime.chat import ChatTemplate, ChatTemplateError
from runtime.streaming import TextStream

# a ChatML template in the style of SmolLM2's / Qwen's, touching loops, conditions, namespace,
# tojson, raise_exception and special tokens
TEMPLATE = (
    "{% set ns = namespace(system=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}{{ bos_token }}system\nBe brief.{{ eos_token }}\n{% endif %}"
    "{{ bos_token + message['role'] + '\n' + message['content'] | trim + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Héllo, wörld ✓ 日本"}, {"role": "assistant", "content": " fine "},
            {"role": "user", "content": "and you?", "name": None}]


def chat_spec(template: str = TEMPLATE, **tokens: str) -> dict:
    return {"syntax": "hf-jinja2/1", "template": template,
            "special_tokens": tokens or {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}}


@pytest.fixture(scope="module")
def hf_tokenizer():
    from mcq.examples import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def chat_bundle(tiny_models, hf_tokenizer, tmp_path_factory):
    import mcq

    q = mcq.quantize(tiny_models("llama-tiny"), mcq.preset("W8A8KV8"), tokenizer=hf_tokenizer, progress=False)
    path = tmp_path_factory.mktemp("chat") / "chat.mcq"
    q.save(path)
    return q, path


# ------------------------------------------------------------------------ format
def _check(section: dict) -> None:
    check_tokenizer(section, Context(frozenset(), {}, (1, 0), 1))


def _section(chat: object) -> dict:
    return {"kind": "hf-tokenizers-json", "json": "{}", "chat_template": chat}


def test_a_chat_template_is_an_optional_field_of_the_tokenizer_section():
    _check(_section(chat_spec()))
    _check(_section(None))
    _check({"kind": "hf-tokenizers-json", "json": "{}"})


@pytest.mark.parametrize("chat, fragment", [
    ("{{ x }}", "chat_template: expected a map"),
    ({**chat_spec(), "syntax": "jinja3"}, "chat_template.syntax: expected 'hf-jinja2/1'"),
    ({k: v for k, v in chat_spec().items() if k != "template"}, "missing field 'template'"),
    ({**chat_spec(), "template": b"{{ x }}"}, "chat_template.template: expected a str"),
    ({**chat_spec(), "template": "x" * (256 * 1024 + 1)}, "more than the 262144 a chat template may have"),
    ({**chat_spec(), "special_tokens": {"bos_token": 1}}, "special_tokens.bos_token: expected a str"),
    ({**chat_spec(), "special_tokens": {"Bos": "<s>"}}, "a special token's name must match"),
    ({**chat_spec(), "special_tokens": {"messages": "<s>"}}, "a variable the renderer sets"),
    ({**chat_spec(), "special_tokens": {f"t{i}": "x" for i in range(65)}}, "65 entries, more than 64"),
    ({**chat_spec(), "special_tokens": {"eos_token": "x" * 1025}}, "more than the 1024 a special token may have"),
])
def test_a_malformed_chat_template_is_a_schema_error(chat, fragment):
    with pytest.raises(mcq_format.SectionSchemaError, match="E205") as e:
        _check(_section(chat))
    assert fragment in str(e.value)


def test_the_template_syntax_is_not_a_format_error():
    _check(_section(chat_spec("{% for %}")))  # the renderer reports it (spec 5.6.1)
    with pytest.raises(ChatTemplateError, match="does not parse, line 1"):
        ChatTemplate(chat_spec("{% for %}")).render(MESSAGES)


# ------------------------------------------------------------------------ rendering
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers_apply_chat_template(hf_tokenizer, add_generation_prompt):
    from mcq.bundle import chat_template_section

    spec = chat_template_section(hf_tokenizer)
    assert spec["special_tokens"] == hf_tokenizer.special_tokens_map
    tools = [{"type": "function", "function": {"name": "now", "description": "l'heure — ✓", "parameters": {}}}]
    for kwargs in ({}, {"tools": tools}):
        expected = hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt, **kwargs)
        assert ChatTemplate(spec).render(MESSAGES, add_generation_prompt, **kwargs) == expected


def test_template_variables_and_generation_blocks(hf_tokenizer):
    template = ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
                "{% if enable_thinking %}<think>{% endif %}{{ strftime_now('%Y') | length }}")
    hf_tokenizer_copy = type(hf_tokenizer)(tokenizer_object=hf_tokenizer.backend_tokenizer)
    hf_tokenizer_copy.chat_template = template
    expected = hf_tokenizer_copy.apply_chat_template(MESSAGES, tokenize=False, enable_thinking=True)
    assert ChatTemplate(chat_spec(template)).render(MESSAGES, enable_thinking=True) == expected == "Héllo, wörld ✓ 日本 fine and you?<think>4"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ (messages | first).__class__.__subclasses__() }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update(role='system') }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ namespace(_secret=1) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('id') }}",
    "{% extends '/etc/hostname' %}",
    "{{ raise_exception('refused') }}",
    "{{ 'x' * 10 ** 9 }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'a'.ljust(10 ** 9) }}",
    "{{ 'a' | center(10 ** 9) }}",
    "{{ 2 ** 100000000 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
])
def test_a_hostile_template_fails_cleanly_or_renders_harmlessly(template):
    messages = [{"role": "user", "content": "hi"}]
    try:
        text = ChatTemplate(chat_spec(template)).render(messages)
    except ChatTemplateError as e:
        assert str(e).startswith("chat template")
    else:  # no internals in what renders
        assert "<class" not in text and "function" not in text and "module" not in text, text[:200]
    assert messages == [{"role": "user", "content": "hi"}]  # the caller's data is not touched


def test_attribute_access_to_internals_renders_nothing():
    spec = chat_spec("[{{ ''.__class__ }}{{ lipsum.__globals__ }}{{ raise_exception.__globals__ }}{{ self.__init__ }}]")
    assert ChatTemplate(spec).render([{"role": "user", "content": "hi"}]) == "[]"


def test_messages_must_be_a_list_of_maps():
    t = ChatTemplate(chat_spec())
    with pytest.raises(TypeError, match="messages: expected a list"):
        t.render("hello")
    with pytest.raises(TypeError, match=r"messages\[1\]: expected a map"):
        t.render([{"role": "user", "content": "a"}, "b"])
    with pytest.raises(ValueError, match="empty"):
        t.render([])


# ------------------------------------------------------------------------ streaming
def test_a_stream_never_splits_a_multibyte_character(hf_tokenizer):
    from runtime.tokenizer import Tokenizer

    tok = Tokenizer({"kind": "hf-tokenizers-json", "json": hf_tokenizer.backend_tokenizer.to_str()})
    text = "Héllo ✓ wörld 日本語 🙂 end"
    ids = tok.encode(text)
    assert any(len(tok.decode([i]).encode()) == 0 or "\ufffd" in tok.decode([i]) for i in ids)  # split bytes
    stream = TextStream(tok.decode)
    pieces = [p for p in (stream.push(i) for i in ids) if p] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    for p in pieces:
        p.encode("utf-8")  # whole characters: no lone surrogates either


def test_a_stream_flushes_bytes_that_never_complete():
    table = {1: "a", 2: "\ufffd"}  # a decoder's view of a lone lead byte
    stream = TextStream(lambda ids: "".join(table[i] for i in ids))
    assert [stream.push(1), stream.push(2), stream.flush()] == ["a", "", "\ufffd"]


# ------------------------------------------------------------------------ the model
def test_the_bundle_carries_the_template_and_chat_matches_generate(chat_bundle, hf_tokenizer):
    import runtime

    q, path = chat_bundle
    with mcq_format.read(path) as b:
        assert b.sections["tokenizer"]["chat_template"]["template"] == TEMPLATE
    model = runtime.load(path, qlevel=4)
    assert model.chat_prompt(MESSAGES) == hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False,
                                                                           add_generation_prompt=True)
    ids = hf_tokenizer.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids = list(ids["input_ids"]) if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
    reply = model.chat(MESSAGES, max_new_tokens=12, stop_at_eos=False)
    expected_ids = model.generate(ids, max_new_tokens=12, stop_at_eos=False)
    assert reply == model.tokenizer.decode(expected_ids)
    assert "".join(model.stream_chat(MESSAGES, max_new_tokens=12, stop_at_eos=False)) == reply


@pytest.mark.parametrize("engine", ["reference", "native"])
def test_stream_generate_joins_to_generate(chat_bundle, engine):
    import runtime

    _, path = chat_bundle
    model = runtime.load(path, qlevel=4, engine=engine)
    for prompt, kwargs in (("The capital of France is", {}), ("Héllo ✓", {"do_sample": True, "seed": 3}),
                           ([5, 6, 7], {"do_sample": True, "top_k": 20, "seed": 1})):
        expected = model.generate(prompt, max_new_tokens=16, stop_at_eos=False, **kwargs)
        if not isinstance(expected, str):
            expected = model.tokenizer.decode(expected)
        pieces = list(model.stream_generate(prompt, max_new_tokens=16, stop_at_eos=False, **kwargs))
        assert "".join(pieces) == expected
        assert all(p and "\ufffd" not in p[-1:] for p in pieces[:-1])


def test_chat_without_a_template_says_so(tiny_models):
    import mcq
    from mcq.examples import tiny_tokenizer

    model = mcq.quantize(tiny_models("llama-tiny"), mcq.preset("W8A8KV8"), tokenizer=tiny_tokenizer(),
                         progress=False).model(4)
    with pytest.raises(ValueError, match="no chat template"):
        model.chat(MESSAGES)
    with pytest.raises(ValueError, match="not a batch"):
        next(iter(model.stream_generate(["a", "b"])))


@pytest.mark.slow
def test_smollm2_chat_template_equals_transformers(tmp_path):
    from mcq.bundle import chat_template_section
    from mcq.examples import SMOLLM2_GGUF, ExampleError, smollm2_dir

    try:
        folder = smollm2_dir()
    except ExampleError as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    spec = chat_template_section(tok)
    assert spec is not None
    for messages in (MESSAGES, [{"role": "system", "content": "Tu es un pirate."}, *MESSAGES]):
        for gen in (True, False):
            assert ChatTemplate(spec).render(messages, gen) == tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen)
