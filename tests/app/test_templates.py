"""Campaign texts as Liquid templates: what is refused at write time (field and line), the
data paths a recipient must have, rendering, its bounds, and SMS parts."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.templates import (
    _HTML,
    _TEXT,
    MAX_EMAIL_CHARACTERS,
    MAX_LOOP_ITERATIONS,
    CampaignTemplates,
    RenderFailed,
    TemplateError,
    _Plain,
    sms_segments,
)

APPOINTMENT = {"first_name": "Ana", "doctor": "Dr. Ruiz", "time": "15:30"}


def render(body: str, data: object = None, **templates: str) -> str:
    compiled = CampaignTemplates.compile(templates.get("subject"), body, templates.get("html"))
    return compiled.render(
        person_id="p-1",
        recipient="ana@example.com",
        data=data,
        campaign_name="Reminders",  # type: ignore[arg-type]
    ).body


def test_the_variables_of_the_contract_are_rendered():
    body = (
        "Hi {{ data.first_name }}, {{ data.doctor }} at {{ data.time }}"
        " ({{ person_id }}, {{ recipient }}, {{ campaign.name }})"
    )
    assert render(body, APPOINTMENT) == (
        "Hi Ana, Dr. Ruiz at 15:30 (p-1, ana@example.com, Reminders)"
    )


def test_texts_of_the_first_release_keep_working():
    assert render("Hello {{person_id}} <{{recipient}}>") == "Hello p-1 <ana@example.com>"
    assert render("No variables at all {not a tag}") == "No variables at all {not a tag}"


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        ("Hello {{ data.name ", 1, "expected '}}', found end of file"),
        ("one\ntwo\n{% if data.vip %}VIP", 3, "expected tag endif"),
        ("one\n{{ first_name }}", 2, "no variable `first_name`"),
        ("{{ data.name | shout }}", 1, "no filter `shout`"),
        ("a\nb\n{% include 'header' %}", 3, "no `include` tag"),
        ("{% render 'x' %}", 1, "no `render` tag"),
    ],
)
def test_a_text_that_is_not_a_usable_template_names_its_field_and_line(body, line, problem):
    with pytest.raises(TemplateError) as caught:
        CampaignTemplates.compile("Subject", body)
    assert (caught.value.field, caught.value.line) == ("body", line)
    assert caught.value.problem.startswith(problem), caught.value.problem


def test_the_field_is_named_for_subject_and_html_body_too():
    with pytest.raises(TemplateError, match=r"^subject, line 1: "):
        CampaignTemplates.compile("{{ nope }}", "body")
    with pytest.raises(TemplateError, match=r"^html_body, line 2: "):
        CampaignTemplates.compile("s", "body", "<p>\n{% for %}</p>")


def test_required_data_is_what_is_read_without_a_default():
    compiled = CampaignTemplates.compile(
        "Hi {{ data.first_name | default: 'there' }}",
        "{{ data.appointment.time }} with {{ data.doctor }}"
        "{% if data.vip %}!{% endif %}{% for x in data.notes %}{{ x }}{% endfor %}",
        "<p>{{ data.doctor }} {{ data.clinic.name | default: 'our clinic' }}</p>",
    )

    assert compiled.required == (("appointment", "time"), ("doctor",), ("notes",), ("vip",))
    assert compiled.missing({"doctor": "R", "vip": True, "notes": []}) == ("appointment", "time")
    assert compiled.missing({"appointment": "15:30", "doctor": "R", "vip": 1, "notes": 2}) == (
        "appointment",
        "time",
    )  # not an object: its `time` is missing
    full = {"appointment": {"time": "15:30"}, "doctor": "R", "vip": False, "notes": []}
    assert compiled.missing(full) is None
    assert compiled.missing(None) == ("appointment", "time")


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"appointment": {"time": "15:30"}, "doctor": None, "first-name": "Ana", "notes": []},
        {"appointment": {"time": "15:30"}, "doctor": "R", "first-name": "Ana"},
        {"appointment": {"time": "15:30"}, "doctor": "R", "notes": [1]},
        {"appointment": "15:30", "doctor": "R", "first-name": "Ana", "notes": 1},
        {"appointment": None, "doctor": "R", "first-name": "Ana", "notes": 1},
        {"appointment": {"at": "15:30"}, "doctor": "R", "first-name": "Ana", "notes": 1},
        {"appointment": {"time": {"deep": [1]}, "x": 2}, "doctor": [], "first-name": 0,
         "notes": {}, "more": 1},
    ],
)  # fmt: skip
def test_the_check_of_json_at_publish_agrees_with_the_check_of_objects(data):
    compiled = CampaignTemplates.compile(
        "{{ data['first-name'] }}", "{{ data.appointment.time }} {{ data.doctor }} {{ data.notes }}"
    )
    as_json = None if data is None else msgspec.json.encode(data)

    assert compiled.present_in_json(as_json) == (compiled.missing(data) is None)


def test_a_default_fills_in_and_a_missing_variable_fails_the_render_by_name():
    assert render("Hi {{ data.first_name | default: 'there' }}", {}) == "Hi there"
    with pytest.raises(RenderFailed, match=r"^body: data.doctor is undefined$"):
        render("With {{ data.doctor }}", {"first_name": "Ana"})


def test_html_body_is_escaped_and_text_is_not():
    compiled = CampaignTemplates.compile(
        "{{ data.name }}", "{{ data.name }}", "<p>{{ data.name }}</p>"
    )
    rendered = compiled.render(
        person_id="p", recipient="r", data={"name": "<b>Ana</b>"}, campaign_name="c"
    )
    assert (rendered.subject, rendered.body) == ("<b>Ana</b>", "<b>Ana</b>")
    assert rendered.html_body == "<p>&lt;b&gt;Ana&lt;/b&gt;</p>"


@pytest.mark.parametrize(
    "probe",
    [
        "{{ data.name.__class__ }}",
        "{{ data.name.__class__.__mro__ }}",
        "{{ person_id.__class__.__init__.__globals__ }}",
        "{{ data.__dict__ }}",
        "{{ data.name.upper }}",
    ],
)
def test_python_attributes_are_not_reachable(probe):
    """Liquid reads keys and indexes, never attributes: a probe is a missing variable."""
    with pytest.raises(RenderFailed, match="is undefined"):
        render(probe, {"name": "Ana"})
    defaulted = probe.replace(" }}", " | default: 'nothing' }}")
    assert render(defaulted, {"name": "Ana"}) == "nothing"


def test_loops_and_output_are_bounded():
    with pytest.raises(RenderFailed, match="loop iteration limit"):
        render(f"{{% for i in (1..{MAX_LOOP_ITERATIONS + 1}) %}}x{{% endfor %}}")
    with pytest.raises(RenderFailed, match="output stream limit"):
        render("{% for i in (1..300) %}{{ data.big }}{% endfor %}", {"big": "x" * 1000})
    ten_thousand = render(f"{{% for i in (1..{MAX_LOOP_ITERATIONS}) %}}x{{% endfor %}}")
    assert ten_thousand == "x" * MAX_LOOP_ITERATIONS
    assert len(render("{{ data.big }}", {"big": "x" * MAX_EMAIL_CHARACTERS})) == (
        MAX_EMAIL_CHARACTERS
    )
    # Characters, not bytes: 256 Ki of "é" is 512 KiB of UTF-8, and within the bound.
    assert render("{{ data.big }}", {"big": "é" * MAX_EMAIL_CHARACTERS}) == (
        "é" * MAX_EMAIL_CHARACTERS
    )
    with pytest.raises(RenderFailed, match="output stream limit"):
        render("{{ data.big }}!", {"big": "é" * MAX_EMAIL_CHARACTERS})


def test_an_sms_body_is_bounded_by_its_own_length():
    compiled = CampaignTemplates.compile(None, "{{ data.text }}")
    kwargs = {"person_id": "p", "recipient": "+15550000000", "campaign_name": "c"}
    assert compiled.render(data={"text": "x" * 1600}, max_characters=1600, **kwargs).body
    with pytest.raises(RenderFailed, match="body: longer than 1600 characters"):
        compiled.render(data={"text": "x" * 1601}, max_characters=1600, **kwargs)


def test_a_filter_error_does_not_quote_the_data():
    with pytest.raises(RenderFailed) as caught:
        render("{{ data.n | divided_by: 0 }}", {"n": 7351})
    assert "7351" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # escaped in GSM-7: two septets each
        ("€" * 81, 2),
        ("é" * 160, 1),  # in the GSM-7 alphabet
        ("ж" * 70, 1),  # UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # two UTF-16 units each
        ("😀" * 36, 2),
        ("", 1),
    ],
)
def test_sms_parts_are_counted_as_carriers_count_them(text, parts):
    assert sms_segments(text) == parts


KEYS = st.sampled_from(["a", "b", "size", "first", "last", "x y"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
TEXT = st.text(alphabet="ab <&>\n'\"é", max_size=6)
OUTPUTS = st.sampled_from(
    [
        "{{ data.a }}",
        "{{ data.a.b }}",
        "{{data.a[0]}}",
        "{{ data.a[-1] }}",
        "{{ data['x y'] }}",
        "{{ data.a.size }}",
        "{{ data.first }}",
        "{{- data.b -}}",
        "{{ person_id }}",
        "{{ campaign.name }}",
        "{{ unsubscribe_url }}",
    ]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    parts=st.lists(TEXT | OUTPUTS, min_size=1, max_size=6),
    data=st.dictionaries(KEYS, JSON, max_size=4),
)
def test_plain_templates_render_as_liquid_renders_them(parts, data):
    """The fast way of a template of text and `{{ path }}`s gives Liquid's text exactly,
    or leaves the render to Liquid."""
    source = "".join(parts)
    variables = {"person_id": "p<1>", "recipient": "r", "data": data, "campaign": {"name": "C"}}
    for template in (_TEXT.from_string(source), _HTML.from_string(source)):
        plain = _Plain.of(template)
        assert plain is not None, source
        fast = plain.render(variables)
        if fast is not None:
            assert fast == template.render(**variables), (source, data)
