//! Reading the route key (`model`, `user`) from a request body without building a tree: a
//! serde visitor walks the top-level object, borrows the two strings it wants and skips (while
//! validating) everything else, so a `"model"` nested in a message or metadata is never
//! mistaken for it. When cache-aware routing wants it, the same walk feeds the prompt (chat
//! `messages` in order, or a completion's `prompt`) to a [`Chainer`]: the body is read once.

use super::prefix::Chainer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// What routing needs from a body.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteKey<'a> {
    pub model: Cow<'a, str>,
    pub user: Option<Cow<'a, str>>,
    /// `"stream": true`: the answer comes as a stream (anything else, or none: a whole body).
    pub stream: bool,
}

/// Why a body cannot be routed; each maps to a 400 whose message says which.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the request body is empty; expected a JSON object with a \"model\" field")]
    Empty,
    #[error("the request body is not valid JSON: {0}")]
    Json(String),
    #[error("the request body must have a \"model\" field naming the model to use")]
    MissingModel,
    #[error("the \"model\" field must not be empty")]
    EmptyModel,
    #[error("the multipart body is malformed: {0}")]
    Multipart(&'static str),
}

/// The route key of a JSON body; its prompt goes to `chain` when given.
pub fn route_key_json<'a>(
    body: &'a [u8],
    chain: Option<&mut Chainer<'_>>,
) -> Result<RouteKey<'a>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let json = |e: serde_json::Error| BodyError::Json(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(body);
    let (model, user, stream) = Top { chain }.deserialize(&mut de).map_err(json)?;
    de.end().map_err(json)?;
    let mut key = finish(model, user)?;
    key.stream = stream;
    Ok(key)
}

/// The top-level object: `model`, `user` and `stream` kept, the prompt fed, the rest skipped.
struct Top<'c, 'o> {
    chain: Option<&'c mut Chainer<'o>>,
}

type Head<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>, bool);

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = Head<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Head<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = Head<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Head<'de>, A::Error> {
        let (mut model, mut user, mut stream) = (None, None, false);
        let (mut seen_model, mut seen_user) = (false, false);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Model => {
                    if std::mem::replace(&mut seen_model, true) {
                        return Err(de::Error::duplicate_field("model"));
                    }
                    model = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                }
                Field::User => {
                    if std::mem::replace(&mut seen_user, true) {
                        return Err(de::Error::duplicate_field("user"));
                    }
                    user = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                }
                Field::Stream => stream = map.next_value::<Flag>()?.0,
                Field::Prompt(marker) => match self.chain.as_deref_mut() {
                    Some(chain) => {
                        chain.push(&[marker]);
                        map.next_value_seed(Feed(chain))?;
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((model, user, stream))
    }
}

/// A top-level field's name.
enum Field {
    Model,
    User,
    Stream,
    /// `messages` or `prompt`, with the byte that marks which in the chain.
    Prompt(u8),
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "model" => Field::Model,
                    "user" => Field::User,
                    "stream" => Field::Stream,
                    "messages" => Field::Prompt(b'm'),
                    "prompt" => Field::Prompt(b'p'),
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

/// Whether a value is JSON `true`; any other value is read and taken as false (the server
/// judges what it accepts).
struct Flag(bool);

impl<'de> de::Deserialize<'de> for Flag {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Flag, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Flag(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Flag, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Flag(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, borrowed from the body unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Bytes that close a value in the fed prompt, so that `["ab"]` and `["a","b"]` (or a role and
/// its content) never feed the same bytes.
const STRING_END: u8 = 0x1f;
const KEY_END: u8 = 0x1e;
const SEQ_END: u8 = 0x1d;
const MAP_END: u8 = 0x1c;

/// Feeds a JSON value to the chain as it is read: strings (decoded), object keys, numbers and
/// the structure's boundaries, in document order. Chat messages thus give their roles and
/// contents in order (parts and tool calls included); a completion prompt its text or tokens.
struct Feed<'c, 'o>(&'c mut Chainer<'o>);

impl<'de> DeserializeSeed<'de> for Feed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Feed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(v.as_bytes());
        self.0.push(&[STRING_END]);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(&v.to_le_bytes());
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(&v.to_le_bytes());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(&v.to_le_bytes());
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(&[u8::from(v)]);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(&[0]);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Feed(&mut *self.0))?.is_some() {}
        self.0.push(&[SEQ_END]);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key(&mut *self.0))?.is_some() {
            map.next_value_seed(Feed(&mut *self.0))?;
        }
        self.0.push(&[MAP_END]);
        Ok(())
    }
}

/// An object key, fed with its own end mark.
struct Key<'c, 'o>(&'c mut Chainer<'o>);

impl<'de> DeserializeSeed<'de> for Key<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(v.as_bytes());
        self.0.push(&[KEY_END]);
        Ok(())
    }
}

/// The route key of a `multipart/form-data` body (audio transcription and translation), whose
/// `model` is a form field.
pub fn route_key_multipart<'a>(
    body: &'a [u8],
    content_type: &[u8],
) -> Result<RouteKey<'a>, BodyError> {
    let boundary = super::multipart::boundary(content_type).ok_or(BodyError::Multipart(
        "the Content-Type must be multipart/form-data with a boundary",
    ))?;
    let fields = super::multipart::text_fields(body, boundary, &["model", "user"])
        .map_err(BodyError::Multipart)?;
    let [model, user] = fields;
    let text = |v: Option<&'a [u8]>| {
        v.map(|b| {
            std::str::from_utf8(b)
                .map(|s| Cow::Borrowed(s.trim()))
                .map_err(|_| BodyError::Multipart("form fields must be UTF-8"))
        })
        .transpose()
    };
    finish(text(model)?, text(user)?)
}

fn finish<'a>(
    model: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
) -> Result<RouteKey<'a>, BodyError> {
    let model = model.ok_or(BodyError::MissingModel)?;
    if model.is_empty() {
        return Err(BodyError::EmptyModel);
    }
    Ok(RouteKey {
        model,
        user: user.filter(|u| !u.is_empty()),
        stream: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_true_only_for_a_top_level_json_true() {
        let stream = |b: &str| route_key_json(b.as_bytes(), None).unwrap().stream;
        assert!(stream(r#"{"model":"m","stream":true}"#));
        assert!(!stream(r#"{"model":"m"}"#));
        assert!(!stream(r#"{"model":"m","stream":false}"#));
        assert!(!stream(r#"{"model":"m","stream":null}"#));
        // Not ours to refuse: the server judges these.
        assert!(!stream(r#"{"model":"m","stream":"true"}"#));
        assert!(!stream(r#"{"model":"m","stream":[true],"x":1}"#));
        assert!(!stream(r#"{"model":"m","stream":{"a":[1]}}"#));
        assert!(!stream(r#"{"model":"m","messages":[{"stream":true}]}"#));
    }

    #[test]
    fn model_anywhere_at_the_top_level() {
        let body = br#"{"messages":[{"role":"user","content":"hi","model":"decoy"}],"metadata":{"model":"decoy2"},"model":"qwen","user":"alice"}"#;
        let k = route_key_json(body, None).unwrap();
        assert_eq!(k.model, "qwen");
        assert_eq!(k.user.as_deref(), Some("alice"));
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let k = route_key_json(br#"{"model":"org\/m\u0031"}"#, None).unwrap();
        assert_eq!(k.model, "org/m1");
    }

    #[test]
    fn nested_model_only_is_missing() {
        let body = br#"{"messages":[{"model":"decoy"}]}"#;
        assert_eq!(route_key_json(body, None), Err(BodyError::MissingModel));
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert_eq!(route_key_json(b"  ", None), Err(BodyError::Empty));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\"", None),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            route_key_json(b"[1,2]", None),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            route_key_json(b"{\"model\":5}", None),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\",\"model\":\"b\"}", None),
            Err(BodyError::Json(m)) if m.contains("duplicate")
        ));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\"} x", None),
            Err(BodyError::Json(_))
        ));
        assert_eq!(
            route_key_json(b"{\"model\":\"\"}", None),
            Err(BodyError::EmptyModel)
        );
    }

    #[test]
    fn multipart_model_field() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01--XyZ-not-a-boundary\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-large\r\n--XyZ--\r\n";
        let k = route_key_multipart(body, b"multipart/form-data; boundary=XyZ").unwrap();
        assert_eq!(k.model, "whisper-large");
        assert_eq!(k.user, None);
        assert_eq!(
            route_key_multipart(body, b"application/json"),
            Err(BodyError::Multipart(
                "the Content-Type must be multipart/form-data with a boundary"
            ))
        );
    }

    fn chain_of(body: &str) -> Vec<u64> {
        let mut out = Vec::new();
        let mut ch = Chainer::new(&mut out, 16, usize::MAX, 0);
        route_key_json(body.as_bytes(), Some(&mut ch)).unwrap();
        out
    }

    fn shared(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn the_prompt_is_chained_in_the_same_scan() {
        let system = "You are the support assistant of a large company. Be brief and kind.";
        let a = chain_of(&format!(
            r#"{{"messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"Where is my order?"}}],"model":"m","user":"u1"}}"#
        ));
        let b = chain_of(&format!(
            r#"{{"model":"m","stream":true,"messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"How do I return a pair of shoes?"}}]}}"#
        ));
        // "messages" and the system message's bytes: the same blocks from the start, in
        // whatever place the other fields are.
        assert!(
            shared(&a, &b) >= system.len() / 16,
            "{} blocks",
            shared(&a, &b)
        );
        assert!(shared(&a, &b) < a.len().min(b.len()));
        // Escapes are decoded: the same text written two ways is the same prompt.
        let c = chain_of(&format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"Where is my order?"}}]}}"#,
            system.replace('Y', "\\u0059")
        ));
        assert_eq!(a, c);
        // A role is not content, and parts are fed like strings.
        let d = chain_of(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{system}"}}]}}"#
        ));
        assert_eq!(shared(&a, &d), 0);
        let e = chain_of(&format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":[{{"type":"text","text":"{system}"}}]}}]}}"#
        ));
        assert!(!e.is_empty());
        // A completion prompt, text or tokens; a nested "messages" is not the prompt.
        assert!(chain_of(&format!(r#"{{"model":"m","prompt":"{system}"}}"#)).len() >= 4);
        assert_eq!(
            chain_of(r#"{"model":"m","prompt":[1,2,3,4,5,6,7,8,9]}"#).len(),
            4
        );
        assert!(chain_of(&format!(
            r#"{{"model":"m","metadata":{{"messages":"{system}"}}}}"#
        ))
        .is_empty());
    }

    #[test]
    fn the_chained_scan_refuses_what_the_plain_one_refuses() {
        let mut out = Vec::new();
        for body in [
            &b"{\"model\":\"a\",\"messages\":[{\"role\":\"user\"]}"[..],
            b"{\"model\":\"a\",\"messages\":[]} x",
            b"{\"messages\":[]}",
        ] {
            let mut ch = Chainer::new(&mut out, 16, usize::MAX, 0);
            let chained = route_key_json(body, Some(&mut ch));
            assert_eq!(chained, route_key_json(body, None));
            assert!(chained.is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_body_is_routed_or_refused_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            ct in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = route_key_json(&body, None);
            let mut out = Vec::new();
            let mut ch = Chainer::new(&mut out, 8, 64, 0);
            let _ = route_key_json(&body, Some(&mut ch));
            let _ = route_key_multipart(&body, &ct);
            let _ = route_key_multipart(&body, b"multipart/form-data; boundary=xyz");
        }

        #[test]
        fn the_top_level_model_is_found_among_any_other_fields(
            model in "[a-zA-Z0-9/._-]{1,40}",
            others in proptest::collection::vec(("[a-z]{1,8}", proptest::prelude::any::<i32>()), 0..6),
            at in proptest::prelude::any::<usize>(),
        ) {
            // The model at any position among other fields, one of them a nested decoy.
            let mut fields: Vec<String> = others
                .iter()
                .filter(|(k, _)| k != "model" && k != "user")
                .map(|(k, v)| format!("{:?}:{v}", k))
                .collect();
            fields.push(r#""meta":{"model":"decoy"}"#.to_string());
            let pos = at % (fields.len() + 1);
            fields.insert(pos, format!("\"model\":{}", serde_json::to_string(&model).unwrap()));
            let body = format!("{{{}}}", fields.join(","));
            let k = route_key_json(body.as_bytes(), None).unwrap();
            proptest::prop_assert_eq!(k.model.as_ref(), model.as_str());
            // The same model as a form field, after a file part.
            let form = format!(
                "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n{body}\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--b--\r\n"
            );
            let k = route_key_multipart(form.as_bytes(), b"multipart/form-data; boundary=b").unwrap();
            proptest::prop_assert_eq!(k.model.as_ref(), model.as_str());
        }
    }
}
