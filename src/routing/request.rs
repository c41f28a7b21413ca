//! Reading the route key (`model`, `user`) from a request body without building a tree: serde
//! visits the top-level object, borrows the two strings it wants and skips (while validating)
//! everything else, so a `"model"` nested in a message or metadata is never mistaken for it.

use serde::Deserialize;
use std::borrow::Cow;

/// What routing needs from a body.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteKey<'a> {
    pub model: Cow<'a, str>,
    pub user: Option<Cow<'a, str>>,
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

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
}

/// The route key of a JSON body.
pub fn route_key_json(body: &[u8]) -> Result<RouteKey<'_>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let head: Head<'_> =
        serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    finish(head.model, head.user)
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_anywhere_at_the_top_level() {
        let body = br#"{"messages":[{"role":"user","content":"hi","model":"decoy"}],"metadata":{"model":"decoy2"},"model":"qwen","user":"alice"}"#;
        let k = route_key_json(body).unwrap();
        assert_eq!(k.model, "qwen");
        assert_eq!(k.user.as_deref(), Some("alice"));
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let k = route_key_json(br#"{"model":"org\/m\u0031"}"#).unwrap();
        assert_eq!(k.model, "org/m1");
    }

    #[test]
    fn nested_model_only_is_missing() {
        let body = br#"{"messages":[{"model":"decoy"}]}"#;
        assert_eq!(route_key_json(body), Err(BodyError::MissingModel));
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert_eq!(route_key_json(b"  "), Err(BodyError::Empty));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\""),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(route_key_json(b"[1,2]"), Err(BodyError::Json(_))));
        assert!(matches!(
            route_key_json(b"{\"model\":5}"),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\",\"model\":\"b\"}"),
            Err(BodyError::Json(m)) if m.contains("duplicate")
        ));
        assert!(matches!(
            route_key_json(b"{\"model\":\"a\"} x"),
            Err(BodyError::Json(_))
        ));
        assert_eq!(
            route_key_json(b"{\"model\":\"\"}"),
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_body_is_routed_or_refused_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            ct in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = route_key_json(&body);
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
            let k = route_key_json(body.as_bytes()).unwrap();
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
