#!/usr/bin/env python3
"""Makes tests/golden/chat_templates.json: what Hugging Face transformers'
`apply_chat_template` writes for a few conversations with each of ember's
built-in chat templates (std-runner/src/templates/*.jinja), for ember's
minijinja rendering to match byte for byte.

transformers renders a chat template with jinja2 in the environment that
`transformers.utils.chat_template_utils._compile_jinja_template` builds:
an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
loopcontrols extension, `tojson` replaced by json.dumps (ensure_ascii=False,
so no HTML escaping), and the globals `raise_exception` and `strftime_now`.
`apply_chat_template` passes messages, tools=None, documents=None,
add_generation_prompt, the tokenizer's special tokens (bos_token, eos_token)
and any extra keyword arguments (e.g. enable_thinking). This script builds
the same environment with jinja2 alone (transformers itself is not needed);
the one difference, AssistantTracker's `{% generation %}` tag, is used by
none of these templates. `strftime_now` reads a fixed clock (FIXED_NOW) so
the Llama 3 date is repeatable; ember's test sets the same clock.

Run from the repository root: python3 scripts/make_chat_template_golden.py
(jinja2 3.1.x; pip install jinja2).
"""
import datetime
import json
import pathlib

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "std-runner" / "src" / "templates"
OUT = ROOT / "tests" / "golden" / "chat_templates.json"

# 2025-02-07 12:00:00 UTC.
FIXED_NOW = 1738929600

# The special-token texts of each family's vocabulary (bos, eos).
TOKENS = {
    "chatml": ("", ""),
    "gemma3": ("<bos>", "<eos>"),
    "qwen2": ("", "<|im_end|>"),
    "qwen3": ("", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "phi3": ("<s>", "<|endoftext|>"),
}


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.datetime.fromtimestamp(FIXED_NOW, datetime.timezone.utc).strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATION = [
    msg("system", "You are a terse assistant."),
    msg("user", "What is the capital of France?"),
    msg("assistant", "Paris."),
    msg("user", "And of Italy?"),
]
NO_SYSTEM = [msg("user", "Hi there")]
# Leading and trailing white space: some templates trim it, some keep it.
SPACES = [
    msg("system", "  Be brief.\n"),
    msg("user", "  Name a colour. "),
    msg("assistant", "\nBlue. \n"),
    msg("user", "Another?"),
]
# A reply that kept its reasoning: Qwen3 drops it from past turns.
THINKING = [
    msg("user", "2+2?"),
    msg("assistant", "<think>\nAdd them.\n</think>\n\n4"),
    msg("user", "3+3?"),
]
NOT_ALTERNATING = [msg("user", "a"), msg("user", "b")]


def cases():
    for name in TOKENS:
        yield {"name": f"{name}/conversation", "template": name, "messages": CONVERSATION,
               "add_generation_prompt": True}
        yield {"name": f"{name}/conversation-no-generation-prompt", "template": name,
               "messages": CONVERSATION, "add_generation_prompt": False}
        yield {"name": f"{name}/no-system", "template": name, "messages": NO_SYSTEM,
               "add_generation_prompt": True}
        yield {"name": f"{name}/spaces", "template": name, "messages": SPACES,
               "add_generation_prompt": True}
    yield {"name": "qwen3/thinking", "template": "qwen3", "messages": THINKING,
           "add_generation_prompt": True}
    yield {"name": "qwen3/enable-thinking-false", "template": "qwen3", "messages": CONVERSATION,
           "add_generation_prompt": True, "kwargs": {"enable_thinking": False}}
    yield {"name": "qwen3/enable-thinking-true", "template": "qwen3", "messages": CONVERSATION,
           "add_generation_prompt": True, "kwargs": {"enable_thinking": True}}
    yield {"name": "gemma3/not-alternating", "template": "gemma3", "messages": NOT_ALTERNATING,
           "add_generation_prompt": True}
    # transformers' tojson (json.dumps) on a template of our own.
    yield {"name": "inline/tojson", "source":
           "{{ data | tojson }}|{{ data | tojson(indent=2) }}|{{ data | tojson(sort_keys=true) }}"
           "|{{ messages[0] | tojson }}",
           "messages": [msg("user", "naïve \"quotes\" <tag> & \\ \n\t")], "add_generation_prompt": False,
           "kwargs": {"data": {"z": [1, 2.5, 2.0, -3, True, None], "a": "é<>&'", "m": {}, "l": []}}}
    # Loop controls and namespace, which HF templates use.
    yield {"name": "inline/loop-controls-namespace", "source":
           "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}"
           "{% endif %}{% set ns.n = ns.n + 1 %}{{ m.role }}{% if loop.index >= 3 %}{% break %}{% endif %}"
           "{% endfor %}:{{ ns.n }}",
           "messages": CONVERSATION, "add_generation_prompt": False}


def main():
    env = environment()
    out = []
    for case in cases():
        if "template" in case:
            source = (TEMPLATES / f"{case['template']}.jinja").read_text()
            bos, eos = TOKENS[case["template"]]
        else:
            source = case["source"]
            bos, eos = "", ""
        case = dict(case, bos_token=bos, eos_token=eos)
        try:
            text = env.from_string(source).render(
                messages=case["messages"], tools=None, documents=None,
                add_generation_prompt=case["add_generation_prompt"],
                bos_token=bos, eos_token=eos, **case.get("kwargs", {}))
            case["expected"] = text
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        out.append(case)
    meta = {"tool": f"jinja2 {jinja2.__version__}, transformers' chat-template environment",
            "script": "scripts/make_chat_template_golden.py", "fixed_now_unix": FIXED_NOW}
    OUT.write_text(json.dumps({"meta": meta, "cases": out}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
