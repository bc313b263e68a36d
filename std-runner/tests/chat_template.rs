//! The built-in chat templates rendered by minijinja against what jinja2
//! renders in Hugging Face transformers' chat-template environment
//! (tests/golden/chat_templates.json, from scripts/make_chat_template_golden.py),
//! byte for byte.

use ember_runner::template::{Builtin, ChatTemplate, Message, RenderError};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    meta: Meta,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Meta {
    fixed_now_unix: i64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: Option<String>,
    source: Option<String>,
    messages: Vec<Msg>,
    add_generation_prompt: bool,
    /// Deserialized straight into a minijinja value: its keys keep their order.
    kwargs: Option<minijinja::Value>,
    bos_token: String,
    eos_token: String,
    expected: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Msg {
    role: String,
    content: String,
}

fn golden() -> Golden {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/chat_templates.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn builtin_templates_render_as_hugging_face_does() {
    let g = golden();
    let mut seen = std::collections::BTreeSet::new();
    for case in &g.cases {
        let source = match (&case.template, &case.source) {
            (Some(name), _) => {
                let b = Builtin::from_name(name).unwrap_or_else(|| panic!("no built-in {name}"));
                seen.insert(b.name());
                b.source()
            }
            (None, Some(s)) => s.as_str(),
            _ => panic!("{}: neither template nor source", case.name),
        };
        let mut t = ChatTemplate::new(source, case.bos_token.clone(), case.eos_token.clone())
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name))
            .with_clock(g.meta.fixed_now_unix);
        if let Some(kw) = &case.kwargs {
            t = t.with_kwargs(kw.clone()).unwrap();
        }
        let msgs: Vec<Message> = case
            .messages
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        let got = t.render(&msgs, case.add_generation_prompt);
        match (&case.expected, &case.error) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
                assert_eq!(&got, want, "{}", case.name);
            }
            (None, Some(want)) => {
                let e = got.expect_err(&case.name);
                let r = e.downcast_ref::<RenderError>().unwrap();
                assert!(r.raised, "{}: {e:#}", case.name);
                assert!(r.message.contains(want.as_str()), "{}: {e:#}", case.name);
                assert!(!r.message.contains('\n'), "{}: {e:#}", case.name);
            }
            _ => panic!("{}: no expectation", case.name),
        }
    }
    // Every built-in template is held to the reference.
    assert_eq!(seen.len(), Builtin::ALL.len(), "{seen:?}");
}

/// A file with no template gets its family's: the SmolLM2 vocabulary and
/// metadata with `general.architecture` set to each family (no tensors:
/// the template needs only the metadata and the tokenizer).
#[test]
fn a_file_without_a_template_gets_its_familys() {
    use ember_core::gguf::Gguf;
    use ember_core::gguf_writer::GgufWriter;
    let smol = ember_runner::model_store::default_model().unwrap_or_else(|e| panic!("{e:#}"));
    let bytes = std::fs::read(smol).unwrap();
    let src = Gguf::parse(&bytes).unwrap();
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
    ];
    for (arch, want) in [
        ("gemma3", Builtin::Gemma3),
        ("qwen2", Builtin::Qwen2),
        ("qwen3", Builtin::Qwen3),
        ("phi3", Builtin::Phi3),
        // No <|start_header_id|> in SmolLM2's vocabulary: not Llama 3.
        ("llama", Builtin::ChatMl),
        ("granite", Builtin::ChatMl),
    ] {
        let mut w = GgufWriter::new();
        w.version(src.version).alignment(src.alignment);
        for (key, _, raw) in src.metadata_raw() {
            if key != "tokenizer.chat_template" && key != "general.architecture" {
                w.add_raw(raw);
            }
        }
        w.add_str("general.architecture", arch);
        let file = w.to_bytes();
        let g = Gguf::parse(&file).unwrap();
        let mut index = Vec::new();
        let tok = ember_runner::text::tokenizer(&g, &mut index).unwrap();
        let t = ChatTemplate::from_gguf(&g, &tok).unwrap();
        assert!(
            t.origin().contains(&format!("built-in {}", want.name())),
            "{arch}: {}",
            t.origin()
        );
        let bos = tok.token_text(tok.bos().unwrap()).unwrap().to_string();
        let eos = tok.token_text(tok.eos().unwrap()).unwrap().to_string();
        let reference = ChatTemplate::new(want.source(), bos, eos).unwrap();
        assert_eq!(
            t.render(&conversation, true).unwrap(),
            reference.render(&conversation, true).unwrap(),
            "{arch}"
        );
    }
}
